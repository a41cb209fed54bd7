"""Model commands: ``ganaudit models`` lists the detectors shipped inside the package; ``ganaudit info``
describes one detector file.

Runtime only (onnxruntime, no torch). Heavy imports happen when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..core.spec import describe_spec, input_text
from .common import friendly_errors, terminal_safe


def describe_model(name: str, path: Path, default: str) -> dict[str, Any]:
    """One shipped model as plain data: name, heads, input, thresholds, path (or the error that stops it loading)."""
    from ..core.errors import GanauditError
    from ..runtime.detector import Detector
    from ..core.spec import describe_spec

    row: dict[str, Any] = {"name": name, "default": name == default, "path": str(path)}
    try:
        d = describe_spec(Detector.load(path).spec)
    except GanauditError as e:
        return {**row, "error": str(e)}
    return {
        **row,
        "model_name": d["name"],
        **{k: d[k] for k in ("spec_hash", "heads", "input", "thresholds")},
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
        f"  input:      {input_text(i)} (fit={i['fit']})",
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
    from ..core.shipped import DEFAULT_MODEL, MODELS_DIR, shipped_models

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
    from ..runtime.detector import Detector

    spec = Detector.load(model).spec
    if json_out:
        typer.echo(json.dumps({**json.loads(spec.to_json()), "spec_hash": spec.spec_hash}, indent=2))
        return
    d = describe_spec(spec)
    prov = d["provenance"]
    crops = d["native_crops"]
    lines = [
        f"name:          {d['name']}",
        f"spec hash:     {d['spec_hash']} (format version {d['format_version']})",
        f"input:         {input_text(d['input'])}, fit={d['input']['fit']}"
        + (f"; generated head: {crops} native-scale crops per image" if crops else "")
        + (f", {crops} more of a large image downscaled to {d['input']['size']} px" if crops and d["scale_view"] else ""),
        f"heads:         {', '.join(d['heads'])}",
        f"outputs:       {', '.join(d['outputs'])}",
        f"anomaly score: {d['scoring']}",
    ]
    for head, t in d["thresholds"].items():
        lines.append(f"threshold:     {head} > {t['value']:.6g} (FPR {t['fpr']} on {t['n_val']} normal validation images)")
    lines.append(f"domain gate:   {d['domain_gate']}")
    data = prov.get("data", {})
    lines.append(f"trained on:    {data.get('source', '?')} ({prov.get('n_train', '?')} images, fingerprint {prov.get('fingerprint', '?')})")
    lines.append(f"exported:      {prov.get('exported', '?')} by ganaudit {prov.get('export_ganaudit_version', '?')}")
    if prov.get("audit"):
        from ..audit.after_training import summary

        lines.append(f"audit:         {summary(prov['audit'])} ({prov['audit']['n_generated']} samples, after training)")
    typer.echo("\n".join(terminal_safe(line) for line in lines))  # the spec's text comes with the file


def register_info(app: typer.Typer) -> None:
    """Add the info command to the CLI."""
    app.command("info")(friendly_errors(info))


def register(app: typer.Typer) -> None:
    """Add the models command to the CLI."""
    app.command("models")(friendly_errors(models_cmd))
