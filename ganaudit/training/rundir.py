"""The run directory: every file a training run keeps, named once here, with the loaders and savers that the
trainer, export, the audit and the benchmarks share.

Layout::

    RUN_DIR/config.json            TrainConfig
    RUN_DIR/run.json               data provenance (source, fingerprint, counts, versions)
    RUN_DIR/validation.npy         held-out normal images, preprocessed (used by export)
    RUN_DIR/validation_native.npy  their native-scale crops, uint8 [N, K, S, S, C] (generated head only)
    RUN_DIR/memory_bank.npy        up to MEMORY_BANK_MAX training images, preprocessed, float16 (export's kNN score)
    RUN_DIR/snapshots/G_*.pt       generator snapshots from the GAN phase (generated head only)
    RUN_DIR/aux_pool/*.npy         cached samples of the auxiliary generators (--head-aux)
    RUN_DIR/metrics.jsonl          one JSON line per logged step
    RUN_DIR/samples/step_*.png     EMA-generator sample grids
    RUN_DIR/checkpoints/last.pt    state_dicts + optimiser + RNG state (weights_only loadable)
    RUN_DIR/audit/audit.json       the audit `ganaudit train` ends with (+ audit.html; ganaudit.audit.after_training)

No torch here (the audit reads runs without it): the checkpoint's bytes are made and read by torch in
``ganaudit.training.train.save_checkpoint`` / ``load_checkpoint``, at :attr:`RunDir.checkpoint`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic import atomic_write
from ..core.errors import ConfigError, ModelFormatError
from ..core.npy import load_float_images, load_uint8_crops
from ..core.spec import VALID_SIZES

CONFIG = "config.json"
RUN_INFO = "run.json"
VALIDATION = "validation.npy"
VALIDATION_NATIVE = "validation_native.npy"
MEMORY_BANK = "memory_bank.npy"
MEMORY_BANK_MAX = 4096
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoints/last.pt"
SNAPSHOTS = "snapshots"
SAMPLES = "samples"
AUX_POOL = "aux_pool"
AUDIT_DIR = "audit"
AUDIT_JSON = f"{AUDIT_DIR}/audit.json"


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write one array atomically as .npy."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write(path, buf.getvalue())


class RunDir:
    """The files of one training run, by role. ``RunDir(path).validation`` is the path; ``load_*`` and ``write_*``
    read and write them (atomically), with the errors a user can act on."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is one of the run's own files or inside one of its folders (an output written there
        would destroy the run: `export -o RUN/checkpoints/last.pt` did)."""
        target = Path(os.path.abspath(path))
        root = Path(os.path.abspath(self.root))
        if target.parent == root:
            return target.name in (CONFIG, RUN_INFO, VALIDATION, VALIDATION_NATIVE, MEMORY_BANK, METRICS)
        folders = (Path(CHECKPOINT).parent.name, SNAPSHOTS, SAMPLES, AUX_POOL, AUDIT_DIR)
        return any(target.is_relative_to(root / folder) for folder in folders)

    def refuse_output(self, path: str | os.PathLike) -> None:
        """ConfigError when an output at ``path`` would overwrite one of the run's own files."""
        if self.owns(path):
            raise ConfigError(f"{path} is one of {self.root}'s own files: writing it would destroy the run; write elsewhere")

    # --- paths ------------------------------------------------------------------------------------------
    config = property(lambda self: self.root / CONFIG)
    run_info = property(lambda self: self.root / RUN_INFO)
    validation = property(lambda self: self.root / VALIDATION)
    validation_native = property(lambda self: self.root / VALIDATION_NATIVE)
    memory_bank = property(lambda self: self.root / MEMORY_BANK)
    metrics = property(lambda self: self.root / METRICS)
    checkpoint = property(lambda self: self.root / CHECKPOINT)
    snapshots_dir = property(lambda self: self.root / SNAPSHOTS)
    aux_pool_dir = property(lambda self: self.root / AUX_POOL)
    audit_dir = property(lambda self: self.root / AUDIT_DIR)
    audit_json = property(lambda self: self.root / AUDIT_JSON)

    def snapshot(self, step: int) -> Path:
        return self.snapshots_dir / f"G_{step:06d}.pt"

    def snapshots(self) -> list[Path]:
        """The generator snapshots, oldest first."""
        return sorted(self.snapshots_dir.glob("G_*.pt"))

    def sample_grid(self, step: int) -> Path:
        return self.root / SAMPLES / f"step_{step:06d}.png"

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def is_run(self) -> bool:
        """A training run: its config and a checkpoint are there."""
        return self.root.is_dir() and self.config.is_file() and self.has_checkpoint()

    # --- json -------------------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        if not self.config.is_file():
            raise ModelFormatError(f"{self.root} is not a ganaudit run directory (no {CONFIG})")
        return self._json_object(self.config)

    def image_size(self) -> int:
        """The run's image size from config.json, checked (the audit reads runs without TrainConfig)."""
        size = self.read_config().get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size not in VALID_SIZES:
            raise ModelFormatError(f"{self.config}: size must be one of {', '.join(map(str, VALID_SIZES))}, got {size!r}")
        return size

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.config, json.dumps(config, indent=2))

    def read_info(self) -> dict[str, Any]:
        """run.json (data provenance); {} when a run has none."""
        return self._json_object(self.run_info) if self.run_info.is_file() else {}

    def _json_object(self, path: Path) -> dict[str, Any]:
        """A JSON object file of the run; ModelFormatError naming it when it is unreadable or not an object."""
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise ModelFormatError(f"{path} is unreadable ({e})") from None
        if not isinstance(value, dict):
            raise ModelFormatError(f"{path} is damaged: not a JSON object")
        return value

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write(self.run_info, json.dumps(info, indent=2))

    def audit_headline(self) -> dict[str, Any] | None:
        """The headline figures of the audit training ended with, if there is one."""
        return self._json_object(self.audit_json).get("headline") if self.audit_json.is_file() else None

    # --- arrays -----------------------------------------------------------------------------------------
    def load_validation(self) -> np.ndarray:
        """The held-out normal images (float32)."""
        if not self.validation.is_file():
            raise ModelFormatError(f"{self.root} has no {VALIDATION}: it is not a complete ganaudit run directory")
        val = self._images(self.validation)
        if len(val) == 0:
            raise ConfigError(f"{self.root} has no held-out validation images: retrain with --val-fraction > 0")
        return val

    def load_validation_native(self, crops: Collection[int], n: int) -> np.ndarray:
        """The held-out images' head crops, uint8 [n, K, S, S, C] with K in ``crops``, one row for each of the
        ``n`` validation images, or a ModelFormatError naming the file (a wrong one would miscalibrate the head
        silently)."""
        if not self.validation_native.is_file():
            raise ModelFormatError(f"{self.root} has no {VALIDATION_NATIVE}: retrain it with the generated head")
        cfg = self.read_config()
        try:
            return load_uint8_crops(self.validation_native, n, crops, cfg.get("size"), cfg.get("channels"))
        except ValueError as e:
            raise ModelFormatError(f"{self.validation_native} is damaged: {e}") from None

    def load_memory_bank(self) -> np.ndarray:
        """The run's sample of training images (float32), from which export builds the memory and patch banks."""
        if not self.memory_bank.is_file():
            raise ModelFormatError(
                f"{self.root} has no {MEMORY_BANK} (it was trained by an older ganaudit): add it by running the same "
                "`ganaudit train DATA ... --out RUN --resume` once (no training is repeated), then export again"
            )
        bank = self._images(self.memory_bank)
        if len(bank) == 0:
            raise ModelFormatError(f"{self.memory_bank} holds no images: the run directory is damaged")
        return bank

    def _images(self, path: Path) -> np.ndarray:
        """A run's preprocessed images (float32 [N, C, S, S] of its config's channels and size, finite), or a
        ModelFormatError naming the file."""
        cfg = self.read_config()
        try:
            return load_float_images(path, {cfg.get("channels")}, cfg.get("size"))
        except ValueError as e:
            raise ModelFormatError(f"{path} is damaged: {e} (the run's config.json)") from None

    def write_validation(self, images: np.ndarray, native: np.ndarray | None) -> None:
        save_npy(self.validation, images)
        if native is not None:
            save_npy(self.validation_native, native)

    def write_memory_bank(self, images: np.ndarray, seed: int) -> None:
        """Save a seeded sample of at most MEMORY_BANK_MAX training images (float16): export turns them into the
        memory bank of the kNN score (their D features)."""
        pick = np.sort(np.random.default_rng([seed, 11]).permutation(len(images))[:MEMORY_BANK_MAX])
        save_npy(self.memory_bank, images[pick].astype(np.float16))
