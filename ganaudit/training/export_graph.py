"""Export, the graph: the torch scoring graph of a run, its ONNX form with the spec in its metadata, and the
parity check of onnxruntime against torch."""

from __future__ import annotations

import io
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .. import __version__
from ..core.errors import ModelFormatError
from .rundir import RunDir
from .scoring import KNN_K, PATCH_BANK_SIZE, ScoringModel
from ..core.spec import METADATA_KEY, ModelSpec

OPSET = 17
PARITY_RTOL = 1e-4
# anomaly_map = unscaled map / (MAP_SCALE_FACTOR * median patch_distance of the normal validation images):
# a typical normal image peaks near 0.5, and 1 (the top of the service's heat map PNG) is twice that.
MAP_SCALE_FACTOR = 2.0
# Any number of crops per image: the runtime passes one when an image's crops are all alike (small images).
DYNAMIC_AXES = {"image": {0: "batch"}, "crops": {0: "batch", 1: "crops"}}


def scoring_model(
    run_dir: Path, cfg: Any, nets: Any, head: torch.nn.Module | None, *,
    images: np.ndarray | None = None, val: np.ndarray | None = None, patch_bank: int = PATCH_BANK_SIZE,
) -> ScoringModel:  # fmt: skip
    """The scoring graph of a run (before fusion is fitted): its memory bank and patch bank of training images,
    and the map scale fitted on its validation images. ``images`` and ``val``, when the caller has already
    loaded them, are the run's memory bank and validation images (RunDir.load_memory_bank, load_validation);
    ``patch_bank`` is the patch bank's size (a smaller bank is a cheaper, coarser anomaly map)."""
    model = ScoringModel(nets.G_ema, nets.D, nets.E, kappa=cfg.kappa, head=head).eval()
    bank_images = torch.from_numpy(RunDir(run_dir).load_memory_bank() if images is None else images)
    model.set_memory_bank(bank_images)
    model.set_patch_bank(bank_images, seed=cfg.seed, size=patch_bank)
    normal = torch.from_numpy(RunDir(run_dir).load_validation() if val is None else val)
    with torch.no_grad():
        peaks = torch.cat([model.patch_map(normal[i : i + 256]).flatten(1).amax(1) for i in range(0, len(normal), 256)])
    model.set_map_scale(MAP_SCALE_FACTOR * max(float(peaks.median()), 1e-6))
    return model


def graph_facts(model: ScoringModel) -> dict[str, Any]:
    """What the spec records of the graph's banks and map (the runtime sizes its calls from patch_bank_size)."""
    return {
        "knn_k": KNN_K,
        "knn_dims": int(model.knn_basis.shape[1]),
        "memory_bank_size": int(len(model.bank)),
        "patch_bank_size": int(len(model.patch_bank)),
        "map_scale": float(model.map_scale),
    }


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
            dynamic_axes={**{n: DYNAMIC_AXES[n] for n in inputs}, **{n: {0: "batch"} for n in names}},
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
