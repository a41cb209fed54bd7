"""Reading the torch files of a run folder (checkpoint, generator snapshots) as untrusted input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import ModelFormatError


def load_tensors(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``, its failures as one ModelFormatError line. A file torch refuses to
    unpickle is reported as such, without torch's advice to retry with ``weights_only=False``: run folders can come
    from others, and that retry would run whatever code the file holds."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        text = str(e).strip()
        if "weights only load failed" in text.lower():
            reason = "it holds objects other than tensors, which ganaudit never unpickles"
        else:
            reason = f"{type(e).__name__}: {text.splitlines()[0] if text else 'no detail'}"
        raise ModelFormatError(f"{what} {path} is unreadable ({reason})") from None
