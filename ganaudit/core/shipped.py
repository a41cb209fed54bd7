"""Detectors shipped inside the package (``ganaudit/models/*.onnx``)."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL = "digits"


def shipped_models() -> dict[str, Path]:
    """Name -> path of every shipped detector."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.onnx"))}


def resolve_model(model: str | Path | None) -> Path:
    """A model argument as a path: an existing file, a shipped model's name, or None for the default."""
    models = shipped_models()
    if model is None:
        if DEFAULT_MODEL not in models:
            raise ConfigError("no shipped default model is installed: pass --model FILE (see `ganaudit export`)")
        return models[DEFAULT_MODEL]
    if str(model) in models and not Path(model).exists():
        return models[str(model)]
    return Path(model)
