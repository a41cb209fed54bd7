"""The versioned model spec stored in every exported detector (``metadata_props["ganaudit"]``).

The spec is plain JSON so the runtime needs nothing but the standard library to read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .domain import describe as describe_domain
from .errors import ConfigError, ModelFormatError

FORMAT_VERSION = 1
METADATA_KEY = "ganaudit"
VALID_SIZES = (16, 32, 64, 128)
FIT_MODES = ("stretch", "center_crop")
MAX_NATIVE_CROPS = 16


def check_size(size: int) -> int:
    """Return ``size`` if it is a supported square size, else raise ConfigError."""
    if size not in VALID_SIZES:
        raise ConfigError(
            f"size {size} is not supported: use a power of two from 16 to 128 ({', '.join(map(str, VALID_SIZES))})"
        )
    return size


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a network input: float32 CHW in [-1, 1]."""

    size: int
    channels: int
    fit: str = "stretch"
    # Crops scored at native resolution by the generated-image head (0 = head off / whole image).
    native_crops: int = 0
    # The head also scores as many crops of a large image downscaled to ``size`` (imaging.head_regions).
    scale_view: bool = False

    def __post_init__(self) -> None:
        check_size(self.size)
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.fit not in FIT_MODES:
            raise ConfigError(f"fit must be one of {FIT_MODES}, got {self.fit!r}")
        if not 0 <= self.native_crops <= MAX_NATIVE_CROPS:
            raise ConfigError(f"native_crops must be 0..{MAX_NATIVE_CROPS}, got {self.native_crops}")
        if self.scale_view and self.native_crops < 1:
            raise ConfigError("scale_view needs native_crops >= 1 (it adds crops for the generated-image head)")

    @property
    def stored_crops(self) -> int:
        """Crops per image in a stored data set (imaging.stack_head_regions) that holds a large image."""
        return self.native_crops * (2 if self.scale_view else 1)

    def holds_crops(self, k: int) -> bool:
        """Whether ``k`` stored crops per image fit this policy (K: no image needed the scale view)."""
        return k in (self.native_crops, self.stored_crops)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        return cls(**{k: d[k] for k in ("size", "channels", "fit", "native_crops", "scale_view") if k in d})


@dataclass
class Threshold:
    """A decision threshold on a raw score, with how it was fitted."""

    value: float
    fpr: float | None = None
    n_val: int = 0
    method: str = "normal-quantile"


@dataclass
class ModelSpec:
    """Everything the runtime needs to use an exported detector."""

    name: str
    preprocess: PreprocessSpec
    heads: list[str]
    outputs: list[str]
    # Graph inputs, in order: "image" [N, C, S, S]; with the generated head also "crops" [N, K, C, S, S]
    # (K = preprocess.native_crops, made by imaging.native_crops). Files without this key have ["image"].
    inputs: list[str] = field(default_factory=lambda: ["image"])
    # How anomaly_score is computed: {"method": "izif", ...} or {"method": "fused", centres, scales, weights}.
    scoring: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    # Sorted normal-validation score quantiles per score (101+ points, 0..100 %).
    quantiles: dict[str, list[float]] = field(default_factory=dict)
    # Score -> probability maps, stored as plain numbers (see calibrate.py / runtime.py).
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # The domain gate of the generated verdict (see domain.py); {} = no gate (older files, no generated head).
    domain: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # The exact JSON text this spec was read from (not a dataclass field: no annotation).
    _source_json = None

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        """Hash of the spec text stored in the model file, so one file keeps one hash across ganaudit versions."""
        return hashlib.sha256((self._source_json or self.to_json()).encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise ModelFormatError(f"the ganaudit model spec is not valid JSON: {e}") from None
        except RecursionError:  # nesting deeper than Python's stack: no real spec comes near
            raise ModelFormatError("the ganaudit model spec is nested too deeply to be a model spec") from None
        if not isinstance(d, dict):
            raise ModelFormatError("the ganaudit model spec must be a JSON object")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFormatError(
                f"unsupported model format_version {version!r}; this ganaudit reads version {FORMAT_VERSION}. "
                "Re-export the model with this ganaudit version, or upgrade ganaudit."
            )
        from .spec_schema import validate_spec  # pydantic: imported when a model is read

        validate_spec(d)
        try:
            spec = cls(
                name=str(d["name"]),
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                heads=list(d["heads"]),
                outputs=list(d["outputs"]),
                inputs=list(d.get("inputs", ["image"])),
                scoring=dict(d.get("scoring", {})),
                thresholds={k: Threshold(**v) for k, v in d.get("thresholds", {}).items()},
                quantiles={k: [float(q) for q in v] for k, v in d.get("quantiles", {}).items()},
                calibration=dict(d.get("calibration", {})),
                provenance=dict(d.get("provenance", {})),
                domain=dict(d.get("domain", {})),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, ConfigError) as e:  # ValueError: e.g. "domain": [[]]
            raise ModelFormatError(f"the ganaudit model spec is incomplete or invalid: {e}") from None
        spec._source_json = text
        return spec


def describe_spec(spec: ModelSpec) -> dict[str, Any]:
    """The one plain description of a detector's spec: `ganaudit info`, `ganaudit models` and scan summaries each
    show a part of it."""
    p = spec.preprocess
    return {
        "name": spec.name,
        "spec_hash": spec.spec_hash,
        "format_version": spec.format_version,
        "heads": list(spec.heads),
        "outputs": list(spec.outputs),
        "input": {"channels": p.channels, "size": p.size, "fit": p.fit},
        "native_crops": p.native_crops if "crops" in spec.inputs else 0,  # crops per image the generated head scores
        "scale_view": p.scale_view,  # and as many of a large image downscaled to the model's size
        "thresholds": {h: {"value": t.value, "fpr": t.fpr, "n_val": t.n_val} for h, t in spec.thresholds.items()},
        "scoring": describe_scoring(spec.scoring),
        "domain_gate": describe_domain(spec.domain),
        "provenance": spec.provenance,
    }


def input_text(i: dict[str, Any]) -> str:
    """``C x S x S`` of a described input."""
    return f"{i['channels']} x {i['size']} x {i['size']}"


def describe_scoring(scoring: dict[str, Any]) -> str:
    """How the anomaly score is computed, in one line (the fused score's weighted components)."""
    method = scoring.get("method", "izif")
    if method != "fused":
        return f"{method} (f-AnoGAN's pixel + kappa x feature residual)"
    if "layout" not in scoring:
        return "fused (exported before layouts)"
    shown = {"log": "log {}", "negate": "-{}"}
    terms = zip(scoring["components"], scoring["transforms"], scoring["weight"])
    weighted = [f"{w:g} z({shown.get(t, '{}').format(c)})" for c, t, w in terms if w]
    combined = f"max({', '.join(weighted)})" if scoring.get("combine") == "max" else " + ".join(weighted)
    alignment = f" (alignment {scoring['alignment']:.3g})" if scoring.get("alignment") is not None else ""
    return f"fused, {scoring.get('layout', 'unnamed')} layout{alignment}: " + combined
