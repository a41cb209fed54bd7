"""Why a verdict is what it is, in short sentences a moderator can read and act on.

``explain`` turns one scored verdict into a list of sentences: which head fired, each score against its
threshold, the anomaly percentile in words, the calibrated probability where the model has one, and what
the domain gate decided. The runtime attaches them to every Verdict (``Verdict.reasons``); scan rows, the
HTML report and the service pass them on unchanged.

Runtime layer: the standard library only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only (runtime imports this module)
    from .detector import Detector, Thresholds, Verdict


def percentile_words(pct: float) -> str:
    """An anomaly percentile in words: "stranger than 99.2 % of normal images"."""
    if pct >= 100.0:
        return "stranger than all the normal images the model was calibrated on"
    if pct <= 0.0:
        return "more typical than all the normal images the model was calibrated on"
    return f"stranger than {pct:.2f} % of normal images" if pct > 99.9 else f"stranger than {pct:.1f} % of normal images"


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _anomaly(v: "Verdict", thr: "Thresholds") -> list[str]:
    assert v.anomaly_score is not None
    out = []
    above = v.anomaly_score > thr.anomaly
    if above:
        out.append(f"Anomaly head fired: score {_num(v.anomaly_score)} is above its threshold {_num(thr.anomaly)}.")
    elif v.in_domain is False:
        out.append(
            f"Anomaly score {_num(v.anomaly_score)} is under its threshold {_num(thr.anomaly)}, but the image "
            "is out of domain, so it is reported as anomalous."
        )
    else:
        out.append(f"Anomaly head did not fire: score {_num(v.anomaly_score)} is not above its threshold {_num(thr.anomaly)}.")
    if v.anomaly_percentile is not None:
        out.append(f"The image is {percentile_words(v.anomaly_percentile)} (percentile {v.anomaly_percentile:.1f}).")
    if v.anomaly_probability is not None:
        out.append(f"Calibrated probability that it is anomalous: {v.anomaly_probability * 100:.1f} %.")
    return out


def _generated(v: "Verdict", thr: "Thresholds") -> list[str]:
    if v.in_domain is False:
        return ["Generated head abstains: it only knows images of its training domain."]
    if v.generated_score is None:
        return []
    p = f"{v.generated_score * 100:.1f} %"
    if thr.generated is None:
        return [f"Generated head: calibrated probability {p} that the image is generated (no threshold set)."]
    t = f"{thr.generated * 100:.1f} %"
    if v.generated_flag:
        return [f"Generated head fired: probability {p} (calibrated) that the image is generated, above its threshold {t}."]
    return [f"Generated head did not fire: probability {p} (calibrated) that it is generated, not above its threshold {t}."]


def _gate(v: "Verdict", det: "Detector") -> list[str]:
    if not det.has_generated_head:
        return []
    gate: dict[str, Any] = det.spec.domain
    if not gate:
        return ["Domain gate: this model has none (exported by an older ganaudit); the generated verdict is given for any image."]
    if not det.domain_gate:
        return ["Domain gate: switched off; the generated verdict is given for any image."]
    cover = f"{gate.get('coverage', 0) * 100:.0f} %"
    score, limit = _num(v.domain_score or 0.0), _num(float(gate["limit"]))
    if v.in_domain:
        return [f"Domain gate: in domain (score {score}, limit {limit}); the generated verdict applies."]
    return [
        f"Domain gate: out of domain (score {score} is above the limit {limit}, under which {cover} of the "
        "model's own real and generated images fall)."
    ]


def explain(v: "Verdict", thr: "Thresholds", det: "Detector") -> list[str]:
    """The reasons of one verdict, in reading order: the verdict, the anomaly head, the generated head, the gate."""
    if v.status != "ok" or v.anomaly_score is None:
        return [f"Not scored: {v.error}"] if v.error else []
    fired = [name for name, on in (("anomalous", v.anomaly_flag), ("generated", v.generated_flag)) if on]
    head = f"Flagged as {' and '.join(fired)}." if fired else "Passed: no head fired."
    if v.in_domain is False:
        head = "Flagged as anomalous: out of the model's domain; no generated verdict."
    return [head, *_anomaly(v, thr), *_generated(v, thr), *_gate(v, det)]
