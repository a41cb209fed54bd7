"""The schema of the model spec (``metadata_props["ganaudit"]``), checked whole when a model is loaded.

:func:`validate_spec` checks a parsed spec against :class:`SpecSchema` (pydantic v2, strict: a string is never
taken for a number) and the rules a JSON Schema cannot say (heads, outputs and thresholds agree; quantiles
sorted; fused-score lists the same length). Every problem is listed in one ModelFormatError. Unknown keys are
kept (newer files of the same format version may add some). ``python -m ganaudit.core.spec_schema`` prints the
JSON Schema published in docs/model-format.md.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, model_validator,
)

from .errors import ModelFormatError

HEADS = ("anomaly", "generated")


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError("must be a finite number")
    return x


def _sorted(xs: list[float]) -> list[float]:
    if any(b < a for a, b in zip(xs, xs[1:])):
        raise ValueError("quantiles must be sorted in increasing order")
    return xs


def _positive(x: float) -> float:
    if not x > 0:
        raise ValueError("must be greater than 0")
    return x


Finite = Annotated[float, AfterValidator(_finite)]
Positive = Annotated[float, AfterValidator(_finite), AfterValidator(_positive)]
Count = Annotated[int, Field(ge=0)]
Head = Literal["anomaly", "generated"]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class PreprocessSchema(_Strict):
    size: Literal[16, 32, 64, 128]
    channels: Literal[1, 3]
    fit: Literal["stretch", "center_crop"] = "stretch"
    native_crops: int = Field(0, ge=0, le=16)
    scale_view: StrictBool = False


class ThresholdSchema(_Strict):
    value: Finite
    fpr: Optional[float] = Field(None, gt=0, lt=1)
    n_val: int = Field(0, ge=0)
    method: str = "normal-quantile"


class ScoringSchema(_Strict):
    method: Literal["izif", "fused"] = "izif"
    components: Optional[list[str]] = None
    transforms: Optional[list[Literal["log", "negate"]]] = None
    center: Optional[list[Finite]] = None
    scale: Optional[list[Positive]] = None  # a z-score divides by it
    weight: Optional[list[Finite]] = None
    combine: Literal["sum", "max"] = "sum"  # of the weighted z-scores: their sum, or the largest weighted one
    layout: Optional[str] = None
    alignment: Optional[Finite] = None
    map_scale: Optional[Positive] = None
    memory_bank_size: Optional[Count] = None
    patch_bank_size: Optional[Count] = None
    knn_k: Optional[Count] = None
    knn_dims: Optional[Count] = None

    @model_validator(mode="after")
    def _fused_lists_agree(self) -> "ScoringSchema":
        if self.method == "fused":
            lists = {k: getattr(self, k) for k in ("components", "transforms", "center", "scale", "weight")}
            missing = [k for k, v in lists.items() if v is None]
            if missing:
                raise ValueError(f"a fused score needs {', '.join(missing)}")
            if len({len(v) for v in lists.values()}) != 1 or not lists["components"]:
                raise ValueError("components, transforms, center, scale and weight must be non-empty and equally long")
        return self


class CalibrationSchema(_Strict):
    method: Literal["platt", "isotonic"]
    a: Optional[Finite] = None
    b: Optional[Finite] = None
    x: Optional[list[Finite]] = None
    y: Optional[list[Finite]] = None

    @model_validator(mode="after")
    def _parameters(self) -> "CalibrationSchema":
        if self.method == "platt" and (self.a is None or self.b is None):
            raise ValueError("a platt calibration needs a and b")
        if self.method == "isotonic" and (not self.x or not self.y or len(self.x) != len(self.y)):
            raise ValueError("an isotonic calibration needs x and y, non-empty and equally long")
        return self


class DomainSchema(_Strict):
    """The domain gate (core/domain.py); an empty object means no gate."""

    limit: Finite
    weight: Optional[list[Finite]] = None  # per fused component; None: the gate uses the raw anomaly score
    score: Literal["anomaly_score", "fused-without-realness"] = "anomaly_score"
    coverage: Optional[Annotated[float, Field(ge=0.5, le=1)]] = None
    n_real: Optional[Count] = None
    n_fake: Optional[Count] = None
    real_inside: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    fake_inside: Optional[Annotated[float, Field(ge=0, le=1)]] = None


class SpecSchema(_Strict):
    """The model spec, format version 1."""

    format_version: Literal[1]
    name: str = Field(min_length=1)
    preprocess: PreprocessSchema
    heads: list[Head] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    inputs: list[Literal["image", "crops"]] = ["image"]
    scoring: ScoringSchema = Field(default_factory=ScoringSchema)
    thresholds: dict[Head, ThresholdSchema] = {}
    quantiles: dict[Head, Annotated[list[Finite], Field(min_length=2), AfterValidator(_sorted)]] = {}
    calibration: dict[Head, CalibrationSchema] = {}
    provenance: dict[str, Any] = {}
    domain: Annotated[Optional[DomainSchema], BeforeValidator(lambda d: None if d == {} else d)] = None  # {}: no gate

    @model_validator(mode="after")
    def _parts_agree(self) -> "SpecSchema":
        problems = []
        if "anomaly" not in self.heads:
            problems.append("heads must include 'anomaly'")
        if len(set(self.heads)) != len(self.heads):
            problems.append("heads must not repeat")
        needed = {"anomaly": "anomaly_score", "generated": "generated_logit"}
        problems += [f"outputs lack {needed[h]!r}, which head {h!r} needs" for h in self.heads if needed[h] not in self.outputs]
        fused = self.scoring.components if self.scoring.method == "fused" else None
        unknown = sorted(set(fused or ()) - set(self.outputs))
        if unknown:
            problems.append(f"scoring.components name outputs the model does not list: {unknown}")
        gate = self.domain
        if gate is not None and gate.weight is not None and (fused is None or len(gate.weight) != len(fused)):
            problems.append("domain.weight needs a fused score with one weight per component")
        if self.inputs[:1] != ["image"] or len(set(self.inputs)) != len(self.inputs):
            problems.append("inputs must be ['image'] or ['image', 'crops']")
        if "crops" in self.inputs and self.preprocess.native_crops < 1:
            problems.append("input 'crops' needs preprocess.native_crops >= 1")
        for table in ("thresholds", "quantiles", "calibration"):
            extra = sorted(set(getattr(self, table)) - set(self.heads))
            if extra:
                problems.append(f"{table} name heads the model does not have: {extra}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc if not str(x).startswith("function-")) or "spec"


def validate_spec(d: dict[str, Any], origin: str = "the model") -> SpecSchema:
    """Check a parsed spec against the schema; raises ModelFormatError naming every problem (at most 8)."""
    try:
        return SpecSchema.model_validate(d)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        parts = [f"{_where(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in errors[:8]]
        more = f" (and {len(errors) - 8} more)" if len(errors) > 8 else ""
        raise ModelFormatError(
            f"{origin}'s ganaudit spec is invalid: {'; '.join(parts)}{more}. See docs/model-format.md for the schema; "
            "re-export the model rather than editing its metadata"
        ) from None


def json_schema() -> dict[str, Any]:
    return SpecSchema.model_json_schema()


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2))
