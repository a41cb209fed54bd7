"""Export a training run to one self-describing ONNX file, verified against torch."""

from __future__ import annotations

import io
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
from .calibrate import fit_platt, fit_quantiles, fit_threshold
from .generated import PoolSources, crops_of, fake_pool, load_snapshots
from .imaging import preprocess, regions_to_input
from .datasets import load_dataset
from .domain import DOMAIN_COVERAGE, fit_gate
from .errors import ConfigError, ModelFormatError
from .runtime import Detector, rows_per_call
from .scoring import COMPONENTS, KNN_K, LAYOUT_NAMES, SCORE_METHODS, ScoringModel, fusion_inputs
from .spec import METADATA_KEY, ModelSpec, PreprocessSpec, Threshold
from .layout import STATIONARY_BELOW, alignment, is_stationary
from .thresholds import apply_calibration, check_fpr, threshold_at_fpr
from .rundir import RunDir
from .train import load_networks

log = logging.getLogger(__name__)

OPSET = 17
PARITY_RTOL = 1e-4
MIN_VALIDATION_WARN = 100
MIN_CALIBRATION_ANOMALIES = 20
CALIB_BATCHES_HELD = 4
# Weights of the fused score's components (scoring.COMPONENTS order) for each layout of the training images.
FUSION_WEIGHTS = {layout: tuple(c.weights[layout] for c in COMPONENTS) for layout in LAYOUT_NAMES}
LAYOUTS = ("auto", *LAYOUT_NAMES)
# anomaly_map = unscaled map / (MAP_SCALE_FACTOR * median patch_distance of the normal validation images):
# a typical normal image peaks near 0.5, and 1 (the top of the service's heat map PNG) is twice that.
MAP_SCALE_FACTOR = 2.0


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


