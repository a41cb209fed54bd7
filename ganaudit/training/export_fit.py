"""Export, the fitting: the fused anomaly score's centres and scales, the generated head's calibration and
threshold on held-out fakes, and the optional anomaly calibration on known anomalies."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibrate import fit_platt, fit_quantiles
from .datasets import load_dataset
from ..core.errors import ConfigError
from .export_graph import graph_facts
from .generated import PoolSources, crops_of, fake_pool, load_snapshots
from ..core.imaging import preprocess, regions_to_input
from ..core.layout import is_stationary
from .rundir import RunDir
from ..runtime.detector import Detector
from .scoring import COMPONENTS, LAYOUT_COMBINE, LAYOUT_NAMES, ScoringModel, fusion_inputs
from ..core.spec import ModelSpec, PreprocessSpec, Threshold
from ..core.thresholds import apply_calibration, threshold_at_fpr

log = logging.getLogger(__name__)

MIN_CALIBRATION_ANOMALIES = 20
# Weights of the fused score's components (scoring.COMPONENTS order) for each layout of the training images.
FUSION_WEIGHTS = {layout: tuple(c.weights[layout] for c in COMPONENTS) for layout in LAYOUT_NAMES}


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
    combine = LAYOUT_COMBINE[layout]
    t = fusion_table(model, val, batch)
    center = np.median(t, axis=0)
    q75, q25 = np.percentile(t, [75, 25], axis=0)
    scale = np.maximum((q75 - q25) / 1.349, 1e-6)
    model.set_fusion(center.tolist(), scale.tolist(), weights, combine)
    return {
        "method": "fused",
        **({"combine": combine} if combine != "sum" else {}),  # sum: as every file written before it
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


def load_validation_crops(run_dir: Path, pre: PreprocessSpec, n: int) -> np.ndarray:
    """The ``n`` validation images' head crops as the graph's ``crops`` input [n, K, C, S, S]."""
    regions = RunDir(run_dir).load_validation_native({pre.native_crops, pre.stored_crops}, n)
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
