"""Small statistics helpers in numpy: normal tail, Holm correction, two-proportion z-test, ranks, bootstrap."""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np


def normal_sf(z: np.ndarray) -> np.ndarray:
    """Upper tail of the standard normal distribution, P(Z > z)."""
    return 0.5 * np.vectorize(math.erfc)(np.asarray(z, dtype=np.float64) / math.sqrt(2.0))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error control, no independence assumption)."""
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def two_proportion_z(x1: np.ndarray, n1: int, x2: np.ndarray, n2: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled two-proportion z statistic (x1/n1 - x2/n2) and its two-sided p-value, element-wise."""
    p1, p2 = np.asarray(x1) / n1, np.asarray(x2) / n2
    pooled = (np.asarray(x1) + np.asarray(x2)) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (p1 - p2) / np.where(se > 0, se, 1), 0.0)
    return z, np.minimum(2 * normal_sf(np.abs(z)), 1.0)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    starts = np.r_[True, sorted_v[1:] != sorted_v[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(values)])
    avg = first + (counts + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = avg[group]
    return ranks


def mann_whitney_z(x: np.ndarray, y: np.ndarray) -> float:
    """z-score of the Mann-Whitney U of x against y: U counts pairs with x > y (ties half); negative when x tends
    to be smaller. Normal approximation without tie correction, as in Meehan et al. (2020)."""
    m, n = len(x), len(y)
    ranks = average_ranks(np.concatenate([x, y]))
    u = ranks[:m].sum() - m * (m + 1) / 2.0
    return float((u - m * n / 2.0) / math.sqrt(m * n * (m + n + 1) / 12.0))


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, *, rounds: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``rounds`` resamples of n indices."""
    rng = np.random.default_rng(seed)
    draws = np.stack([np.asarray(statistic(rng.integers(0, n, n)), dtype=np.float64) for _ in range(rounds)])
    alpha = (1 - level) / 2
    with warnings.catch_warnings():  # a statistic undefined in every resample (no positives) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(draws, alpha, axis=0), np.nanquantile(draws, 1 - alpha, axis=0)
