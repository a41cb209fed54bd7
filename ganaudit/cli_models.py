"""``ganaudit models``: list the detectors shipped inside the package.

Runtime only (onnxruntime, no torch). Heavy imports happen when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def describe_model(name: str, path: Path, default: str) -> dict[str, Any]:
    """One shipped model as plain data: name, heads, input, thresholds, path (or the error that stops it loading)."""
    from .errors import GanauditError
    from .runtime import Detector

    row: dict[str, Any] = {"name": name, "default": name == default, "path": str(path)}
    try:
        spec = Detector.load(path).spec
    except GanauditError as e:
        return {**row, "error": str(e)}
    p = spec.preprocess
    return {
        **row,
        "model_name": spec.name,
        "spec_hash": spec.spec_hash,
        "heads": list(spec.heads),
        "input": {"channels": p.channels, "size": p.size, "fit": p.fit},
        "thresholds": {
            head: {"value": t.value, "fpr": t.fpr, "n_val": t.n_val} for head, t in spec.thresholds.items()
        },
        "size_bytes": path.stat().st_size,
    }


def _text(row: dict[str, Any]) -> str:
    title = f"{row['name']}{' (default)' if row['default'] else ''}"
    if "error" in row:
        return f"{title}\n  error:      {row['error']}\n  path:       {row['path']}"
    i = row["input"]
    lines = [
        title,
        f"  heads:      {', '.join(row['heads'])}",
        f"  input:      {i['channels']} x {i['size']} x {i['size']} (fit={i['fit']})",
    ]
    for head, t in row["thresholds"].items():
        fpr = "" if t["fpr"] is None else f" (FPR {t['fpr']} on {t['n_val']} normal validation images)"
        lines.append(f"  threshold:  {head} > {t['value']:.6g}{fpr}")
    lines.append(f"  spec hash:  {row['spec_hash']}")
    lines.append(f"  path:       {row['path']} ({row['size_bytes'] / 1e6:.1f} MB)")
    return "\n".join(lines)


def models_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the detectors shipped with ganaudit (usable by name with --model; the default needs no --model)."""
    from .models import DEFAULT_MODEL, MODELS_DIR, shipped_models

    rows = [describe_model(name, path, DEFAULT_MODEL) for name, path in shipped_models().items()]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no shipped models in {MODELS_DIR}; pass --model FILE to scan and serve", err=True)
        return
    typer.echo("\n\n".join(_text(r) for r in rows))


def register(app: typer.Typer) -> None:
    """Add the models command to the CLI."""
    from .cli import friendly_errors  # imported here: cli.py imports this module at its end

    app.command("models")(friendly_errors(models_cmd))
