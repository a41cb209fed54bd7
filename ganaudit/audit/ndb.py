"""Mode collapse: number of statistically different bins (NDB, Richardson & Weiss 2018) and the Jensen-Shannon
divergence of bin shares.

Bins are k-means cells of the reference features. Each bin's reference and generated shares are compared with a
two-proportion z-test; p-values are Holm-corrected across the K bins.
"""

from __future__ import annotations

import numpy as np

from .kmeans import assign
from .stats import holm, two_proportion_z

ALPHA = 0.05


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log, in [0, ln 2]) of two discrete distributions."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log(a[nz] / m[nz])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def ndb(ref_bins: np.ndarray, gen: np.ndarray, centers: np.ndarray, alpha: float = ALPHA) -> dict:
    """NDB of generated features ``gen`` against reference bin labels ``ref_bins`` (cells of ``centers``).

    Returns the per-bin table, NDB (bins that differ at level alpha after Holm correction), NDB/K, the
    Jensen-Shannon divergence, and the reference share of the bins the generator under-fills by at least 4x
    ("missing mass": modes dropped).
    """
    k = len(centers)
    gen_bins = assign(gen, centers)
    n_ref = np.bincount(ref_bins, minlength=k)
    n_gen = np.bincount(gen_bins, minlength=k)
    z, p = two_proportion_z(n_gen, len(gen_bins), n_ref, len(ref_bins))
    p_adj = holm(p)
    differs = p_adj < alpha
    ref_share, gen_share = n_ref / n_ref.sum(), n_gen / n_gen.sum()
    dropped = differs & (gen_share < ref_share / 4)
    return {
        "k": int(k),
        "ndb": int(differs.sum()),
        "ndb_over_k": float(differs.mean()),
        "jsd": jsd(ref_share, gen_share),
        "missing_mass": float(ref_share[dropped].sum()),
        "alpha": alpha,
        "correction": "holm",
        "bins": [
            {"bin": i, "reference_share": float(ref_share[i]), "generated_share": float(gen_share[i]),
             "z": float(z[i]), "p_adjusted": float(p_adj[i]), "differs": bool(differs[i])}
            for i in range(k)
        ],  # fmt: skip
        "generated_bins": gen_bins,
    }
