"""Report pieces without a model: row writers, histograms, heat-map overlays, HTML with a generated head."""

from __future__ import annotations

import csv
import html
import json
import re

import numpy as np
import pytest

from ganaudit.runtime.report import (
    ROW_FIELDS,
    CsvWriter,
    FlaggedImage,
    JsonlWriter,
    ReportData,
    csv_from_jsonl,
    heat_overlay,
    make_thumbnail,
    read_jsonl,
    render_html,
    svg_histogram,
)


def row(path: str, score: float, gen: float | None = None, **kw) -> dict:
    r = dict.fromkeys(ROW_FIELDS)
    r.update(path=path, status="ok", width=28, height=28, anomaly_score=score, anomaly_percentile=99.5,
             anomaly_flag=score > 1, generated_score=gen, generated_flag=None if gen is None else gen > 0.5,
             sha256="ab" * 32, size=100, mtime=1.5)  # fmt: skip
    r["flagged"] = bool(r["anomaly_flag"] or r["generated_flag"])
    r.update(kw)
    return r


def test_jsonl_offsets_point_at_their_lines_and_cut_off_lines_are_ignored(tmp_path):
    path = tmp_path / "r.jsonl"
    w = JsonlWriter(path)
    first = w.write([row("a.png", 0.5), row("b\u00e9.png", 2.0)])
    second = w.write([row("c.png", 3.0)])
    w.close()
    data = path.read_bytes()
    for off, name in zip(first + second, ["a.png", "b\u00e9.png", "c.png"]):
        assert json.loads(data[off:].split(b"\n", 1)[0])["path"] == name
    with open(path, "ab") as f:
        f.write(b'{"path": "d.png", "stat')  # what a kill mid-write leaves
    assert [r["path"] for _, r in read_jsonl(path)] == ["a.png", "b\u00e9.png", "c.png"]


def test_csv_writer_appends_under_one_header_and_matches_jsonl(tmp_path):
    w = CsvWriter(tmp_path / "r.csv")
    w.write([row("a,b.png", 0.5)])
    w.close()
    w = CsvWriter(tmp_path / "r.csv", append=True)
    w.write([row('q"uote\nnewline.png', 2.0)])
    w.close()
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert [g["path"] for g in got] == ["a,b.png", 'q"uote\nnewline.png']
    assert got[0]["anomaly_flag"] == "false" and got[1]["flagged"] == "true" and got[0]["generated_score"] == ""
    j = JsonlWriter(tmp_path / "r.jsonl")
    j.write([row("a,b.png", 0.5), row('q"uote\nnewline.png', 2.0)])
    j.close()
    csv_from_jsonl(tmp_path / "r.jsonl", tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "r.csv").read_text()


def test_histogram_marks_the_threshold_and_the_bars_above_it():
    svg = svg_histogram(np.r_[np.zeros(50), np.ones(5) * 3], 2.0, xlabel="score")
    assert svg.count('class="thr"') == 1 and "threshold 2" in svg
    assert 'class="bar hot"' in svg and 'class="bar"' in svg
    assert "No scores" in svg_histogram(np.empty(0), 1.0, xlabel="s")
    assert 'class="thr"' not in svg_histogram(np.ones(3), float("inf"), xlabel="s")  # no threshold: no line
    assert "<svg" in svg_histogram(np.ones(3), None, xlabel="s")  # all equal values still plot
    # A bin straddling the threshold: its 90 values below stay plain, its 10 above are drawn red on top.
    mixed = svg_histogram(np.r_[np.full(90, 0.0001), np.full(10, 0.002), [1.0]], 0.001, xlabel="p", bins=4, bounds=(0, 1))
    bars = re.findall(r'<rect class="(bar(?: hot)?)" x="([\d.]+)" y="([\d.]+)" width="[\d.]+" height="([\d.]+)">', mixed)
    first = [b for b in bars if b[1] == bars[0][1]]
    assert [b[0] for b in first] == ["bar", "bar hot"]
    assert float(first[0][3]) == pytest.approx(9 * float(first[1][3]), rel=0.02)  # 90 vs 10
    assert "(10 above the threshold)" in mixed


