"""Helpers shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def resolve_model_or_exit(model: str | None) -> Path:
    """The detector to benchmark (a path, a shipped model's name, or None for the default), or exit with why."""
    from ganaudit.errors import GanauditError
    from ganaudit.models import resolve_model

    try:
        path = resolve_model(model)
    except GanauditError as e:
        sys.exit(f"error: {e}\n(this benchmark needs a detector: pass --model FILE.onnx, e.g. one made with "
                 "`ganaudit train ... && ganaudit export ...`)")  # fmt: skip
    if not path.is_file():
        sys.exit(f"error: model file not found: {path}")
    return path
