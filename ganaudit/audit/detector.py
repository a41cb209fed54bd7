"""``audit detector``: a detector's error rates per group and its calibration, from scores, flags and truth.

Per head and group: TPR, FPR, precision and AUROC with percentile-bootstrap intervals, and across groups their
difference (largest minus smallest) and ratio (smallest over largest), Fairlearn MetricFrame's ``between_groups``
convention. Calibration: a reliability table of the calibrated probabilities with bin counts and the expected
calibration error, ECE = sum_b n_b / N * |observed positive rate_b - mean probability_b|. The realised FPR on the
normal images is set beside the FPR the threshold was fitted for.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .stats import average_ranks, bootstrap_interval

METRICS = ("tpr", "fpr", "precision", "auroc")
CAL_BINS = 10


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties half); NaN without both classes."""
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def rates(y: np.ndarray, flag: np.ndarray, s: np.ndarray) -> np.ndarray:
    """[TPR, FPR, precision, AUROC] (NaN where undefined)."""
    tp, fp = float((flag & (y == 1)).sum()), float((flag & (y == 0)).sum())
    pos, neg = float((y == 1).sum()), float((y == 0).sum())

    def div(a: float, b: float) -> float:
        return a / b if b else math.nan

    return np.array([div(tp, pos), div(fp, neg), div(tp, tp + fp), auroc(y, s)])


def _none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def group_table(y: np.ndarray, flag: np.ndarray, s: np.ndarray, groups: np.ndarray, *, rounds: int = 500, seed: int = 0) -> dict[str, Any]:
    """Per-group metrics with bootstrap intervals, and the between-group differences and ratios."""
    table = {}
    for g in ["all", *sorted(set(groups.tolist()) - {"all"})]:
        idx = np.arange(len(y)) if g == "all" else np.flatnonzero(groups == g)
        value = rates(y[idx], flag[idx], s[idx])
        lo, hi = bootstrap_interval(lambda b: rates(y[idx][b], flag[idx][b], s[idx][b]), len(idx), rounds=rounds, seed=seed)
        table[g] = {
            "n": int(len(idx)), "n_positive": int(y[idx].sum()),
            **{m: {"value": _none(value[i]), "ci": [_none(lo[i]), _none(hi[i])]} for i, m in enumerate(METRICS)},
        }  # fmt: skip
    between = {}
    for m in METRICS:
        vals = [t[m]["value"] for g, t in table.items() if g != "all" and t[m]["value"] is not None]
        between[m] = {
            "difference": max(vals) - min(vals) if len(vals) > 1 else None,
            "ratio": (min(vals) / max(vals) if max(vals) > 0 else None) if len(vals) > 1 else None,
        }
    return {"groups": table, "between_groups": between}


def reliability(y: np.ndarray, p: np.ndarray, bins: int = CAL_BINS) -> dict[str, Any]:
    """Equal-width reliability table with counts, and the ECE computed from those counts."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        mean_p = float(p[m].mean()) if n else None
        frac = float(y[m].mean()) if n else None
        if n:
            ece += n / len(y) * abs(frac - mean_p)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n, "mean_probability": mean_p,
                     "positive_rate": frac})  # fmt: skip
    return {"bins": rows, "ece": float(ece), "n": int(len(y))}


def wilson(k: int, n: int, z: float = 1.96) -> list[float | None]:
    """Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return [None, None]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def realised_fpr(y: np.ndarray, flag: np.ndarray, target: float | None) -> dict[str, Any]:
    normal = y == 0
    k, n = int(flag[normal].sum()), int(normal.sum())
    return {"target": target, "realised": k / n if n else None, "ci": wilson(k, n), "n_normal": n}


def audit_head(
    y: np.ndarray, flag: np.ndarray, score: np.ndarray, prob: np.ndarray | None, groups: np.ndarray,
    target_fpr: float | None, *, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Every figure of one head."""
    out = group_table(y, flag, score, groups, seed=seed)
    out["calibration"] = None if prob is None else reliability(y, prob)
    out["fpr_at_threshold"] = realised_fpr(y, flag, target_fpr)
    return out
