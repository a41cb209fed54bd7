"""``audit gan``: every figure of a generator audit from image arrays, and the verdicts of the default rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .balance import class_balance
from .copying import c_t, copy_share
from .kmeans import assign, kmeans
from .ndb import ndb
from .neighbours import as_features, nearest
from .prdc import DEFAULT_K, prdc_per_sample, summarise
from .rules import judge

DEFAULT_BINS = 20


@dataclass
class Features:
    """Features of the audited sets; ``holdout`` and ``labels`` are optional."""

    reference: np.ndarray
    generated: np.ndarray
    holdout: np.ndarray | None = None
    labels: np.ndarray | None = None  # class index per reference image
    classes: list[str] = field(default_factory=list)
    detail: dict[str, Any] | None = None  # detail.detail_figures of the images (pixels, not features)


@dataclass
class GanAudit:
    """The audit's JSON-ready figures (``result``) and the per-sample arrays the HTML report draws from."""

    result: dict[str, Any]
    reference_bins: np.ndarray
    generated_bins: np.ndarray
    nearest_train: np.ndarray | None  # [n_generated] index of each generated image's nearest reference image
    nearest_distance: np.ndarray | None
    holdout_distance: np.ndarray | None  # [n_holdout] distance of each held-out image to its nearest reference image
    predicted: np.ndarray | None  # predicted class per generated image


def _fidelity(f: Features, k: int) -> tuple[dict[str, Any], np.ndarray]:
    per = prdc_per_sample(f.reference, f.generated, k)
    return {"k": k, **summarise(per, k)}, per["covered"]


def _memorisation(f: Features, centers: np.ndarray, gen_bins: np.ndarray) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    assert f.holdout is not None
    d_gen, i_gen = nearest(f.generated, f.reference)
    d_hold, _ = nearest(f.holdout, f.reference)
    hold_cells = assign(f.holdout, centers)
    result = {
        "c_t": c_t(d_hold[:, 0], hold_cells, d_gen[:, 0], gen_bins, len(centers)),
        "copy_share": copy_share(d_hold[:, 0], d_gen[:, 0]),
        "n_holdout": int(len(f.holdout)),
    }
    return result, i_gen[:, 0], d_gen[:, 0], d_hold[:, 0]


def _per_class_coverage(covered: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    return [
        {"class": c, "coverage": float(covered[labels == i].mean()) if (labels == i).any() else None}
        for i, c in enumerate(classes)
    ]


class _Stages:
    """A progress bar on stderr over the audit's stages (or nothing)."""

    def __init__(self, total: int, on: bool) -> None:
        self.bar = None
        if on:
            import sys

            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="metrics", unit="stage", leave=False, file=sys.stderr)

    def next(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(name)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def audit_features(
    f: Features, *, k: int = DEFAULT_K, bins: int = DEFAULT_BINS, seed: int = 0, progress: bool = False
) -> GanAudit:
    """Run every metric on precomputed features and apply the default rules."""
    f.reference, f.generated = as_features(f.reference), as_features(f.generated)
    if f.holdout is not None:
        f.holdout = as_features(f.holdout)
    for name, x in (("reference", f.reference), ("generated", f.generated)):
        if len(x) <= k:
            raise ValueError(f"the {name} set needs more than k={k} images, got {len(x)}")
    result: dict[str, Any] = {
        "counts": {
            "reference": len(f.reference), "generated": len(f.generated),
            "holdout": None if f.holdout is None else len(f.holdout),
        },
    }  # fmt: skip
    stages = _Stages(4, progress)
    stages.next("precision, recall, density, coverage")
    result["fidelity"], covered = _fidelity(f, k)
    stages.next("k-means bins, NDB")
    centers = kmeans(f.reference, bins, seed=seed)
    ref_bins = assign(f.reference, centers)
    collapse = ndb(ref_bins, f.generated, centers)
    gen_bins = collapse.pop("generated_bins")
    result["ndb"] = collapse
    nearest_train = nearest_distance = holdout_distance = predicted = None
    stages.next("memorisation (C_T, copy share)")
    if f.holdout is not None and len(f.holdout) > 0:
        result["memorisation"], nearest_train, nearest_distance, holdout_distance = _memorisation(f, centers, gen_bins)
    stages.next("class balance")
    if f.labels is not None:
        balance = class_balance(f.reference, f.labels, f.classes, f.generated, seed=seed)
        predicted = balance.pop("predicted")
        balance["coverage_per_class"] = _per_class_coverage(covered, f.labels, f.classes)
        result["balance"] = balance
    stages.close()
    if f.detail is not None:
        result["detail"] = f.detail
    result["verdicts"] = judge(result)
    return GanAudit(result, ref_bins, gen_bins, nearest_train, nearest_distance, holdout_distance, predicted)


def summary_line(result: dict[str, Any]) -> str:
    """One line: the headline figures and which verdicts tripped."""
    fid = result["fidelity"]
    parts = [
        f"precision {fid['precision']:.3f}", f"recall {fid['recall']:.3f}", f"density {fid['density']:.3f}",
        f"coverage {fid['coverage']:.3f}", f"NDB/K {result['ndb']['ndb_over_k']:.2f}",
    ]  # fmt: skip
    mem = result.get("memorisation")
    if mem:
        ct = mem["c_t"]["c_t"]
        parts.append(f"C_T {'n/a' if ct is None else f'{ct:.2f}'}, copy share {mem['copy_share']['share']:.3f}")
    if result.get("balance"):
        parts.append(f"class L2 {result['balance']['fairness_discrepancy_reference']:.3f}")
    tripped = [n for n, v in result["verdicts"].items() if v["tripped"]]
    unjudged = [
        n + (f" (explained by {v['superseded_by']})" if v["superseded_by"] else "")
        for n, v in result["verdicts"].items() if v["tripped"] is None
    ]  # fmt: skip
    verdict = "flags: " + ", ".join(tripped) if tripped else "no flags"
    if unjudged:
        verdict += f"; not judged: {', '.join(unjudged)}"
    return "; ".join(parts) + "; " + verdict
