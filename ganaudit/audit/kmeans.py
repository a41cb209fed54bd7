"""Seeded k-means (k-means++ start, Lloyd iterations) on features, with chunked assignment."""

from __future__ import annotations

import numpy as np

from .neighbours import as_features, nearest


def assign(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center for each row."""
    return nearest(as_features(x), centers, k=1)[1][:, 0]


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [x[rng.integers(len(x))]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centers.append(x[i])
        np.minimum(d2, ((x - x[i]) ** 2).sum(1), out=d2)
    return np.stack(centers)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iterations: int = 30) -> np.ndarray:
    """Cluster centers [k, D] of the rows of x (k is capped at the number of rows)."""
    x = as_features(x)
    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    centers = _plus_plus(x, k, rng)
    labels = assign(x, centers)
    for _ in range(iterations):
        counts = np.bincount(labels, minlength=k)
        sums = np.eye(k)[labels].T @ x
        empty = counts == 0
        centers = np.where(empty[:, None], centers, sums / np.maximum(counts, 1)[:, None])
        new = assign(x, centers)
        if np.array_equal(new, labels):
            break
        labels = new
    return centers
