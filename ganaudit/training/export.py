"""Export a training run to one self-describing ONNX file, verified against torch.

The steps, each in its module: check the options (here); load the run (here); build the scoring graph and its
ONNX form (``export_graph``); check parity (``export_graph``); quantise (``export_int8``); fit the fused score,
thresholds and calibrations (``export_fit``); write the file with its spec (here).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.atomic import atomic_write
from .calibrate import fit_quantiles, fit_threshold
from ..core.domain import DOMAIN_COVERAGE, fit_gate
from ..core.errors import ConfigError
from .export_fit import fit_anomaly_calibration, fit_fusion, fit_generated, load_validation_crops
from .export_graph import check_parity, graph_facts, provenance, scoring_model, to_onnx, torch_outputs, with_spec
from .export_int8 import quantize_int8
from ..core.layout import alignment
from .rundir import RunDir
from ..runtime.detector import Detector, rows_per_call
from .scoring import LAYOUT_NAMES, PATCH_BANK_SIZE, PATCH_CANDIDATES, SCORE_METHODS
from ..core.spec import ModelSpec
from ..core.thresholds import check_fpr
from .train import load_networks

log = logging.getLogger(__name__)

MIN_VALIDATION_WARN = 100
LAYOUTS = ("auto", *LAYOUT_NAMES)


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
    generated_threshold: float | None = None
    generated_calibration: dict[str, Any] | None = None
    anomaly_calibration: dict[str, Any] | None = None
    layout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_options(fpr: float, quantize: str, score: str, layout: str, patch_bank: int = PATCH_BANK_SIZE) -> None:
    """ConfigError naming the export option that is wrong."""
    check_fpr(fpr)
    if not 1 <= patch_bank <= PATCH_CANDIDATES:
        raise ConfigError(f"--patch-bank must be between 1 and {PATCH_CANDIDATES}, got {patch_bank}")
    if quantize not in ("none", "int8"):
        raise ConfigError(f"--quantize must be none or int8, got {quantize!r}")
    if score not in SCORE_METHODS:
        raise ConfigError(f"--score must be one of {', '.join(SCORE_METHODS)}, got {score!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "auto" and score != "fused":
        raise ConfigError("--layout sets the weights of the fused score: it cannot be combined with --score izif")


def export(
    run_dir: str | Path,
    output: str | Path,
    *,
    fpr: float = 0.01,
    name: str | None = None,
    quantize: str = "none",
    allow_partial: bool = False,
    anomalies: str | None = None,
    score: str = "fused",
    layout: str = "auto",
    domain_coverage: float = DOMAIN_COVERAGE,
    patch_bank: int = PATCH_BANK_SIZE,
) -> ExportReport:
    """Build the scoring graph of a run, export it, verify parity, fit thresholds, write one .onnx file.

    ``anomalies`` (a data source as for training: folder, IDX file or ``sklearn:digits?label=N``) holds known
    anomalous images: with it, ``anomaly_probability`` is calibrated (Platt scaling) against the
    held-out normal validation images. ``score`` picks the anomaly score: ``fused`` (weighted robust z-scores
    of the components in scoring.COMPONENTS, fitted on the validation images) or ``izif`` (f-AnoGAN's
    pixel + kappa * feature residual). ``layout`` picks the fused score's weights: ``aligned`` (the images share
    a layout, e.g. centred digits or objects: image-level components), ``stationary`` (every position looks
    alike, e.g. textures or surfaces: the local patch distance) or ``auto`` (decided by :func:`alignment`).
    ``domain_coverage`` sets the domain gate of a model with a generated head (:mod:`ganaudit.core.domain`): the
    share of the training domain's own held-out images (real and generated, pooled) that stay inside it.
    ``patch_bank`` is the anomaly map's bank of local features: fewer entries make a cheaper detector with a
    coarser map (docs/benchmarks.md, "Detector cost").
    """
    run_dir, output = Path(run_dir), Path(output)
    check_options(fpr, quantize, score, layout, patch_bank)
    RunDir(run_dir).refuse_output(output)
    cfg, nets, ckpt = load_networks(run_dir)
    if ckpt["step"] < cfg.total_steps:
        msg = f"{run_dir} is not finished (step {ckpt['step']} of {cfg.total_steps})"
        if not allow_partial:
            raise ConfigError(f"{msg}: finish it with `ganaudit train ... --resume`, or pass --partial to export anyway")
        log.warning("%s: exporting it anyway", msg)
    val = RunDir(run_dir).load_validation()
    if len(val) < MIN_VALIDATION_WARN:
        log.warning("only %d validation images: the threshold at FPR %g is a rough estimate", len(val), fpr)
    head = nets.H if cfg.generated_head else None
    if cfg.generated_head and head is None:
        log.warning("%s has not reached its generated-head phase: exporting the anomaly head only", run_dir)
    val_crops = load_validation_crops(run_dir, cfg.preprocess, len(val)) if head is not None else None

    model, spec, fp32 = _build(
        run_dir, cfg, nets, head, val, val_crops, score, layout, name or run_dir.resolve().name, quantize, patch_bank
    )

    # parity, then (int8) quantisation; one Detector of the graph that ships
    expected = torch_outputs(model, val, spec.outputs, crops=val_crops)
    det = Detector.load(fp32)
    parity = check_parity(expected, det.run(val, val_crops))
    final = fp32
    if quantize == "int8":
        final = quantize_int8(fp32, val, val_crops, rows_per_call(spec, 32))
        det = Detector.load(final)
    scores = det.run(val, val_crops)
    drift = _int8_drift(expected["anomaly_score"], scores["anomaly_score"]) if quantize == "int8" else {}

    # fit: thresholds, quantiles, calibrations and the domain gate, on the shipped graph's scores
    a = scores["anomaly_score"]
    spec.thresholds = {"anomaly": fit_threshold(a, fpr)}
    spec.quantiles = {"anomaly": fit_quantiles(a)}
    if head is not None:
        fakes_out = fit_generated(spec, det, scores["generated_logit"], run_dir, cfg, nets, fpr)
        spec.domain = fit_gate(scores, fakes_out, spec.scoring, coverage=domain_coverage)
    if anomalies is not None:
        spec.calibration["anomaly"] = fit_anomaly_calibration(det, a, anomalies)
    atomic_write(output, with_spec(onnx.load_from_string(final), spec))
    gen_thr = spec.thresholds.get("generated")
    return ExportReport(
        path=str(output), name=spec.name, n_validation=len(val), parity_max_error=parity,
        anomaly_threshold=spec.thresholds["anomaly"].value, quantize=quantize, int8_drift=drift,
        generated_threshold=None if gen_thr is None else gen_thr.value,
        generated_calibration=spec.calibration.get("generated"),
        anomaly_calibration=spec.calibration.get("anomaly"), layout=spec.scoring.get("layout"),
    )  # fmt: skip


def _build(
    run_dir: Path, cfg: Any, nets: Any, head: Any, val: np.ndarray, val_crops: np.ndarray | None, score: str,
    layout: str, name: str, quantize: str, patch_bank: int,
) -> tuple[Any, ModelSpec, bytes]:  # fmt: skip
    """The scoring graph, its anomaly score (the fused one fitted on the validation images), and the fp32 ONNX
    graph with its spec (no thresholds yet)."""
    images = RunDir(run_dir).load_memory_bank()
    model = scoring_model(run_dir, cfg, nets, head, images=images, val=val, patch_bank=patch_bank)
    if score == "fused":
        scoring = fit_fusion(model, val, layout, alignment(images))
    else:
        scoring = {"method": "izif", "kappa": cfg.kappa, **graph_facts(model)}
    names = model.output_names
    proto = to_onnx(model, val[:2], names, None if val_crops is None else val_crops[:2])
    spec = ModelSpec(
        name=name,
        preprocess=cfg.preprocess,
        heads=["anomaly"] + (["generated"] if head is not None else []),
        outputs=names,
        inputs=model.input_names,
        scoring=scoring,
        provenance=provenance(run_dir, asdict(cfg), quantize),
    )
    return model, spec, with_spec(proto, spec)


def _int8_drift(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """How far the int8 graph's anomaly scores are from torch's (relative to 1 + |score|)."""
    rel = np.abs(got - ref) / (1 + np.abs(ref))
    return {"anomaly_score_max_rel": float(rel.max()), "anomaly_score_mean_rel": float(rel.mean())}


__all__ = ["export", "ExportReport", "check_options"]
