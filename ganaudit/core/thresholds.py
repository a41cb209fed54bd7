"""Threshold, percentile and calibration math on stored plain numbers (numpy only).

Shared by export (which fits them) and the runtime (which applies them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import ConfigError

N_QUANTILES = 1001  # 0.1 % resolution
QUANTILE_LEVELS = np.linspace(0.0, 1.0, N_QUANTILES)


def score_quantiles(scores: np.ndarray) -> list[float]:
    """Quantiles of ``scores`` at QUANTILE_LEVELS, as plain floats for the spec."""
    return [float(v) for v in np.quantile(np.asarray(scores, np.float64), QUANTILE_LEVELS)]


def check_fpr(fpr: float) -> float:
    if not 0 < fpr < 1:
        raise ConfigError(f"fpr must be between 0 and 1 (e.g. 0.01 for 1%), got {fpr}")
    return float(fpr)


def finite_float(value: float) -> float | None:
    """``value`` as a finite float, or None (NaN, an infinity, or an integer too large for a float)."""
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_threshold(name: str, value: float) -> float:
    """A threshold given by a user: a finite number (``-inf`` would flag everything, ``nan`` nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__}")
    number = finite_float(value)
    if number is None:
        raise ConfigError(f"{name} must be a finite number, got {value!r:.60}")
    return number


def check_probability_threshold(name: str, value: float) -> float:
    """A threshold on a probability (the generated head's): a finite number from 0 to 1 (above 1 nothing is
    ever flagged, below 0 everything is)."""
    number = check_threshold(name, value)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{name} is a probability: it must be from 0 to 1, got {value!r:.60}")
    return number


def threshold_at_fpr(scores: np.ndarray, fpr: float) -> float:
    """The (1 - fpr) quantile of normal scores, interpolated like the stored quantile table."""
    return float(np.quantile(np.asarray(scores, np.float64), 1 - check_fpr(fpr)))


def threshold_from_quantiles(quantiles: list[float], fpr: float) -> float:
    """Threshold at ``fpr`` read off a stored quantile table (for a per-call ``--fpr``)."""
    return float(np.interp(1 - check_fpr(fpr), np.linspace(0, 1, len(quantiles)), quantiles))


def percentile(scores: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Percent of normal validation images scoring below each score (0..100)."""
    q = np.asarray(quantiles, np.float64)
    q = q + np.arange(len(q)) * 1e-12 * max(1.0, float(np.abs(q).max()))  # strictly increasing for interp
    return np.interp(np.asarray(scores, np.float64), q, np.linspace(0, 100, len(q)))


def apply_calibration(scores: np.ndarray, cal: dict[str, Any] | None) -> np.ndarray:
    """Map raw scores to probabilities with a stored calibration (``platt`` or ``isotonic``)."""
    s = np.asarray(scores, np.float64)
    if not cal:
        return 1.0 / (1.0 + np.exp(-s))
    if cal.get("transform") == "log":
        s = np.log(np.maximum(s, 0) + 1e-12)
    method = cal.get("method")
    if method == "platt":
        return 1.0 / (1.0 + np.exp(-(cal["a"] * s + cal["b"])))
    if method == "isotonic":
        return np.interp(s, cal["x"], cal["y"])
    raise ConfigError(f"unknown calibration method {method!r}")
