"""Model commands: ``ganaudit models`` lists the detectors shipped inside the package; ``ganaudit info``
describes one detector file.

Runtime only (onnxruntime, no torch). Heavy imports happen when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import friendly_errors


def describe_model(name: str, path: Path, default: str) -> dict[str, Any]:
    """One shipped model as plain data: name, heads, input, thresholds, path (or the error that stops it loading)."""
    from ..errors import GanauditError
    from ..runtime import Detector

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
    from ..models import DEFAULT_MODEL, MODELS_DIR, shipped_models

    rows = [describe_model(name, path, DEFAULT_MODEL) for name, path in shipped_models().items()]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no shipped models in {MODELS_DIR}; pass --model FILE to scan and serve", err=True)
        return
    typer.echo("\n\n".join(_text(r) for r in rows))


def info(
    model: Annotated[Path, typer.Argument(help="An exported .onnx detector.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole spec as JSON.")] = False,
) -> None:
    """Print a detector's spec: preprocessing, heads, thresholds and provenance."""
    import json

    from ..runtime import Detector

    det = Detector.load(model)
    spec = det.spec
    if json_out:
        typer.echo(json.dumps({**json.loads(spec.to_json()), "spec_hash": spec.spec_hash}, indent=2))
        return
    p = spec.preprocess
    prov = spec.provenance
    lines = [
        f"name:          {spec.name}",
        f"spec hash:     {spec.spec_hash} (format version {spec.format_version})",
        f"input:         {p.channels} x {p.size} x {p.size}, fit={p.fit}"
        + (f"; generated head: {p.native_crops} native-scale crops per image" if "crops" in spec.inputs else ""),
        f"heads:         {', '.join(spec.heads)}",
        f"outputs:       {', '.join(spec.outputs)}",
        f"anomaly score: {_describe_scoring(spec.scoring)}",
    ]
    for head, t in spec.thresholds.items():
        lines.append(f"threshold:     {head} > {t.value:.6g} (FPR {t.fpr} on {t.n_val} normal validation images)")
    data = prov.get("data", {})
    lines.append(f"trained on:    {data.get('source', '?')} ({prov.get('n_train', '?')} images, fingerprint {prov.get('fingerprint', '?')})")
    lines.append(f"exported:      {prov.get('exported', '?')} by ganaudit {prov.get('export_ganaudit_version', '?')}")
    if prov.get("audit"):
        from ..audit.after_training import summary

        lines.append(f"audit:         {summary(prov['audit'])} ({prov['audit']['n_generated']} samples, after training)")
    typer.echo("\n".join(lines))


def _describe_scoring(scoring: dict) -> str:
    method = scoring.get("method", "izif")
    if method != "fused":
        return f"{method} (f-AnoGAN's pixel + kappa x feature residual)"
    if "layout" not in scoring:
        return "fused (exported before layouts)"
    shown = {"log": "log {}", "negate": "-{}"}
    terms = zip(scoring["components"], scoring["transforms"], scoring["weight"])
    weighted = [f"{w:g} z({shown.get(t, '{}').format(c)})" for c, t, w in terms if w]
    return f"fused, {scoring['layout']} layout (alignment {scoring['alignment']:.3g}): " + " + ".join(weighted)


def register_info(app: typer.Typer) -> None:
    """Add the info command to the CLI."""
    app.command("info")(friendly_errors(info))


def register(app: typer.Typer) -> None:
    """Add the models command to the CLI."""
    app.command("models")(friendly_errors(models_cmd))