@pytest.mark.parametrize("fit", ["stretch", "center_crop"])
def test_heat_overlay_covers_what_the_model_saw(fit):
    image = np.full((60, 120), 100, np.uint8)  # a wide gray image
    thumb = make_thumbnail(image, box=64)
    assert thumb.shape == (32, 64, 1)
    hot = np.ones((16, 16), np.float32)
    out = heat_overlay(thumb, hot, fit=fit, vmin=0.0, vmax=1.0)
    assert out.shape == (32, 64, 3) and out.dtype == np.uint8
    colored = np.abs(out.astype(int) - out.mean(axis=2, keepdims=True)).sum(axis=2) > 10
    if fit == "stretch":
        assert colored.all()
    else:  # only the centred square
        assert colored[:, 16:48].all() and not colored[:, :16].any() and not colored[:, 48:].any()


def test_thumbnails_shrink_big_images_and_keep_small_ones():
    small = make_thumbnail(np.eye(4, dtype=np.uint8) * 255, box=16)  # the browser enlarges it, pixel-crisp
    assert small.shape == (4, 4, 1) and set(np.unique(small)) == {0, 255}
    assert make_thumbnail(np.zeros((300, 150, 3), np.uint8), box=100).shape == (100, 50, 3)


def summary(gen: bool) -> dict:
    return {
        "ganaudit_version": "0.1.0", "complete": True, "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:05+00:00", "seconds": 5.0, "images_per_second": 200.0,
        "paths": ["photos/<uploads>"], "out": "r", "workers": 2, "batch_size": 64,
        "files": {"csv": "results.csv", "jsonl": "results.jsonl", "html": "report.html", "summary": "summary.json"},
        "model": {"name": "faces", "spec_hash": "0123456789abcdef", "path": "m.onnx",
                  "heads": ["anomaly", "generated"] if gen else ["anomaly"], "input": "3 x 64 x 64 (center_crop)",
                  "provenance": {"data": {"source": "faces/"}, "n_train": 5000, "fingerprint": "ff00"}},
        "thresholds": {"anomaly": 1.0, "generated": 0.5 if gen else None, "fpr": None,
                       "how": {"anomaly": "model default: FPR 0.01 on 500 normal validation images",
                               "generated": "model default" if gen else "n/a"}},
        "counts": {"candidates": 1003, "ok": 1000, "error": 3, "flagged": 3, "anomaly_flagged": 2,
                   "generated_flagged": 2 if gen else 0, "skipped": 4, "resumed": 0, "processed": 1003},
    }  # fmt: skip


def test_html_with_a_generated_head_sorts_escapes_and_embeds():
    rng = np.random.default_rng(0)
    thumb = np.zeros((20, 30, 3), np.uint8)
    flagged = [
        FlaggedImage(row("a/<b>.png", 3.0, 0.9), thumb, thumb),
        FlaggedImage(row("a/gen.png", 0.5, 0.99)),  # no thumbnail: shows the note
        FlaggedImage(row("a/x&y.png", 2.0, 0.1), thumb, thumb),
    ]
    flagged[1].note = "not shown: file not found"
    page = render_html(
        ReportData(
            summary=summary(True), anomaly_scores=rng.normal(0.5, 0.2, 1000), generated_scores=rng.uniform(0, 1, 1000),
            flagged=flagged, errors=[{"path": "bad/'q'.png", "error": "truncated PNG: <cut>"}],
            has_generated_head=True, map_range=(0.1, 0.9),
        )
    )
    assert "Percentile</b>: the share" in page and "generated evidence" in page  # explained, legend per map
    assert page.count("<svg") == 2 and page.count('class="thr"') == 2  # both histograms with their thresholds
    assert "a/&lt;b&gt;.png" in page and "<b>.png" not in page and "x&amp;y" in page
    assert "truncated PNG: &lt;cut&gt;" in page and "photos/&lt;uploads&gt;" in page
    assert page.count('src="data:image/png;base64,') == 4 and "not shown: file not found" in page
    assert 'class="badge g"' in page and 'class="badge a"' in page
    assert re.search(r'data-v="0\.99"', page)  # generated score, sortable
    assert "showing" in page.lower() and "all 3" in page
    assert page.count("<table") == 2 and "sortable" in page  # flagged images, errors (no passed sample given)


def test_html_without_a_generated_head_says_na():
    page = render_html(
        ReportData(summary=summary(False), anomaly_scores=np.ones(3), generated_scores=None,
                   flagged=[FlaggedImage(row("a.png", 3.0))], has_generated_head=False)  # fmt: skip
    )
    assert page.count("<svg") == 1 and "no generated-image head" in page
    cells = re.findall(r'<td class="num" data-v="">([^<]*)</td>', page)
    assert "n/a" in cells  # the generated-score column
    assert html.escape("faces/") in page and "0123456789abcdef" in page
