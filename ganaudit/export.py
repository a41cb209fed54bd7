"""Export a training run to one self-describing ONNX file, verified against torch."""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from . import __version__
from .atomic import atomic_write
from .calibrate import fit_quantiles, fit_threshold
from .errors import ConfigError, ModelFormatError
from .runtime import Detector
from .scoring import ScoringModel
from .spec import METADATA_KEY, ModelSpec
from .thresholds import check_fpr
from .train import load_networks

log = logging.getLogger(__name__)

OPSET = 17
PARITY_RTOL = 1e-4
MIN_VALIDATION_WARN = 100


@dataclass
class ExportReport:
    """What export measured: parity, thresholds and (for int8) drift."""

    path: str
    name: str
    n_validation: int
    parity_max_error: dict[str, float]
    anomaly_threshold: float
    quantize: str = "none"
    int8_drift: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_validation(run_dir: Path) -> np.ndarray:
    path = run_dir / "validation.npy"
    if not path.is_file():
        raise ModelFormatError(f"{run_dir} has no validation.npy: it is not a complete ganaudit run directory")
    val = np.load(path, allow_pickle=False).astype(np.float32)
    if len(val) == 0:
        raise ConfigError(f"{run_dir} has no held-out validation images: retrain with --val-fraction > 0")
    return val


def torch_outputs(model: torch.nn.Module, x: np.ndarray, names: list[str], batch: int = 256) -> dict[str, np.ndarray]:
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            parts.append(model(torch.from_numpy(x[i : i + batch])))
    return {n: torch.cat([p[k] for p in parts]).numpy() for k, n in enumerate(names)}


def to_onnx(model: torch.nn.Module, example: np.ndarray, names: list[str]) -> onnx.ModelProto:
    """TorchScript-based exporter, pinned explicitly (torch >= 2.9 defaults to dynamo)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is chatty about constant folding
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=names,
            dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_parity(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest |torch - ort| / (1 + |torch|) per output; raises if any exceeds PARITY_RTOL."""
    errors = {}
    for name, ref in expected.items():
        errors[name] = float(np.max(np.abs(ref - got[name]) / (1 + np.abs(ref))))
    bad = {k: v for k, v in errors.items() if v > PARITY_RTOL}
    if bad:
        raise ModelFormatError(
            "torch and onnxruntime disagree beyond 1e-4 * (1 + |score|): "
            + ", ".join(f"{k} {v:.2e}" for k, v in bad.items())
            + "; the file was not written"
        )
    return errors


def provenance(run_dir: Path, cfg_dict: dict[str, Any], quantize: str) -> dict[str, Any]:
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    info.pop("validation_ids", None)
    return {
        **info,
        "config": cfg_dict,
        "quantize": quantize,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_ganaudit_version": __version__,
        "export_torch_version": torch.__version__,
    }


def with_spec(proto: onnx.ModelProto, spec: ModelSpec) -> bytes:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    proto.producer_name, proto.producer_version = "ganaudit", __version__
    return proto.SerializeToString()


def quantize_int8(fp32: bytes, val: np.ndarray) -> bytes:
    """Static int8 quantization (QDQ), calibrated on the validation images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": val[i : i + 32]} for i in range(0, len(val), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_static(
            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        return dst.read_bytes()


def export(
    run_dir: str | Path,
    output: str | Path,
    *,
    fpr: float = 0.01,
    name: str | None = None,
    quantize: str = "none",
    allow_partial: bool = False,
) -> ExportReport:
    """Build the scoring graph of a run, export it, verify parity, fit thresholds, write one .onnx file."""
    run_dir, output = Path(run_dir), Path(output)
    check_fpr(fpr)
    if quantize not in ("none", "int8"):
        raise ConfigError(f"--quantize must be none or int8, got {quantize!r}")
    cfg, nets, ckpt = load_networks(run_dir)
    if ckpt["step"] < cfg.total_steps:
        msg = f"{run_dir} is not finished (step {ckpt['step']} of {cfg.total_steps})"
        if not allow_partial:
            raise ConfigError(f"{msg}: finish it with `ganaudit train ... --resume`, or pass --partial to export anyway")
        log.warning("%s: exporting it anyway", msg)
    val = load_validation(run_dir)
    if len(val) < MIN_VALIDATION_WARN:
        log.warning("only %d validation images: the threshold at FPR %g is a rough estimate", len(val), fpr)
    model = ScoringModel(nets.G_ema, nets.D, nets.E, kappa=cfg.kappa).eval()
    names = model.output_names
    proto = to_onnx(model, val[:2], names)
    spec = ModelSpec(
        name=name or run_dir.resolve().name,
        preprocess=cfg.preprocess,
        heads=["anomaly"],
        outputs=names,
        provenance=provenance(run_dir, asdict(cfg), quantize),
    )
    fp32 = with_spec(proto, spec)
    expected = torch_outputs(model, val, names)
    parity = check_parity(expected, Detector.load(fp32).run(val))
    final = fp32 if quantize == "none" else quantize_int8(fp32, val)
    scores = Detector.load(final).run(val)
    drift: dict[str, float] = {}
    if quantize == "int8":
        ref = expected["anomaly_score"]
        rel = np.abs(scores["anomaly_score"] - ref) / (1 + np.abs(ref))
        drift = {"anomaly_score_max_rel": float(rel.max()), "anomaly_score_mean_rel": float(rel.mean())}
    a = scores["anomaly_score"]
    spec.thresholds = {"anomaly": fit_threshold(a, fpr)}
    spec.quantiles = {"anomaly": fit_quantiles(a)}
    atomic_write(output, with_spec(onnx.load_from_string(final), spec))
    return ExportReport(
        path=str(output), name=spec.name, n_validation=len(val), parity_max_error=parity,
        anomaly_threshold=spec.thresholds["anomaly"].value, quantize=quantize, int8_drift=drift,
    )  # fmt: skip


__all__ = ["export", "ExportReport"]
