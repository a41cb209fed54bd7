"""Small inline SVG charts for the audit reports: grouped bars (with optional interval whiskers), overlaid
histograms and a reliability diagram. Self-contained markup, no scripts."""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

COLORS = ("#64748b", "#2563eb", "#dc2626")


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _legend(names: Sequence[str], x0: float, y: float) -> str:
    out = []
    for i, name in enumerate(names):
        x = x0 + i * 130
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{COLORS[i % 3]}"/>'
                   f'<text x="{x + 14}" y="{y}" font-size="11">{_e(name)}</text>')  # fmt: skip
    return "".join(out)


def bars(
    labels: Sequence[str], series: dict[str, Sequence[float]], *, intervals: dict[str, Sequence[Sequence[float]]] | None = None,
    title: str = "", width: int = 760, height: int = 220,
) -> str:  # fmt: skip
    """Grouped bar chart of one value per label per series; ``intervals[name]`` adds [lo, hi] whiskers."""
    names = list(series)
    top = max([max(v) for v in series.values()] + [hi for iv in (intervals or {}).values() for _, hi in iv] + [1e-9])
    left, bottom, plot_h = 40, height - 30, height - 60
    step = (width - left - 10) / max(1, len(labels))
    bar_w = step * 0.8 / len(names)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img">',
             f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(title)}</text>',
             _legend(names, width - 130 * len(names), 14),
             f'<line x1="{left}" y1="{bottom}" x2="{width - 10}" y2="{bottom}" stroke="#9aa5b1"/>',
             f'<text x="4" y="{bottom - plot_h + 4}" font-size="10">{top:.3g}</text>',
             f'<text x="4" y="{bottom}" font-size="10">0</text>']  # fmt: skip
    for j, name in enumerate(names):
        for i, v in enumerate(series[name]):
            x = left + i * step + step * 0.1 + j * bar_w
            h = plot_h * v / top
            parts.append(f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS[j % 3]}"><title>{_e(labels[i])} {_e(name)}: {v:.4g}</title></rect>')  # fmt: skip
            if intervals and name in intervals:
                lo, hi = intervals[name][i]
                cx = x + bar_w / 2
                parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{bottom - plot_h * lo / top:.1f}" '
                             f'y2="{bottom - plot_h * hi / top:.1f}" stroke="#111827"/>')  # fmt: skip
    for i, lab in enumerate(labels):
        if len(labels) <= 30 or i % 2 == 0:
            x = left + i * step + step / 2
            parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">{_e(lab)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histograms(series: dict[str, np.ndarray], *, title: str = "", bins: int = 40, width: int = 760, height: int = 220) -> str:
    """Overlaid step histograms (densities) of several samples on one shared axis."""
    all_v = np.concatenate([np.asarray(v, float) for v in series.values() if len(v)])
    edges = np.linspace(all_v.min(), all_v.max() + 1e-12, bins + 1)
    dens = {k: np.histogram(v, edges, density=True)[0] for k, v in series.items()}
    top = max(d.max() for d in dens.values()) or 1.0
    left, bottom, plot_h, plot_w = 40, height - 30, height - 60, width - 50
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img">',
             f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(title)}</text>',
             _legend(list(series), width - 130 * len(series), 14),
             f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#9aa5b1"/>',
             f'<text x="{left}" y="{bottom + 14}" font-size="10">{edges[0]:.3g}</text>',
             f'<text x="{left + plot_w}" y="{bottom + 14}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>']  # fmt: skip
    for j, (name, d) in enumerate(dens.items()):
        pts = []
        for i, v in enumerate(d):
            x0, x1 = left + plot_w * i / bins, left + plot_w * (i + 1) / bins
            y = bottom - plot_h * v / top
            pts += [f"{x0:.1f},{y:.1f}", f"{x1:.1f},{y:.1f}"]
        parts.append(f'<polyline fill="none" stroke="{COLORS[j % 3]}" stroke-width="1.6" points="{" ".join(pts)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def reliability(mean_pred: Sequence[float], frac_pos: Sequence[float], counts: Sequence[int], *, title: str = "",
                size: int = 300) -> str:  # fmt: skip
    """Reliability diagram: observed positive rate against mean predicted probability per bin (dot area ~ count)."""
    pad, plot = 36, size - 56
    total = max(1, sum(counts))
    parts = [f'<svg class="chart" viewBox="0 0 {size} {size}" width="{size}" xmlns="http://www.w3.org/2000/svg" role="img">',
             f'<text x="{pad}" y="14" font-size="12" font-weight="600">{_e(title)}</text>',
             f'<rect x="{pad}" y="{20}" width="{plot}" height="{plot}" fill="none" stroke="#9aa5b1"/>',
             f'<line x1="{pad}" y1="{20 + plot}" x2="{pad + plot}" y2="20" stroke="#9aa5b1" stroke-dasharray="4 3"/>',
             f'<text x="{pad}" y="{size - 8}" font-size="10">mean predicted probability</text>']  # fmt: skip
    for p, f, c in zip(mean_pred, frac_pos, counts):
        if c:
            r = 2 + 10 * (c / total) ** 0.5
            parts.append(f'<circle cx="{pad + plot * p:.1f}" cy="{20 + plot * (1 - f):.1f}" r="{r:.1f}" '
                         f'fill="{COLORS[1]}" fill-opacity="0.7"><title>n={c}: predicted {p:.3f}, observed {f:.3f}'
                         f"</title></circle>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)
