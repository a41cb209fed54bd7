"""Writes ``audit.json`` and the self-contained ``audit.html`` of ``ganaudit audit gan``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic import atomic_write
from . import svg
from .gan import summary_line
from .page import e, fmt, grid_img, kv_table, page, verdict_table
from .pipeline import GanAuditRun

PAIRS = 16
PER_CLUSTER = 8


def _fidelity_section(r: dict[str, Any]) -> str:
    f = r["fidelity"]
    rows = [(name, f[name]) for name in ("precision", "recall", "density", "coverage")]
    d = r.get("detail")
    if d is not None:
        rows.append(("fine-detail ratio (generated / reference, pixels)", d["ratio"]))
    return kv_table(rows) + f"<p class='muted'>k = {f['k']} nearest neighbours; features: {e(r['features'])}.</p>"


def _ndb_section(run: GanAuditRun) -> str:
    n = run.audit.result["ndb"]
    chart = svg.bars(
        [str(b["bin"]) for b in n["bins"]],
        {"reference": [b["reference_share"] for b in n["bins"]], "generated": [b["generated_share"] for b in n["bins"]]},
        title="share of images per k-means bin of the reference features",
    )
    table = kv_table([("K (bins)", n["k"]), ("NDB", n["ndb"]), ("NDB/K", n["ndb_over_k"]), ("JSD", n["jsd"]),
                      ("missing mass", n["missing_mass"])])  # fmt: skip
    return table + chart + f"<p class='muted'>Bins differ at alpha {n['alpha']} after {n['correction']} correction.</p>"


def _cluster_section(run: GanAuditRun) -> str:
    a = run.audit
    c = run.generated.images.shape[1]
    rows = []
    for b in a.result["ndb"]["bins"]:
        gen = run.generated.images[np.flatnonzero(a.generated_bins == b["bin"])[:PER_CLUSTER]]
        ref = np.stack([_as_channels(x, c) for x in run.reference.images[np.flatnonzero(a.reference_bins == b["bin"])[:PER_CLUSTER]]])
        mark = " (differs)" if b["differs"] else ""
        rows.append(f"<tr><td>bin {b['bin']}{mark}<div class='muted'>ref {b['reference_share']:.3f} / gen "
                    f"{b['generated_share']:.3f}</div></td><td>{grid_img(ref)}</td><td>{grid_img(gen)}</td></tr>")  # fmt: skip
    return ("<table><tr><th>bin (reference / generated share)</th><th>reference examples</th><th>generated examples</th></tr>"
            + "".join(rows) + "</table>")  # fmt: skip


def _memorisation_section(run: GanAuditRun) -> str:
    m = run.audit.result.get("memorisation")
    if m is None:
        return "<p class='muted'>Not computed: no held-out real images (--holdout).</p>"
    ct = m["c_t"]
    table = kv_table([("C_T", ct["c_t"]), ("cells used", ct["cells_used"]),
                      ("cells without generated samples", ct["cells_without_generated"]),
                      ("copy share", m["copy_share"]["share"]), ("expected copy share", m["copy_share"]["expected"]),
                      ("median distance ratio generated / held-out", m["copy_share"]["median_ratio"])])  # fmt: skip
    hist = svg.histograms(
        {"held-out": run.audit.holdout_distance, "generated": run.audit.nearest_distance},
        title="distance to the nearest training image (features)",
    )
    order = np.argsort(run.audit.nearest_distance, kind="stable")[:PAIRS]
    pairs = []
    for i in order:
        pair = np.stack([run.generated.images[i], _as_channels(run.reference.images[run.audit.nearest_train[i]], run.generated.images.shape[1])])
        pairs.append(f"<div class='pair'>{grid_img(pair, 2)}<br>d = {run.audit.nearest_distance[i]:.3g}</div>")
    return (table + hist + "<h3>Closest generated / training pairs</h3><div class='row'>" + "".join(pairs) + "</div>"
            "<p class='muted'>Left: generated image; right: its nearest training image in feature space. C_T averages over "
            "cells and misses copying confined to a few samples; the copy share and this gallery cover that case.</p>")  # fmt: skip


def _as_channels(img: np.ndarray, c: int) -> np.ndarray:
    if img.shape[0] == c:
        return img
    return np.repeat(img, c, axis=0) if img.shape[0] == 1 else img.mean(axis=0, keepdims=True)


def _balance_section(run: GanAuditRun) -> str:
    b = run.audit.result.get("balance")
    if b is None:
        return "<p class='muted'>Not computed: no labels for the reference images (--labels).</p>"
    cls = b["classes"]
    chart = svg.bars(
        [c["class"] for c in cls],
        {"reference": [c["reference_share"] for c in cls], "generated": [c["generated_share"] for c in cls]},
        intervals={"generated": [c["generated_ci"] for c in cls]},
        title="class shares (generated: predicted, with 95 % bootstrap intervals)",
    )
    cov = {c["class"]: c["coverage"] for c in b["coverage_per_class"]}
    rows = "".join(f"<tr><td>{e(c['class'])}</td><td class='num'>{fmt(c['reference_share'])}</td><td class='num'>"
                   f"{fmt(c['generated_share'])}</td><td class='num'>[{fmt(c['generated_ci'][0])}, {fmt(c['generated_ci'][1])}]"
                   f"</td><td class='num'>{fmt(cov[c['class']])}</td></tr>" for c in cls)  # fmt: skip
    head = kv_table([("classifier held-out accuracy", b["classifier_accuracy"]),
                     ("L2 fairness discrepancy to reference", b["fairness_discrepancy_reference"]),
                     ("L2 fairness discrepancy to uniform", b["fairness_discrepancy_uniform"])])  # fmt: skip
    table = ("<table><tr><th>class</th><th>reference share</th><th>generated share</th><th>95 % interval</th>"
             "<th>coverage</th></tr>" + rows + "</table>")  # fmt: skip
    return head + chart + table


def render(run: GanAuditRun) -> str:
    r = run.audit.result
    sections = [
        ("Verdicts", verdict_table(r["verdicts"])),
        ("Inputs", kv_table([("generated", r["generated"]), ("reference", r["reference"]), ("held-out", r["holdout"]),
                             ("labels", r["labels"]), ("features", r["features"]), ("seconds", r["seconds"])])
         + "".join(f"<p class='muted'>{e(n)}</p>" for n in r["notes"])),
        ("Generated samples", grid_img(run.generated.images[:64], 2)),
        ("Fidelity and diversity", _fidelity_section(r)),
        ("Mode collapse (NDB)", _ndb_section(run)),
        ("Per-cluster examples", _cluster_section(run)),
        ("Memorisation", _memorisation_section(run)),
        ("Class balance", _balance_section(run)),
    ]  # fmt: skip
    return page("ganaudit generator audit", summary_line(r), sections)


def write_gan_report(out: str | Path, run: GanAuditRun) -> dict[str, Path]:
    """Write audit.json and audit.html into ``out``; returns their paths."""
    out = Path(out)
    paths = {"json": out / "audit.json", "html": out / "audit.html"}
    atomic_write(paths["json"], json.dumps(run.audit.result, indent=2, ensure_ascii=False))
    atomic_write(paths["html"], render(run))
    return paths
