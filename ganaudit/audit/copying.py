"""Memorisation: the data-copying statistic C_T (Meehan et al. 2020) and a per-sample copy share.

C_T partitions feature space into k-means cells of the training features. In each cell it compares the
nearest-training-neighbour distances of held-out real images with those of generated images (Mann-Whitney U
z-score): a negative z means generated images sit closer to the training set than fresh real images do. C_T is
the held-out-weighted mean of the cell z-scores over cells holding at least ``tau`` of the generated samples (and at
least one held-out image); other cells are reported, not crashed on. C_T averages over cells, so it misses copying
confined to a few samples (Bhattacharjee et al. 2023): the per-sample share covers that case.
"""

from __future__ import annotations

import numpy as np

from .stats import mann_whitney_z

TAU = 0.02  # a cell counts for C_T when it holds at least this share of the generated samples
COPY_QUANTILE = 0.02  # a generated image "copies" when closer to a training image than 98 % of held-out images are


def c_t(
    d_holdout: np.ndarray, holdout_cells: np.ndarray, d_gen: np.ndarray, gen_cells: np.ndarray, k: int,
    tau: float = TAU,
) -> dict:  # fmt: skip
    """C_T from nearest-training distances of held-out (``d_holdout``) and generated (``d_gen``) samples and their
    cell indices in [0, k)."""
    n_h = np.bincount(holdout_cells, minlength=k)
    n_g = np.bincount(gen_cells, minlength=k)
    cells, z_used, w_used = [], [], []
    for c in range(k):
        used = n_g[c] >= tau * len(d_gen) and n_g[c] > 0 and n_h[c] > 0
        z = mann_whitney_z(d_gen[gen_cells == c], d_holdout[holdout_cells == c]) if n_g[c] and n_h[c] else None
        cells.append({"cell": c, "n_holdout": int(n_h[c]), "n_generated": int(n_g[c]), "z": z, "used": bool(used)})
        if used:
            z_used.append(z)
            w_used.append(n_h[c] / len(d_holdout))
    value = float(np.dot(w_used, z_used) / np.sum(w_used)) if z_used else None
    return {
        "c_t": value,
        "tau": tau,
        "cells_used": len(z_used),
        "cells_without_generated": int((n_g == 0).sum()),
        "cells_without_holdout": int((n_h == 0).sum()),
        "cells": cells,
    }


def copy_share(d_holdout: np.ndarray, d_gen: np.ndarray, quantile: float = COPY_QUANTILE) -> dict:
    """Share of generated images closer to their nearest training image than the ``quantile`` of held-out images'
    nearest-training distances (a generator that does not copy gives about ``quantile``)."""
    cut = float(np.quantile(d_holdout, quantile))
    return {
        "share": float((d_gen < cut).mean()),
        "expected": quantile,
        "distance_cut": cut,
        "median_ratio": float(np.median(d_gen) / max(np.median(d_holdout), 1e-12)),
    }
