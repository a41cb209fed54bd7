"""Improved precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

The real set comes first. Swapping the arguments swaps the meaning of the figures (a collapsed model then gets
precision near 0 and recall near 1). Distances are computed in chunks; no N x M matrix is held.
"""

from __future__ import annotations

import numpy as np

from .neighbours import CHUNK, as_features, distance_blocks, kth_radius

DEFAULT_K = 5


def prdc(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K, chunk: int = CHUNK) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` features against ``real`` features (k nearest neighbours).

    The same definitions as the ``prdc`` package (clovaai/generative-evaluation-prdc): a sample is inside a
    manifold when it is strictly closer to some sample than that sample's k-th neighbour radius.
    """
    return summarise(prdc_per_sample(real, fake, k, chunk), k)


def summarise(per: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """The four figures from the per-sample parts returned by :func:`prdc_per_sample`."""
    return {
        "precision": float((per["inside_count"] > 0).mean()),
        "recall": float(per["recalled"].mean()),
        "density": float(per["inside_count"].mean() / k),
        "coverage": float(per["covered"].mean()),
    }


def prdc_per_sample(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K, chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """The per-sample parts of :func:`prdc`: per fake, how many real k-NN balls hold it (``inside_count``); per
    real, whether some fake k-NN ball holds it (``recalled``) and whether its own ball holds a fake (``covered``)."""
    real, fake = as_features(real), as_features(fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in size: {real.shape[1]} vs {fake.shape[1]}")
    r_real = kth_radius(real, k, chunk)
    r_fake = kth_radius(fake, k, chunk)
    inside_count = np.zeros(len(fake))  # per fake: how many real balls contain it
    recalled = np.zeros(len(real), dtype=bool)  # per real: inside some fake ball
    nearest_fake = np.full(len(real), np.inf)  # per real: distance to the nearest fake
    for rows, d in distance_blocks(fake, real, chunk):  # d: [fake rows, real]
        inside = d < r_real[None, :]
        inside_count[rows] = inside.sum(axis=1)
        recalled |= (d < r_fake[rows, None]).any(axis=0)
        np.minimum(nearest_fake, d.min(axis=0), out=nearest_fake)
    return {"inside_count": inside_count, "recalled": recalled, "covered": nearest_fake < r_real}