def torch_outputs(
    model: torch.nn.Module, x: np.ndarray, names: list[str], batch: int = 256, crops: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            args = (torch.from_numpy(x[i : i + batch]),)
            if crops is not None:
                args += (torch.from_numpy(crops[i : i + batch]),)
            parts.append(model(*args))
    return {n: torch.cat([p[k] for p in parts]).numpy() for k, n in enumerate(names)}


def to_onnx(
    model: torch.nn.Module, example: np.ndarray, names: list[str], crops: np.ndarray | None = None
) -> onnx.ModelProto:
    """TorchScript-based exporter, pinned explicitly (torch >= 2.9 defaults to dynamo)."""
    buf = io.BytesIO()
    args: tuple[torch.Tensor, ...] = (torch.from_numpy(example),)
    inputs = ["image"]
    if crops is not None:
        args += (torch.from_numpy(crops),)
        inputs.append("crops")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is chatty about constant folding
        torch.onnx.export(
            model,
            args,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=names,
            dynamic_axes={**{n: {0: "batch"} for n in inputs}, **{n: {0: "batch"} for n in names}},
            do_constant_folding=False,  # keeps the float16 memory bank float16 in the file; onnxruntime folds at load
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
    info = RunDir(run_dir).read_info()
    info.pop("validation_ids", None)
    return {
        **info,
        "config": cfg_dict,
        "quantize": quantize,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_ganaudit_version": __version__,
        "export_torch_version": torch.__version__,
        "audit": RunDir(run_dir).audit_headline(),
    }


def with_spec(proto: onnx.ModelProto, spec: ModelSpec) -> bytes:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    proto.producer_name, proto.producer_version = "ganaudit", __version__
    return proto.SerializeToString()


def quantize_int8(fp32: bytes, val: np.ndarray, val_crops: np.ndarray | None = None, rows: int = 32) -> bytes:
    """Static int8 quantization (QDQ), calibrated on the validation images (and their native crops), ``rows``
    images per call; the calibrator reduces its collected outputs every CALIB_BATCHES_HELD calls, so memory
    does not grow with the number of validation images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            feeds = []
            for i in range(0, len(val), rows):
                feed = {"image": val[i : i + rows]}
                if val_crops is not None:
                    feed["crops"] = val_crops[i : i + rows]
                feeds.append(feed)
            self.batches = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_static(
            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            extra_options={"CalibMaxIntermediateOutputs": CALIB_BATCHES_HELD},
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
    anomalies: str | None = None,
    score: str = "fused",
    layout: str = "auto",
    domain_coverage: float = DOMAIN_COVERAGE,
) -> ExportReport:
    """Build the scoring graph of a run, export it, verify parity, fit thresholds, write one .onnx file.

    ``anomalies`` (a data source as for training: folder, IDX file or ``sklearn:digits?label=N``) holds known
    anomalous images: with it, ``anomaly_probability`` is calibrated (Platt scaling) against the
    held-out normal validation images. ``score`` picks the anomaly score: ``fused`` (weighted robust z-scores
    of the components in scoring.COMPONENTS, fitted on the validation images) or ``izif`` (f-AnoGAN's
    pixel + kappa * feature residual). ``layout`` picks the fused score's weights: ``aligned`` (the images share
    a layout, e.g. centred digits or objects: image-level components), ``stationary`` (every position looks
    alike, e.g. textures or surfaces: the local patch distance) or ``auto`` (decided by :func:`alignment`).
    ``domain_coverage`` sets the domain gate of a model with a generated head (:mod:`ganaudit.domain`): the
    share of the training domain's own held-out images (real and generated, pooled) that stay inside it.
    """
    run_dir, output = Path(run_dir), Path(output)
    check_fpr(fpr)
    if quantize not in ("none", "int8"):
        raise ConfigError(f"--quantize must be none or int8, got {quantize!r}")
    if score not in SCORE_METHODS:
        raise ConfigError(f"--score must be one of {', '.join(SCORE_METHODS)}, got {score!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "auto" and score != "fused":
        raise ConfigError("--layout sets the weights of the fused score: it cannot be combined with --score izif")
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
    val_crops = load_validation_crops(run_dir, cfg.preprocess) if head is not None else None
    images = RunDir(run_dir).load_memory_bank()
    model = scoring_model(run_dir, cfg, nets, head, images=images, val=val)
    if score == "fused":
        scoring = fit_fusion(model, val, layout, alignment(images))
    else:
        scoring = {"method": "izif", "kappa": cfg.kappa, **graph_facts(model)}
    names = model.output_names
    proto = to_onnx(model, val[:2], names, None if val_crops is None else val_crops[:2])
    spec = ModelSpec(
        name=name or run_dir.resolve().name,
        preprocess=cfg.preprocess,
        heads=["anomaly"] + (["generated"] if head is not None else []),
        outputs=names,
        inputs=model.input_names,
        scoring=scoring,
        provenance=provenance(run_dir, asdict(cfg), quantize),
    )
    fp32 = with_spec(proto, spec)
    expected = torch_outputs(model, val, names, crops=val_crops)
    parity = check_parity(expected, Detector.load(fp32).run(val, val_crops))
    final = fp32 if quantize == "none" else quantize_int8(fp32, val, val_crops, rows_per_call(spec, 32))
    scores = Detector.load(final).run(val, val_crops)
    drift: dict[str, float] = {}
    if quantize == "int8":
        ref = expected["anomaly_score"]
        rel = np.abs(scores["anomaly_score"] - ref) / (1 + np.abs(ref))
        drift = {"anomaly_score_max_rel": float(rel.max()), "anomaly_score_mean_rel": float(rel.mean())}
    a = scores["anomaly_score"]
    spec.thresholds = {"anomaly": fit_threshold(a, fpr)}
    spec.quantiles = {"anomaly": fit_quantiles(a)}
    if head is not None:
        fakes_out = fit_generated(spec, Detector.load(final), scores["generated_logit"], run_dir, cfg, nets, fpr)
        spec.domain = fit_gate(scores, fakes_out, spec.scoring, coverage=domain_coverage)
    if anomalies is not None:
        spec.calibration["anomaly"] = fit_anomaly_calibration(Detector.load(final), a, anomalies)
    atomic_write(output, with_spec(onnx.load_from_string(final), spec))
    gen_thr = spec.thresholds.get("generated")
    return ExportReport(
        path=str(output), name=spec.name, n_validation=len(val), parity_max_error=parity,
        anomaly_threshold=spec.thresholds["anomaly"].value, quantize=quantize, int8_drift=drift,
        generated_threshold=None if gen_thr is None else gen_thr.value,
        generated_calibration=spec.calibration.get("generated"),
        anomaly_calibration=spec.calibration.get("anomaly"), layout=spec.scoring.get("layout"),
    )  # fmt: skip


def scoring_model(
    run_dir: Path, cfg: Any, nets: Any, head: torch.nn.Module | None, *,
    images: np.ndarray | None = None, val: np.ndarray | None = None,
) -> ScoringModel:  # fmt: skip
    """The scoring graph of a run (before fusion is fitted): its memory bank and patch bank of training images,
    and the map scale fitted on its validation images. ``images`` and ``val``, when the caller has already
    loaded them, are the run's memory bank and validation images (RunDir.load_memory_bank, load_validation)."""
    model = ScoringModel(nets.G_ema, nets.D, nets.E, kappa=cfg.kappa, head=head).eval()
    bank_images = torch.from_numpy(RunDir(run_dir).load_memory_bank() if images is None else images)
    model.set_memory_bank(bank_images)
    model.set_patch_bank(bank_images, seed=cfg.seed)
    normal = torch.from_numpy(RunDir(run_dir).load_validation() if val is None else val)
    with torch.no_grad():
        peaks = torch.cat([model.patch_map(normal[i : i + 256]).flatten(1).amax(1) for i in range(0, len(normal), 256)])
    model.set_map_scale(MAP_SCALE_FACTOR * max(float(peaks.median()), 1e-6))
    return model


def fit_fusion(
    model: ScoringModel, val: np.ndarray, layout: str = "auto", aligned_by: float | None = None, batch: int = 256
) -> dict[str, Any]:
    """Fit the fused anomaly score's centres (median) and scales (IQR / 1.349) on normal validation images;
    its weights are those of ``layout`` (``auto``: stationary when the training images' alignment
    ``aligned_by`` is below STATIONARY_BELOW, else oriented when D learnt the rotation task, else aligned)."""
    if layout == "auto":
        if aligned_by is None:
            raise ValueError("layout='auto' needs the training images' alignment")
        layout = "stationary" if is_stationary(aligned_by) else "oriented" if model.has_rotation else "aligned"
    if layout == "oriented" and not model.has_rotation:
        raise ConfigError("--layout oriented needs a D trained with the rotation task (ganaudit train --rotation 1)")
    weights = [c.weights[layout] for c in model.components]
    t = fusion_table(model, val, batch)
    center = np.median(t, axis=0)
    q75, q25 = np.percentile(t, [75, 25], axis=0)
    scale = np.maximum((q75 - q25) / 1.349, 1e-6)
    model.set_fusion(center.tolist(), scale.tolist(), weights)
    return {
        "method": "fused",
        "components": [c.name for c in model.components],
        "transforms": [c.transform for c in model.components],
        "center": center.tolist(),
        "scale": scale.tolist(),
        "weight": weights,
        "layout": layout,
        "alignment": aligned_by,
        "n_val": int(len(val)),
        **graph_facts(model),
    }


def fusion_table(model: ScoringModel, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """[N, n components] float64: the fused score's transformed components (fusion_inputs) of images ``x``."""
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            raw, _ = model.raw_components(torch.from_numpy(x[i : i + batch]))
            parts.append(fusion_inputs(raw, model.components).double().numpy())
    return np.concatenate(parts)


def graph_facts(model: ScoringModel) -> dict[str, Any]:
    """What the spec records of the graph's banks and map (the runtime sizes its calls from patch_bank_size)."""
    return {
        "knn_k": KNN_K,
        "memory_bank_size": int(len(model.bank)),
        "patch_bank_size": int(len(model.patch_bank)),
        "map_scale": float(model.map_scale),
    }


def fit_anomaly_calibration(det: Detector, normal_scores: np.ndarray, anomalies: str) -> dict[str, Any]:
    """Platt calibration of the anomaly score: held-out normal validation images vs known anomalies."""
    pre = det.spec.preprocess
    images = load_dataset(anomalies, size=pre.size, channels=pre.channels, fit=pre.fit).images
    anomalous = det.run(images)["anomaly_score"]  # the score does not use the head's crops
    if len(anomalous) < MIN_CALIBRATION_ANOMALIES:
        log.warning("only %d anomalous images: the anomaly calibration is a rough estimate", len(anomalous))
    # izi_f scores are positive and skewed (log suits them); fused scores are z-score sums, often negative.
    transform = "identity" if det.spec.scoring.get("method") == "fused" else "log"
    return fit_platt(normal_scores.astype(np.float64), anomalous.astype(np.float64), transform=transform)


def load_validation_crops(run_dir: Path, pre: PreprocessSpec) -> np.ndarray:
    """The validation images' native-scale crops as the graph's ``crops`` input [N, K, C, S, S]."""
    run = RunDir(run_dir)
    regions, path = run.load_validation_native(), run.validation_native
    if regions.shape[1] != pre.native_crops:
        raise ModelFormatError(
            f"{path} holds {regions.shape[1]} crops per image but the run is configured for {pre.native_crops}"
        )
    return np.stack([regions_to_input(r, pre) for r in regions])


def held_out_fakes(run_dir: Path, cfg: Any, nets: Any, n: int) -> np.ndarray:
    """Generated images the head never trained on: fresh latents for every snapshot and the EMA generator,
    and reconstructions of the (held-out) validation images. uint8 NHWC."""
    src = PoolSources(load_snapshots(run_dir, nets.G), nets.G_ema, nets.E, RunDir(run_dir).load_validation())
    return fake_pool(src, n, cfg.seed + 1_000_003, torch.device("cpu"))


def fit_generated(
    spec: ModelSpec, det: Detector, real_logits: np.ndarray, run_dir: Path, cfg: Any, nets: Any, fpr: float
) -> dict[str, np.ndarray]:
    """Platt calibration on held-out real vs held-out generated logits, then the threshold on the calibrated
    probability of the real validation images at ``fpr``. Scores come from the shipped ONNX graph, whose
    outputs on the held-out fakes are returned (export fits the domain gate on them)."""
    fakes = held_out_fakes(run_dir, cfg, nets, max(len(real_logits), 64))
    pre = spec.preprocess
    fake_crops = crops_of(fakes, pre)
    fake_in = np.stack([preprocess(f, pre) for f in fakes])
    fake_out = det.run(fake_in, fake_crops)
    fake_logits = fake_out["generated_logit"]
    cal = fit_platt(real_logits.astype(np.float64), fake_logits.astype(np.float64))
    spec.calibration["generated"] = cal
    p_real = apply_calibration(real_logits, cal)
    spec.thresholds["generated"] = Threshold(
        value=threshold_at_fpr(p_real, fpr), fpr=fpr, n_val=int(len(p_real)), method="real-quantile(platt)"
    )
    spec.quantiles["generated"] = fit_quantiles(p_real)
    return fake_out


__all__ = ["export", "ExportReport"]
