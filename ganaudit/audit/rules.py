"""Default verdict rules of ``ganaudit audit gan``. Each rule names the figures it reads, its thresholds and why;
docs/auditing.md explains them. A rule that lacks its inputs (no held-out images, no labels) is "not judged".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

VERDICTS = ("collapse", "memorisation", "imbalance", "underfit")


# A verdict is not judged when one before it here tripped: images unlike any real image (underfit) make recall and
# class predictions meaningless, and a collapsed generator's class shares follow from its few modes.
SUPERSEDED_BY = {"collapse": ("underfit",), "imbalance": ("underfit", "collapse")}


@dataclass(frozen=True)
class Rule:
    name: str
    text: str
    reason: str
    check: Callable[[dict[str, Any]], tuple[bool | None, dict[str, Any]]]


def _collapse(r: dict[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    f, n = r["fidelity"], r["ndb"]
    return f["recall"] < 0.2 or n["missing_mass"] >= 0.5, {"recall": f["recall"], "missing_mass": n["missing_mass"]}


DETAIL_RATIO_MIN = 0.5
MIN_TRUSTED_ACCURACY = 0.5


def _underfit(r: dict[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    f = r["fidelity"]
    ratio = (r.get("detail") or {}).get("ratio")
    blurry = ratio is not None and ratio < DETAIL_RATIO_MIN
    values = {"precision": f["precision"], "density": f["density"], "detail_ratio": ratio}
    return f["precision"] < 0.3 or f["density"] < 0.2 or blurry, values


def _memorisation(r: dict[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    m = r.get("memorisation")
    if m is None:
        return None, {"why": "no held-out real images (--holdout)"}
    share, ct = m["copy_share"]["share"], m["c_t"]["c_t"]
    tripped = share > 0.10 or (ct is not None and ct < -3.0)
    return tripped, {"copy_share": share, "c_t": ct}


def _imbalance(r: dict[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    b = r.get("balance")
    if b is None:
        return None, {"why": "no labels (--labels)"}
    under = [c["class"] for c in b["classes"] if c["reference_share"] >= 0.01 and c["generated_ci"][1] < c["reference_share"] / 2]
    l2 = b["fairness_discrepancy_reference"]
    values = {"fairness_discrepancy_reference": l2, "under_represented": under}
    tripped = l2 > 0.1 or bool(under)
    # A weak classifier dilutes an imbalance (it spreads each class over the others), so it can hide one but not
    # invent one (both sides are its predictions): a trip stands; a pass is only trusted from a classifier that
    # gets at least half of the held-out reference images right.
    if not tripped and b["classifier_accuracy"] < MIN_TRUSTED_ACCURACY:
        return None, {**values, "why": "no imbalance seen, but the class classifier is too weak to rule one out "
                      f"(held-out accuracy {b['classifier_accuracy']:.2f})"}  # fmt: skip
    return tripped, values


RULES = (
    Rule(
        "collapse", "recall < 0.2 or NDB missing mass >= 0.5",
        "Few real images lie inside the generated manifold, or at least half of the reference mass sits in k-means "
        "bins the generator fills at under a quarter of their share (significant after Holm correction): modes are "
        "missing.",
        _collapse,
    ),
    Rule(
        "memorisation", "copy share > 0.10 or C_T < -3",
        "More than five times the expected 2 % of generated images sit closer to a training image than 98 % of "
        "held-out real images do, or generated images are, cell by cell, systematically closer to the training set "
        "than fresh real images (Meehan et al. 2020).",
        _memorisation,
    ),
    Rule(
        "imbalance", "L2 fairness discrepancy to the reference shares > 0.1, or a class (>= 1 % of the reference) "
        "whose bootstrap upper bound is under half its reference share",
        "Predicted class shares of generated images stray from the reference (a missing class counts as zero). "
        "A weak classifier can hide an imbalance but not invent one: under 0.5 held-out accuracy a pass is "
        "reported as not judged.",
        _imbalance,
    ),
    Rule(
        "underfit", "precision < 0.3 or density < 0.2 or fine-detail ratio < 0.5",
        "Most generated images fall outside every real image's k-NN ball: they do not look like the data "
        "(blurry, early or broken generators); or they keep under half the fine detail of the real images "
        "(blurry), which a feature space need not see.",
        _underfit,
    ),
)  # fmt: skip


def judge(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Apply every default rule; returns {name: {tripped, rule, reason, values, superseded_by}}. ``tripped`` is
    None when the rule is not judged: its inputs are missing, or a verdict that explains it tripped
    (``superseded_by``; ``values`` still holds the figures)."""
    out: dict[str, dict[str, Any]] = {}
    for rule in RULES:
        tripped, values = rule.check(result)
        out[rule.name] = {"tripped": tripped, "rule": rule.text, "reason": rule.reason, "values": values,
                          "superseded_by": None}  # fmt: skip
    for name, over in SUPERSEDED_BY.items():
        by = [o for o in over if out[o]["tripped"]]
        if by and out[name]["tripped"] is not None:
            out[name]["values"]["would_trip"] = out[name]["tripped"]
            out[name].update(tripped=None, superseded_by=by[0])
    return out


def gate(verdicts: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """The verdicts among ``names`` that fail a gate: tripped, or superseded by a verdict that tripped (a collapsed
    generator fails an imbalance gate too)."""
    return [n for n in names if verdicts[n]["tripped"] or verdicts[n]["superseded_by"]]
