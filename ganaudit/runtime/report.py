"""Scan outputs: streaming CSV / JSONL row writers, ``summary.json`` and a self-contained ``report.html``.

The writers append whole batches with one ``write`` and flush after each, so a scan that is killed
leaves CSV and JSONL files whose complete lines all parse. The HTML report is built once at the end
from small, bounded inputs (score arrays for the histograms, the top-K flagged rows with their
thumbnails, the first errors), with every image inlined as a base64 PNG data URI and every file name
HTML-escaped.

Runtime layer: numpy, OpenCV and the standard library only (never torch).
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from ..core.atomic import atomic_write, open_plain
from ..core.grid import encode_png

__all__ = [
    "COLUMNS",
    "EXTRA_COLUMNS",
    "ROW_FIELDS",
    "CsvWriter",
    "JsonlWriter",
    "FlaggedImage",
    "ReportData",
    "csv_from_jsonl",
    "jsonl_lines",
    "read_jsonl",
    "render_html",
    "svg_histogram",
    "make_thumbnail",
    "png_data_uri",
    "heat_overlay",
    "write_output",
    "write_summary",
]

# The row contract (issue 4), then the extras that --resume needs.
COLUMNS = [
    "path", "status", "error", "width", "height", "anomaly_score", "anomaly_percentile", "anomaly_flag",
    "generated_score", "generated_flag", "flagged", "sha256", "in_domain", "domain_score", "reasons",
]  # fmt: skip
EXTRA_COLUMNS = ["size", "mtime"]
ROW_FIELDS = COLUMNS + EXTRA_COLUMNS
_NUMBER_FIELDS = ("anomaly_score", "anomaly_percentile", "generated_score", "domain_score", "mtime")
_COUNT_FIELDS = ("width", "height", "size")
_FLAG_FIELDS = ("anomaly_flag", "generated_flag", "flagged", "in_domain")
_TEXT_FIELDS = ("error", "sha256")

THUMB_SIZE = 112
COLORMAP = cv2.COLORMAP_INFERNO
# CSS stops that match COLORMAP_INFERNO, for the legend.
_INFERNO_CSS = "#000004, #320a5e, #781c6d, #bb3754, #ed6925, #fbb61a, #fcffa4"


# --------------------------------------------------------------------------- row writers


# A spreadsheet runs a cell that begins with one of these as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _neutral(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ``'`` before a formula character (CSV only)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_cells(row: dict[str, Any]) -> list[Any]:
    """One row's CSV cells: None -> empty, booleans -> true/false, floats at full precision, text cells
    that a spreadsheet would run as a formula prefixed with ``'``."""
    cells: list[Any] = []
    for key in ROW_FIELDS:
        value = row.get(key)
        kind = type(value)
        if value is None:
            cells.append("")
        elif kind is bool:
            cells.append("true" if value else "false")
        elif kind is float:
            cells.append(repr(value))
        elif kind is list:  # reasons: one cell, sentences joined
            cells.append(_neutral(" ".join(map(str, value))))
        elif kind is str:
            cells.append(_neutral(value))
        else:
            cells.append(value)
    return cells


def _csv_text(rows: Iterable[dict[str, Any]], header: bool = False) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")  # RFC 4180; with "\n" a field holding only "\r" went unquoted
    if header:
        w.writerow(ROW_FIELDS)
    w.writerows(map(_csv_cells, rows))
    return buf.getvalue()


