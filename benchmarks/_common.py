"""Helpers shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ganaudit.training.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def resolve_model_or_exit(model: str | None) -> Path:
    """The detector to benchmark (a path, a shipped model's name, or None for the default), or exit with why."""
    from ganaudit.core.errors import GanauditError
    from ganaudit.core.shipped import resolve_model

    try:
        path = resolve_model(model)
    except GanauditError as e:
        sys.exit(f"error: {e}\n(this benchmark needs a detector: pass --model FILE.onnx, e.g. one made with "
                 "`ganaudit train ... && ganaudit export ...`)")  # fmt: skip
    if not path.is_file():
        sys.exit(f"error: model file not found: {path}")
    return path


def train_and_export(train_args: list[str], run: Path, model: Path, name: str) -> tuple[Path, float]:
    """`ganaudit train TRAIN_ARGS --out RUN` (resumed when RUN has a checkpoint), then `ganaudit export` to
    MODEL, as a user runs them; nothing is done when MODEL exists. Returns MODEL and the seconds spent."""
    start = time.perf_counter()
    if not model.exists():
        resume = ["--resume"] if RunDir(run).has_checkpoint() else []
        subprocess.run(["ganaudit", "train", *train_args, "--out", str(run), *resume], check=True)
        subprocess.run(["ganaudit", "export", str(run), "-o", str(model), "--name", name], check=True)
    return model, time.perf_counter() - start
