"""The domain gate: is an image of the kind the detector was trained on?

A generated-image head only knows real and generated images *of its training domain* (a digits detector
knows digits). On anything else (a cat photo, a texture, noise) its probability means nothing, and a
"generated" label would accuse a real picture of being fake. So the runtime gates the generated verdict:

* the **domain score** is the fused anomaly score without its realness term: the weighted robust z-scores
  of the anomaly components (kNN distance to training images in D's feature space, feature residual, ...)
  with the weight of ``disc_logit`` set to 0. D's realness judgement is itself a fake detector; leaving it
  out keeps the detector's own kind of fakes inside the gate. Models scored by ``izif`` use the raw
  ``anomaly_score`` instead;
* export fits the gate's limit as the ``coverage`` quantile (default 99 %) of that score over the training
  domain's own held-out images: the normal validation images **and** held-out fakes of the run's own
  generator, pooled;
* above the limit the image is **out of domain**: the generated verdict abstains (no flag, no probability)
  and the image is reported as anomalous.

Core layer: numpy only. Export fits the gate, :class:`ganaudit.runtime.detector.Detector` applies it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .errors import ConfigError

DOMAIN_COVERAGE = 0.99
# The fused components left out of the domain score: D's realness logit would push the detector's own fakes out.
EXCLUDED_COMPONENTS = ("disc_logit",)


def gate_weights(scoring: Mapping[str, Any]) -> list[float] | None:
    """The domain score's weight per fused component (the fusion weights, realness term zeroed), or None
    for a model whose anomaly score is not fused (its gate uses the raw anomaly score)."""
    if scoring.get("method") != "fused":
        return None
    return [0.0 if name in EXCLUDED_COMPONENTS else float(w) for name, w in zip(scoring["components"], scoring["weight"])]


def domain_scores(
    anomaly_score: np.ndarray, components: Mapping[str, np.ndarray], scoring: Mapping[str, Any], gate: Mapping[str, Any]
) -> np.ndarray:
    """Domain score of each image [N] from the graph's outputs (``components`` name -> [N])."""
    weights = gate.get("weight")
    if weights is None:
        return np.asarray(anomaly_score, np.float64)
    total = np.zeros(len(anomaly_score), np.float64)
    for i, (name, transform) in enumerate(zip(scoring["components"], scoring["transforms"])):
        if weights[i] == 0:
            continue
        x = np.asarray(components[name], np.float64)
        x = np.log(x + 1e-8) if transform == "log" else -x
        total += weights[i] * (x - scoring["center"][i]) / scoring["scale"][i]
    return total


def fit_gate(
    real: Mapping[str, np.ndarray], fake: Mapping[str, np.ndarray], scoring: Mapping[str, Any], *,
    coverage: float = DOMAIN_COVERAGE,
) -> dict[str, Any]:  # fmt: skip
    """The gate stored in the spec (``spec.domain``) from the graph's outputs (name -> [N]) on the normal
    validation images (``real``) and on held-out fakes of the run's own generator (``fake``): its limit is the
    ``coverage`` quantile of their domain scores, pooled."""
    if not 0.5 <= coverage <= 1:
        raise ConfigError(f"--domain-coverage must be between 0.5 and 1, got {coverage}")
    weights = gate_weights(scoring)
    gate: dict[str, Any] = {"score": "anomaly_score" if weights is None else "fused-without-realness", "weight": weights}
    r = domain_scores(real["anomaly_score"], real, scoring, gate)
    f = domain_scores(fake["anomaly_score"], fake, scoring, gate)
    limit = float(np.quantile(np.concatenate([r, f]), coverage))
    return {
        **gate, "limit": limit, "coverage": float(coverage), "n_real": int(len(r)), "n_fake": int(len(f)),
        "real_inside": float(np.mean(r <= limit)), "fake_inside": float(np.mean(f <= limit)),
    }  # fmt: skip


def describe(gate: Mapping[str, Any]) -> str:
    """One line for ``ganaudit info``: what the gate scores, its limit and how much of the fitting images it keeps."""
    if not gate:
        return "none (no generated head, or exported before domain gates): the generated verdict is never withheld"
    score = "fused anomaly score without D's realness term" if gate.get("score") == "fused-without-realness" else "anomaly score"
    line = f"{score} <= {float(gate['limit']):.4g}"
    if gate.get("coverage") is not None:
        line += f" (the {float(gate['coverage']):.3g} quantile)"
    if all(gate.get(k) is not None for k in ("real_inside", "n_real", "fake_inside", "n_fake")):
        line += (
            f"; inside: {float(gate['real_inside']):.1%} of {gate['n_real']} normal validation images, "
            f"{float(gate['fake_inside']):.1%} of {gate['n_fake']} own-generator fakes"
        )
    return line


def inside(scores: np.ndarray, gate: Mapping[str, Any]) -> np.ndarray:
    """True where an image is inside the gate (in domain)."""
    return np.asarray(scores, np.float64) <= float(gate["limit"])