class CsvWriter:
    """Appends rows to ``results.csv``; the header is written when the file is new or empty."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False) -> None:
        self.path = Path(path)
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        self._f = open_plain(self.path, append=not fresh, text=True)
        if fresh:
            self._f.write(_csv_text((), header=True))
            self._f.flush()

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self._f.write(_csv_text(rows))  # one write per batch: a kill leaves whole lines
            self._f.flush()

    def close(self) -> None:
        self._f.close()


def _jsonl_line(row: dict[str, Any]) -> bytes:
    return (json.dumps({k: row.get(k) for k in ROW_FIELDS}, ensure_ascii=False, allow_nan=False) + "\n").encode()


class JsonlWriter:
    """Appends rows to ``results.jsonl`` (one JSON object per line) and returns each line's byte offset."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False) -> None:
        self.path = Path(path)
        self._f: BinaryIO = open_plain(self.path, append=append)
        self._f.seek(0, os.SEEK_END)

    def write(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Write the rows; return the byte offset at which each one starts."""
        if not rows:
            return []
        offsets, chunks, pos = [], [], self._f.tell()
        for row in rows:
            line = _jsonl_line(row)
            offsets.append(pos)
            chunks.append(line)
            pos += len(line)
        self._f.write(b"".join(chunks))
        self._f.flush()
        return offsets

    def close(self) -> None:
        self._f.close()


def jsonl_lines(f: BinaryIO) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """The one reader of results.jsonl: ``(start, end, row)`` byte offsets and row of each complete line of an
    open file, from its start; ``row`` is None for a line that is not a :func:`well_formed` row. A last
    line cut short by a killed scan (no newline) ends the reading."""
    pos = 0
    for line in f:
        start, pos = pos, pos + len(line)
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        yield start, pos, row if well_formed(row) else None


def well_formed(row: Any) -> bool:
    """Whether a row read back from results.jsonl has the row contract's types (a hand-edited or hostile file
    may hold anything): a path, a status, numbers, flags and texts where they belong, or null."""
    if not isinstance(row, dict) or not isinstance(row.get("path"), str) or row.get("status") not in ("ok", "error"):
        return False

    def all_are(names: Sequence[str], ok: Callable[[Any], bool]) -> bool:
        return all(row.get(k) is None or ok(row[k]) for k in names)

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    reasons = row.get("reasons")
    return (
        all_are(_NUMBER_FIELDS, number)
        and all_are(_COUNT_FIELDS, lambda x: number(x) and isinstance(x, int))
        and all_are(_FLAG_FIELDS, lambda x: isinstance(x, bool))
        and all_are(_TEXT_FIELDS, lambda x: isinstance(x, str))
        and (reasons is None or (isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)))
    )


def read_jsonl(path: str | os.PathLike) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield ``(byte offset, row)`` for each complete, parseable line of a results.jsonl file.

    A last line cut short by a killed scan (no newline, or not valid JSON) is left out.
    """
    with open(path, "rb") as f:
        for start, _, row in jsonl_lines(f):
            if row is not None:
                yield start, row


