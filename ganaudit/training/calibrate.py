"""Fit thresholds and probability calibrations on held-out data (scikit-learn), stored as plain numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.spec import Threshold
from ..core.thresholds import score_quantiles, threshold_at_fpr


def fit_threshold(normal_scores: np.ndarray, fpr: float) -> Threshold:
    """Threshold on normal validation scores so that about ``fpr`` of normal images are flagged."""
    return Threshold(value=threshold_at_fpr(normal_scores, fpr), fpr=fpr, n_val=int(len(normal_scores)))


def fit_quantiles(normal_scores: np.ndarray) -> list[float]:
    return score_quantiles(normal_scores)


def fit_platt(negative: np.ndarray, positive: np.ndarray, *, transform: str = "identity") -> dict[str, Any]:
    """Platt scaling: p = sigmoid(a * t(score) + b), fitted by logistic regression.

    ``negative`` are scores of normal/real images (label 0), ``positive`` of anomalous/generated ones.
    ``transform="log"`` fits on log(score), which suits positive, skewed residual scores.
    """
    from sklearn.linear_model import LogisticRegression

    s = np.concatenate([negative, positive]).astype(np.float64)
    if transform == "log":
        s = np.log(np.maximum(s, 0) + 1e-12)
    y = np.concatenate([np.zeros(len(negative)), np.ones(len(positive))])
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(s[:, None], y)
    return {
        "method": "platt",
        "transform": transform,
        "a": float(lr.coef_[0, 0]),
        "b": float(lr.intercept_[0]),
        "n_negative": int(len(negative)),
        "n_positive": int(len(positive)),
    }
