"""Chunked Euclidean distances: k-nearest-neighbour radii and nearest neighbours without an N x N matrix.

Every function works on float64 copies of the features and holds at most ``chunk`` x N distances at a time.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

CHUNK = 512


def as_features(x: np.ndarray) -> np.ndarray:
    """Features as a C-contiguous float64 [N, D] array."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {x.shape}")
    return np.ascontiguousarray(x)


def distance_blocks(query: np.ndarray, base: np.ndarray, chunk: int = CHUNK) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, distances[rows, :]) between query rows and every base row, ``chunk`` query rows at a time."""
    base_sq = np.einsum("ij,ij->i", base, base)
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + base_sq[None, :] - 2.0 * (q @ base.T)
        np.maximum(d2, 0.0, out=d2)
        yield slice(start, start + len(q)), np.sqrt(d2, out=d2)


def kth_radius(x: np.ndarray, k: int, chunk: int = CHUNK) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (the row itself, at distance 0, is not counted)."""
    if not 1 <= k < len(x):
        raise ValueError(f"k must be in [1, {len(x) - 1}] for {len(x)} samples, got {k}")
    out = np.empty(len(x))
    for rows, d in distance_blocks(x, x, chunk):
        out[rows] = np.partition(d, k, axis=1)[:, k]
    return out


def nearest(query: np.ndarray, base: np.ndarray, k: int = 1, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest base rows of each query row: distances and indices [N, k], nearest first."""
    k = min(k, len(base))
    dist = np.empty((len(query), k))
    idx = np.empty((len(query), k), dtype=np.int64)
    for rows, d in distance_blocks(query, base, chunk):
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.tile(np.arange(k), (len(d), 1))
        pd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        idx[rows] = np.take_along_axis(part, order, axis=1)
        dist[rows] = np.take_along_axis(pd, order, axis=1)
    return dist, idx