def csv_from_jsonl(jsonl: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    """(Re)write results.csv from results.jsonl, streaming, atomically."""
    tmp = Path(f"{csv_path}.tmp")
    with open_plain(tmp, text=True) as out:
        out.write(_csv_text((), header=True))
        batch: list[dict[str, Any]] = []
        for _, row in read_jsonl(jsonl):
            batch.append(row)
            if len(batch) >= 1024:
                out.write(_csv_text(batch))
                batch.clear()
        out.write(_csv_text(batch))
    os.replace(tmp, csv_path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_output(path: str | os.PathLike, text: str) -> None:
    """Write a report file atomically, readable like any file the user creates (not mkstemp's 0600)."""
    target = atomic_write(path, text)
    try:
        os.chmod(target, 0o666 & ~_umask())
    except OSError:
        pass


def write_summary(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    write_output(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- images


def _fit_box(width: int, height: int, box: int) -> tuple[int, int]:
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_thumbnail(image: np.ndarray, box: int = THUMB_SIZE) -> np.ndarray:
    """A decoded image (uint8 HxWxC, RGB or gray) shrunk to fit ``box``; gray stays one channel.

    Smaller images keep their size: the report enlarges them on screen with crisp pixels, which keeps
    the embedded PNGs small.
    """
    img = image if image.ndim == 3 else image[:, :, None]
    h, w = img.shape[:2]
    if max(h, w) > box:
        tw, th = _fit_box(w, h, box)
        img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
        if img.ndim == 2:
            img = img[:, :, None]
    return np.ascontiguousarray(img)


def heat_overlay(
    thumb: np.ndarray, anomaly_map: np.ndarray, *, fit: str = "stretch", vmin: float = 0.0, vmax: float = 1.0
) -> np.ndarray:
    """The anomaly map blended over a thumbnail (gray or RGB uint8); returns RGB uint8.

    The map (model resolution, square) is upsampled onto the part of the image the model saw (all of
    it for ``stretch``, the centred square for ``center_crop``), scaled from ``[vmin, vmax]`` to [0, 1]
    (one range for a whole report, so colors compare between images), colored with the inferno colormap
    and blended over the darkened grayscale thumbnail, more opaque where the map is hotter.
    """
    th, tw = thumb.shape[:2]
    if fit == "center_crop" and th != tw:
        side = min(th, tw)
        top, left = (th - side) // 2, (tw - side) // 2
        region: tuple[slice, slice] = (slice(top, top + side), slice(left, left + side))
        rw = rh = side
    else:
        region, rw, rh = (slice(0, th), slice(0, tw)), tw, th
    up = cv2.resize(np.asarray(anomaly_map, np.float32), (rw, rh), interpolation=cv2.INTER_LINEAR)
    norm = np.clip((up - vmin) / max(float(vmax) - float(vmin), 1e-12), 0.0, 1.0)
    heat = _colormap_lut()[(norm * 255).astype(np.uint8)]
    if thumb.ndim == 3 and thumb.shape[2] == 3:
        gray = cv2.cvtColor(np.ascontiguousarray(thumb), cv2.COLOR_RGB2GRAY)
    else:
        gray = thumb.reshape(th, tw)
    gray = gray.astype(np.float32) * np.float32(0.8)
    out = cv2.merge([gray, gray, gray])
    alpha = (np.float32(0.35) + np.float32(0.55) * norm)[:, :, None]
    out[region] = (1 - alpha) * out[region] + alpha * heat
    return np.clip(out, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _colormap_lut() -> np.ndarray:
    """COLORMAP as a 256 x 3 float32 RGB table (applyColorMap rebuilds its table on every call)."""
    ramp = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), COLORMAP)
    return ramp[:, 0, ::-1].astype(np.float32)


def png_data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


# --------------------------------------------------------------------------- histograms


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def svg_histogram(
    values: np.ndarray,
    threshold: float | None,
    *,
    xlabel: str,
    bins: int = 40,
    width: int = 560,
    height: int = 220,
    bounds: tuple[float, float] | None = None,
) -> str:
    """An inline SVG histogram, bars above the threshold in red, the threshold as a dashed line.

    ``bounds`` fixes the x range (e.g. (0, 1) for probabilities); by default it spans the values and
    the threshold.
    """
    # Long by its drawing: axes, bars, threshold and labels share one coordinate system, kept in one place.
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return '<p class="muted">No scores to plot.</p>'
    thr = threshold if threshold is not None and math.isfinite(threshold) else None
    lo, hi = float(v.min()), float(v.max())
    if thr is not None:
        lo, hi = min(lo, thr), max(hi, thr)
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    lo, hi = lo - span * 0.02, hi + span * 0.02
    if bounds is not None:
        lo, hi = min(bounds[0], float(v.min())), max(bounds[1], float(v.max()))
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    # Per bin, the part above the threshold (flagged) is drawn in red on top of the rest, so a bin that
    # straddles the threshold shows both parts.
    above = np.histogram(v[v > thr], bins=edges)[0] if thr is not None else np.zeros_like(counts)
    ml, mr, mt, mb = 44, 12, 26, 40
    pw, ph = width - ml - mr, height - mt - mb
    top = max(1, int(counts.max()))

    def x_of(val: float) -> float:
        return ml + (val - lo) / (hi - lo) * pw

    parts = [
        f'<svg class="hist" viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" class="axis"/>',
        f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" class="axis"/>',
    ]
    bw = pw / bins
    for i, c in enumerate(counts):
        if c == 0:
            continue
        n_hot = int(above[i])
        title = f"{_fmt(edges[i])} to {_fmt(edges[i + 1])}: {int(c)}" + (f" ({n_hot} above the threshold)" if n_hot else "")
        x, w = f"{ml + i * bw + 0.5:.1f}", f"{max(bw - 1, 0.5):.1f}"
        base = mt + ph
        for cls, n in (("bar", int(c) - n_hot), ("bar hot", n_hot)):  # stacked: below, then above the threshold
            if n == 0:
                continue
            bh = n / top * ph
            parts.append(
                f'<rect class="{cls}" x="{x}" y="{base - bh:.1f}" width="{w}" height="{bh:.1f}"><title>{title}</title></rect>'
            )
            base -= bh
    for k in range(5):
        val = lo + (hi - lo) * k / 4
        x = x_of(val)
        parts.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" class="axis"/>')
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 16}" class="tick" text-anchor="middle">{_fmt(val, 3)}</text>')
    for count in sorted({0, top // 2, top}):
        y = mt + ph - count / top * ph
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{count}</text>')
    parts.append(
        f'<text x="{ml + pw / 2:.1f}" y="{height - 4}" class="label" text-anchor="middle">{html.escape(xlabel)}</text>'
    )
    if thr is not None:
        x = x_of(thr)
        anchor, dx = ("end", -5) if x > ml + pw * 0.7 else ("start", 5)
        parts.append(f'<line x1="{x:.1f}" y1="{mt - 12}" x2="{x:.1f}" y2="{mt + ph}" class="thr"/>')
        parts.append(
            f'<text x="{x + dx:.1f}" y="{mt - 4}" class="thr-label" text-anchor="{anchor}">threshold {_fmt(thr)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- the HTML report


@dataclass
class FlaggedImage:
    """One flagged row for the report table, with its (optional) thumbnail and heat-map overlay.

    The images are RGB uint8 arrays, or PNG data URIs already encoded (see :func:`png_data_uri`).
    """

    row: dict[str, Any]
    thumbnail: np.ndarray | str | None = None
    overlay: np.ndarray | str | None = None
    note: str | None = None  # why there is no thumbnail
    evidence: np.ndarray | str | None = None  # the generated head's evidence map (images flagged as generated)


@dataclass
class ReportData:
    summary: dict[str, Any]
    anomaly_scores: np.ndarray
    generated_scores: np.ndarray | None
    flagged: list[FlaggedImage] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    has_generated_head: bool = False
    map_range: tuple[float, float] | None = None
    passed: list[FlaggedImage] = field(default_factory=list)  # a sample of the images no head flagged


_CSS = """
:root{--fg:#1f2933;--muted:#66788a;--line:#e3e8ee;--bg:#f6f8fa;--card:#fff;--accent:#2563eb;--hot:#dc2626;--ok:#15803d}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  color:var(--fg);background:var(--bg)}
header{background:#111827;color:#f9fafb;padding:22px 32px}
header h1{margin:0;font-size:22px;font-weight:600;letter-spacing:.2px}
header .sub{color:#9ca3af;margin-top:4px;font-size:13px;word-break:break-all}
main{padding:24px 32px 40px;max-width:1400px;margin:0 auto}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin-bottom:20px}
h2{font-size:16px;margin:0 0 12px;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin-bottom:20px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.card .n{font-size:26px;font-weight:600}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.5px}
.card.hot .n{color:var(--hot)} .card.err .n{color:#b45309}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:20px}
@media (max-width:1000px){.grid2{grid-template-columns:1fr}}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 16px;margin:0}
dt{color:var(--muted)} dd{margin:0;overflow-wrap:anywhere}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.muted{color:var(--muted)}
.hist{width:100%;height:auto;display:block}
.hist .bar{fill:#93a8c4} .hist .bar.hot{fill:var(--hot)}
.hist .axis{stroke:#9aa5b1;stroke-width:1}
.hist .tick{font-size:10px;fill:var(--muted)} .hist .label{font-size:11px;fill:var(--fg)}
.hist .thr{stroke:var(--hot);stroke-width:1.5;stroke-dasharray:4 3}
.hist .thr-label{font-size:11px;fill:var(--hot);font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:middle}
th{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.4px;background:#fafbfc;
  position:sticky;top:0}
th.sort{cursor:pointer;user-select:none;white-space:nowrap}
th.sort:after{content:" \\2195";color:#c0c8d2}
th.asc:after{content:" \\2191";color:var(--accent)} th.desc:after{content:" \\2193";color:var(--accent)}
td.num{text-align:right;font-variant-numeric:tabular-nums} th.num{text-align:right}
td.path{max-width:460px;overflow-wrap:anywhere}
table.sortable td.path{min-width:300px;max-width:460px} .scroll{overflow-x:auto}
table.errors td.path{width:45%}
tbody tr:hover{background:#f9fbff}
img.t{width:__THUMB__px;height:__THUMB__px;object-fit:contain;image-rendering:pixelated;
  border:1px solid var(--line);border-radius:4px;display:block}
.noimg{width:__THUMB__px;height:__THUMB__px;display:flex;align-items:center;justify-content:center;
  text-align:center;font-size:11px;color:var(--muted);background:#f1f3f5;border-radius:4px;padding:6px}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-size:11.5px;font-weight:600;margin:1px 2px}
.badge.a{background:#fee2e2;color:#991b1b} .badge.g{background:#ede9fe;color:#5b21b6}
.badge.o{background:#fef3c7;color:#92400e} .badge.p{background:#dcfce7;color:#166534}
ul.why{margin:6px 0 0;padding-left:16px;font-size:12px} ul.why li{margin:1px 0}
.explain{font-size:12.5px;color:var(--muted);margin:4px 0 10px}
.legend{display:flex;align-items:center;gap:8px;font-size:12px;color:var(--muted);margin:6px 0 12px}
.legend .ramp{width:160px;height:10px;border-radius:3px;background:linear-gradient(90deg,__RAMP__)}
.note{background:#fff7ed;border:1px solid #fed7aa;color:#9a3412;border-radius:8px;padding:8px 12px;margin-bottom:12px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px 0 30px}
a{color:var(--accent);text-decoration:none} a:hover{text-decoration:underline}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  var ths=t.querySelectorAll('th.sort');
  ths.forEach(function(th,i){th.addEventListener('click',function(){
    var col=parseInt(th.dataset.col,10),num=th.dataset.type==='num';
    var dir=th.classList.contains('desc')?1:-1;
    if(!th.classList.contains('asc')&&!th.classList.contains('desc'))dir=num?-1:1;
    ths.forEach(function(o){o.classList.remove('asc','desc')});
    th.classList.add(dir>0?'asc':'desc');
    var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[col].dataset.v,y=b.cells[col].dataset.v;
      if(num){x=x===''?-Infinity:parseFloat(x);y=y===''?-Infinity:parseFloat(y);return (x-y)*dir;}
      return x.localeCompare(y)*dir;});
    rows.forEach(function(r){body.appendChild(r)});
  });});
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _path_html(path: Any) -> str:
    """An escaped path that may wrap after each slash."""
    return _e(path).replace("/", "/<wbr>")


def _num_cell(value: Any, text: str | None = None) -> str:
    v = "" if value is None else repr(float(value)) if isinstance(value, (int, float)) else _e(value)
    shown = text if text is not None else ("n/a" if value is None else _fmt(float(value)))
    return f'<td class="num" data-v="{v}">{_e(shown)}</td>'


def _scanned(summary: dict[str, Any]) -> str:
    """What the scan read: its paths and its listing file."""
    listing = summary.get("files_from")
    return ", ".join([*summary.get("paths", []), *([f"the files listed in {listing}"] if listing else [])])


def _threshold_text(thr: dict[str, Any], head: str) -> str:
    value = thr.get(head)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    how = (thr.get("how") or {}).get(head)
    return f"{_fmt(float(value), 6)}" + (f" <span class='muted'>({_e(how)})</span>" if how else "")


def _flag_badges(row: dict[str, Any]) -> str:
    out = []
    if row.get("anomaly_flag"):
        out.append('<span class="badge a">anomaly</span>')
    if row.get("generated_flag"):
        out.append('<span class="badge g">generated</span>')
    if row.get("in_domain") is False:
        out.append('<span class="badge o">out of domain</span>')
    if not out and row.get("status") == "ok":
        out.append('<span class="badge p">passed</span>')
    return "".join(out)


def _reasons_list(row: dict[str, Any]) -> str:
    items = "".join(f"<li>{_e(s)}</li>" for s in row.get("reasons") or [])
    return f'<ul class="why">{items}</ul>' if items else ""


PERCENTILE_TEXT = (
    "<b>Percentile</b>: the share of the model's held-out normal images that score lower than this image; "
    "99.2 means the image is stranger than 99.2 % of normal images, 50 is a typical normal image."
)
GATE_TEXT = (
    "<b>Out of domain</b>: the image is unlike anything the model was trained on (neither its real images nor "
    "its generator's fakes), so the generated head abstains: no probability, no generated flag; the image is "
    "reported as anomalous."
)


def _image_cell(image: np.ndarray | str | None, note: str | None, alt: str) -> str:
    if image is None:
        return f'<td><div class="noimg">{_e(note or "unavailable")}</div></td>'
    uri = image if isinstance(image, str) else png_data_uri(image)
    if not uri.startswith("data:image/png;base64,"):
        raise ValueError("report images must be PNG data URIs")
    return f'<td><img class="t" alt="{_e(alt)}" src="{_e(uri)}"></td>'


def _map_legends(data: ReportData) -> str:
    out = ""
    if data.map_range is not None:
        lo, hi = data.map_range
        out += (
            f'<div class="legend">anomaly map: <span>{_fmt(lo, 3)}</span><span class="ramp"></span>'
            f"<span>{_fmt(hi, 3)}</span> (how unlike the normal images each region is; one scale for every image)</div>"
        )
    if data.has_generated_head:
        out += (
            '<div class="legend">generated evidence: <span>none</span><span class="ramp"></span><span>strongest</span> '
            "(images flagged as generated: where the generated head sees generation, per window; covering a "
            "window with the background lowers its generated score most where it is yellow; scaled per image)</div>"
        )
    return out


def _image_rows(items: list[FlaggedImage], gen: bool) -> str:
    rows = []
    for rank, item in enumerate(items, 1):
        r = item.row
        path = _e(r.get("path", ""))
        w, h = r.get("width"), r.get("height")
        size_text = f"{w}\u00d7{h}" if w and h else "n/a"
        pct = r.get("anomaly_percentile")
        gscore = r.get("generated_score") if gen else None
        gtext = None if gen and r.get("in_domain") is not False else ("abstains" if gen else "n/a")
        flags = " ".join(k for k in ("anomaly", "generated") if r.get(f"{k}_flag"))
        evidence = (
            _image_cell(item.evidence, None, "generated evidence")
            if item.evidence is not None
            else '<td class="muted">\u2014</td>'
        )
        rows.append(
            "<tr>"
            f'<td class="num" data-v="{rank}">{rank}</td>'
            + _image_cell(item.thumbnail, item.note, "image")
            + _image_cell(item.overlay, item.note, "anomaly map")
            + (evidence if gen else "")
            + f'<td class="path" data-v="{path}"><span class="mono">{_path_html(r.get("path", ""))}</span>'
            + f"{_reasons_list(r)}</td>"
            + _num_cell(r.get("anomaly_score"))
            + _num_cell(pct, None if pct is None else f"{pct:.1f}")
            + _num_cell(gscore, gtext)
            + f'<td data-v="{_e(flags)}">{_flag_badges(r)}</td>'
            + _num_cell((w or 0) * (h or 0), size_text)
            + "</tr>"
        )
    return "".join(rows)


def _image_table(items: list[FlaggedImage], gen: bool) -> str:
    cols = [("#", "num"), ("Image", None), ("Anomaly map", None)]
    cols += [("Generated evidence", None)] if gen else []
    cols += [("Path and why", "text"), ("Anomaly score", "num"), ("Percentile", "num"), ("Generated score", "num"),
             ("Flags", "text"), ("Size", "num")]  # fmt: skip
    ths = []
    for i, (name, kind) in enumerate(cols):
        cls = ("sort " if kind else "") + ("num" if kind == "num" else "")
        attrs = f' data-col="{i}" data-type="{kind}"' if kind else ""
        ths.append(f'<th class="{cls.strip()}"{attrs}>{name}</th>')
    rows = _image_rows(items, gen)
    return f'<div class="scroll"><table class="sortable"><thead><tr>{"".join(ths)}</tr></thead><tbody>{rows}</tbody></table></div>'


def _passed_section(data: ReportData) -> str:
    n = data.summary["counts"].get("ok", 0) - data.summary["counts"].get("flagged", 0)
    if n <= 0 or not data.passed:
        return ""
    scope = f"all {n}" if len(data.passed) >= n else f"a random sample of {len(data.passed)} of the {n}"
    return (
        f'<section><h2>Passed images</h2><p class="muted">Showing {scope} images that no head flagged, '
        "so you can check what passes too.</p>" + _map_legends(data) + f'<p class="explain">{PERCENTILE_TEXT}</p>'
        + _image_table(data.passed, data.has_generated_head) + "</section>"
    )


def _flagged_section(data: ReportData) -> str:
    s = data.summary
    counts = s["counts"]
    n_flagged = counts.get("flagged", 0)
    gen = data.has_generated_head
    if not data.flagged:
        return '<section><h2>Flagged images</h2><p class="muted">No image was flagged.</p></section>'
    shown = len(data.flagged)
    scope = f"all {n_flagged}" if shown >= n_flagged else f"the {shown} highest-scoring of {n_flagged}"
    order = (
        "Ranked by score within each head, alternating: the most anomalous and the most likely generated "
        "images come first."
        if gen
        else "Ranked by anomaly score."
    )
    head = (
        f'<section><h2>Flagged images</h2><p class="muted">Showing {scope} flagged images. {order} '
        "Click a column header to sort.</p>"
    )
    head += _map_legends(data) + f'<p class="explain">{PERCENTILE_TEXT}'
    head += f" {GATE_TEXT}</p>" if gen else "</p>"
    return head + _image_table(data.flagged, gen) + "</section>"


def _errors_section(data: ReportData) -> str:
    n = data.summary["counts"].get("error", 0)
    if not n:
        return ""
    shown = len(data.errors)
    scope = f"all {n}" if shown >= n else f"the first {shown} of {n}"
    rows = "".join(
        f'<tr><td class="path mono" data-v="{_e(r.get("path", ""))}">{_path_html(r.get("path", ""))}</td>'
        f'<td data-v="{_e(r.get("error") or "")}">{_e(r.get("error") or "")}</td></tr>'
        for r in data.errors
    )
    return (
        f'<section><h2>Files that could not be scored</h2><p class="muted">Showing {scope}; '
        "every one has a row with <code>status=error</code> in the results files.</p>"
        '<table class="sortable errors"><thead><tr><th class="sort" data-col="0" data-type="text">Path</th>'
        '<th class="sort" data-col="1" data-type="text">Reason</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def _trained_on(prov: dict[str, Any]) -> str:
    data = prov.get("data") if isinstance(prov.get("data"), dict) else {}
    source = str(data.get("source") or "unknown data")  # str(): provenance is free-form, a number is possible
    if data.get("label") is not None:
        source += f" (label {data['label']})"
    return f"{source}: {prov.get('n_train', '?')} training images, fingerprint {prov.get('fingerprint', '?')}"


def _card(label: str, value: Any, cls: str = "", sub: str = "") -> str:
    sub_html = f'<div class="muted">{_e(sub)}</div>' if sub else ""
    return f'<div class="card {cls}"><div class="k">{_e(label)}</div><div class="n">{_e(value)}</div>{sub_html}</div>'


def render_html(data: ReportData) -> str:
    """The whole report as one HTML string (inline CSS, JS, SVG and images)."""
    # Long by its template: one page, top to bottom (header, thresholds, histograms, flagged, passed, errors).
    s = data.summary
    c = s["counts"]
    model = s["model"]
    thr = s["thresholds"]
    prov = model.get("provenance") or {}
    total_ok = c.get("ok", 0)
    pct_flagged = f"{100 * c.get('flagged', 0) / total_ok:.1f}% of scored" if total_ok else ""
    cards = "".join(
        [
            _card("Files", c.get("candidates", 0), sub=f"{c['resumed']} kept from earlier" if c.get("resumed") else ""),
            _card("Scored", total_ok),
            _card("Flagged", c.get("flagged", 0), "hot" if c.get("flagged") else "", pct_flagged),
            _card("Errors", c.get("error", 0), "err" if c.get("error") else ""),
            _card("Skipped", c.get("skipped", 0), sub="non-image files"),
            _card("Speed", f"{s.get('images_per_second', 0):.0f}/s", sub=f"{_fmt(float(s.get('seconds', 0)), 2)} s"),
        ]
    )
    gen = data.has_generated_head
    exported_by = prov.get("export_ganaudit_version", prov.get("ganaudit_version", "?"))
    no_head = "<span class='muted'>(this model has no generated-image head)</span>"
    model_rows = [
        ("Model", _e(model.get("name"))),
        ("Spec hash", f"<code>{_e(model.get('spec_hash'))}</code>"),
        ("File", f'<span class="mono">{_e(model.get("path", ""))}</span>'),
        ("Heads", _e(", ".join(model.get("heads", [])))),
        ("Input", _e(model.get("input", ""))),
        ("Trained on", _e(_trained_on(prov))),
        ("Exported", _e(f"{prov.get('exported', '?')} by ganaudit {exported_by}")),
    ]
    thr_rows = [
        ("Anomaly threshold", _threshold_text(thr, "anomaly")),
        ("Generated threshold", _threshold_text(thr, "generated") if gen else f"n/a {no_head}"),
        ("Flagged by anomaly", _e(c.get("anomaly_flagged", 0))),
        ("Flagged as generated", _e(c.get("generated_flagged", 0)) if gen else "n/a"),
        ("Out of domain", _e(c.get("out_of_domain", 0)) + " <span class='muted'>(no generated verdict)</span>" if gen else "n/a"),
        ("Scanned", f'<span class="mono">{_e(_scanned(s))}</span>'),
        ("Started", _e(s.get("started", ""))),
        ("Workers / batch", _e(f"{s.get('workers')} / {s.get('batch_size')}")),
    ]
    dl = lambda items: "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"  # noqa: E731
    anomaly_hist = svg_histogram(
        data.anomaly_scores, thr.get("anomaly"), xlabel="anomaly score", bins=40 if gen else 60,
        width=560 if gen else 1100, height=220 if gen else 240,
    )  # fmt: skip
    if gen:
        generated = data.generated_scores if data.generated_scores is not None else np.empty(0)
        gen_hist = svg_histogram(generated, thr.get("generated"), xlabel="generated probability", bounds=(0.0, 1.0))
        histograms = (
            f'<div class="grid2"><section><h2>Anomaly scores</h2>{anomaly_hist}</section>'
            f"<section><h2>Generated scores</h2>{gen_hist}</section></div>"
        )
    else:
        histograms = (
            f"<section><h2>Anomaly scores</h2>{anomaly_hist}"
            '<p class="muted">Generated scores: n/a (this model has no generated-image head).</p></section>'
        )
    notes = ""
    if not s.get("complete", True):
        notes = '<div class="note">This scan did not finish; the counts cover the files processed so far.</div>'
    files = " · ".join(
        f'<a href="{_e(name)}">{_e(name)}</a>' for name in s.get("files", {}).values() if name != "report.html"
    )
    css = _CSS.replace("__THUMB__", str(THUMB_SIZE)).replace("__RAMP__", _INFERNO_CSS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ganaudit scan report: {_e(model.get("name"))}</title>
<style>{css}</style></head>
<body>
<header><h1>ganaudit scan report</h1>
<div class="sub">{_e(_scanned(s))} · model {_e(model.get("name"))} ({_e(model.get("spec_hash"))})
 · {_e(s.get("finished") or s.get("started", ""))}</div></header>
<main>
{notes}
<div class="cards">{cards}</div>
<div class="grid2">
<section><h2>Model</h2>{dl(model_rows)}</section>
<section><h2>Thresholds and scan</h2>{dl(thr_rows)}</section>
</div>
{histograms}
{_flagged_section(data)}
{_passed_section(data)}
{_errors_section(data)}
</main>
<footer>Generated by ganaudit {_e(s.get("ganaudit_version", ""))}. Per-image results: {files}</footer>
<script>{_JS}</script>
</body></html>
"""
