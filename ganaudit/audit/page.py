"""The shell shared by the audit HTML reports: one self-contained page (inline CSS, images as data URIs)."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from ..core.grid import make_grid
from ..runtime.report import png_data_uri

CSS = """
body{margin:0;font:14px/1.45 -apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1f2933;background:#f6f8fa}
header{background:#111827;color:#f9fafb;padding:20px 32px} header h1{margin:0;font-size:21px}
header .sub{color:#cbd5e1;margin-top:6px;font-size:13px}
main{padding:20px 32px;max-width:1300px;margin:0 auto}
section{background:#fff;border:1px solid #e3e8ee;border-radius:10px;padding:16px 20px;margin-bottom:18px}
h2{font-size:16px;margin:0 0 10px} h3{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse} th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #e3e8ee}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.trip{color:#b91c1c;font-weight:600} .pass{color:#15803d;font-weight:600} .nj{color:#66788a}
.muted{color:#66788a;font-size:12.5px} .chart{width:100%;max-width:780px;height:auto;display:block;margin:8px 0}
img.px{image-rendering:pixelated;border:1px solid #e3e8ee} .row{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-start}
.pair{text-align:center;font-size:11px;color:#66788a}
"""


def e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:.4g}"
    return e(x)


def grid_img(images: np.ndarray, scale: int = 2, title: str = "") -> str:
    """NCHW [-1, 1] images as one inline PNG grid, shown ``scale`` times larger with crisp pixels."""
    if len(images) == 0:
        return '<span class="muted">none</span>'
    g = make_grid(images)
    h, w = g.shape[:2]
    if g.shape[2] == 1:
        g = g[:, :, 0]
    return f'<img class="px" src="{png_data_uri(g)}" width="{w * scale}" height="{h * scale}" alt="{e(title)}" title="{e(title)}">'


def kv_table(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td class='num'>{fmt(v)}</td></tr>" for k, v in rows) + "</table>"


def verdict_table(verdicts: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, v in verdicts.items():
        state = {True: ("trip", "FLAGGED"), False: ("pass", "ok"), None: ("nj", "not judged")}[v["tripped"]]
        if v.get("superseded_by"):
            state = ("nj", f"explained by {v['superseded_by']}")
        values = ", ".join(f"{k} {fmt(x)}" for k, x in v["values"].items())
        rows.append(f"<tr><td>{e(name)}</td><td class='{state[0]}'>{state[1]}</td><td><code>{e(v['rule'])}</code>"
                    f"<div class='muted'>{e(v['reason'])}</div></td><td>{e(values)}</td></tr>")  # fmt: skip
    return "<table><tr><th>verdict</th><th>state</th><th>rule</th><th>values</th></tr>" + "".join(rows) + "</table>"


def page(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<section><h2>{e(h)}</h2>{content}</section>" for h, content in sections)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{e(title)}</h1><div class='sub'>{e(subtitle)}</div>"
            f"</header><main>{body}</main></body></html>")  # fmt: skip
