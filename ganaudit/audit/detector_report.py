"""Writes ``audit.json`` and the self-contained ``audit.html`` of ``ganaudit audit detector``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write
from . import svg
from .detector import METRICS
from .detector_run import summary_line
from .page import e, fmt, kv_table, page


def _group_table(r: dict[str, Any]) -> str:
    head = "<tr><th>group</th><th>n</th><th>positives</th>" + "".join(f"<th>{m}</th>" for m in METRICS) + "</tr>"
    rows = []
    for g, t in r["groups"].items():
        cells = "".join(f"<td class='num'>{fmt(t[m]['value'])}<div class='muted'>[{fmt(t[m]['ci'][0])}, "
                        f"{fmt(t[m]['ci'][1])}]</div></td>" for m in METRICS)  # fmt: skip
        rows.append(f"<tr><td>{e(g)}</td><td class='num'>{t['n']}</td><td class='num'>{t['n_positive']}</td>{cells}</tr>")
    b = r["between_groups"]
    rows.append("<tr><td>difference (max - min)</td><td></td><td></td>" + "".join(f"<td class='num'>{fmt(b[m]['difference'])}</td>" for m in METRICS) + "</tr>")
    rows.append("<tr><td>ratio (min / max)</td><td></td><td></td>" + "".join(f"<td class='num'>{fmt(b[m]['ratio'])}</td>" for m in METRICS) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table><p class='muted'>95 % percentile-bootstrap intervals in brackets.</p>"


def _calibration(r: dict[str, Any]) -> str:
    cal = r["calibration"]
    if cal is None:
        return "<p class='muted'>No calibrated probability for this head.</p>"
    bins = [b for b in cal["bins"]]
    chart = svg.reliability([b["mean_probability"] or 0 for b in bins], [b["positive_rate"] or 0 for b in bins],
                            [b["count"] for b in bins], title=f"reliability (ECE {cal['ece']:.3f})")  # fmt: skip
    rows = "".join(f"<tr><td>{b['lo']:.1f}-{b['hi']:.1f}</td><td class='num'>{b['count']}</td><td class='num'>"
                   f"{fmt(b['mean_probability'])}</td><td class='num'>{fmt(b['positive_rate'])}</td></tr>" for b in bins)  # fmt: skip
    table = "<table><tr><th>bin</th><th>count</th><th>mean probability</th><th>positive rate</th></tr>" + rows + "</table>"
    return f"<div class='row'>{chart}{table}</div>"


def render(result: dict[str, Any]) -> str:
    sections = [("Inputs", kv_table([("model", result["model"]), ("truth", result["truth"]),
                                      ("group column", result["group_column"]),
                                      *((k, v) for k, v in result["counts"].items())]))]  # fmt: skip
    for h, r in result["heads"].items():
        f = r["fpr_at_threshold"]
        fpr = kv_table([("target FPR (fitted)", f["target"]), ("realised FPR on normal images", f["realised"]),
                        ("95 % interval (Wilson)", f"[{fmt(f['ci'][0])}, {fmt(f['ci'][1])}]"), ("normal images", f["n_normal"])])  # fmt: skip
        sections.append((f"{h} head: per group", _group_table(r) + fpr))
        sections.append((f"{h} head: calibration", _calibration(r)))
    return page("ganaudit detector audit", summary_line(result), sections)


def write_detector_report(out: str | Path, result: dict[str, Any]) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "audit.json", "html": out / "audit.html"}
    atomic_write(paths["json"], json.dumps(result, indent=2, ensure_ascii=False))
    atomic_write(paths["html"], render(result))
    return paths
