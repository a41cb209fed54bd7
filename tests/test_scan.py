"""`ganaudit scan`: every bad-input case, exit codes, resume, partial files, the report, no torch."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ._bombs import BOMBS
from .conftest import run_cli
from ganaudit.runtime.report import COLUMNS, ROW_FIELDS
from ganaudit.runtime.detector import Detector

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file system features")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

NON_UTF8 = b"bad\xffname.png"
HOSTILE = "<img src=x onerror=alert(1)>.png"  # must come out HTML-escaped


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


# Expected outcome per file name (relative to the tree root): "ok", or a phrase the error must contain.
BAD = {
    "bad/empty.png": "empty (0 bytes)",
    "bad/truncated.png": "truncated PNG",
    "bad/truncated.jpg": "truncated JPEG",
    "bad/text.jpg": "not a recognised image",
    "bad/huge-header.png": "above the 64 MP limit",
    "bad/self-loop.png": "symlink loop",
    "bad/sub/up": "symlink loop",
    "bad/unreadable.png": "permission denied",
    # Decompression bombs in formats whose header ganaudit does not read by default, named .png (issue 13).
    "bad/hdr-bomb.png": "HDR images are not accepted",
    "bad/jpeg2000-bomb.png": "JPEG2000 images are not accepted",
    "bad/pgm-bomb.png": "PNM images are not accepted",
    "bad/pfm-bomb.png": "PFM images are not accepted",
}
GOOD = ["odd/16bit.png", "odd/rgba.png", "odd/gray.png", "odd/gray.jpg", "odd/cmyk.jpg", "odd/anim.gif", f"odd/{HOSTILE}"]
N_DIGITS = 24


@pytest.fixture(scope="module")
def tree(tmp_path_factory, mnist_test_images) -> Path:
    """A folder with every bad-input case of issue 4, the must-succeed oddities and real MNIST digits."""
    root = tmp_path_factory.mktemp("scan-tree")
    images, labels = mnist_test_images
    for d in ("bad/sub", "odd", "digits"):
        (root / d).mkdir(parents=True)
    # Real digits: half zeros (the tiny model's normal class), half other digits.
    zeros = np.flatnonzero(labels == 0)[: N_DIGITS // 2]
    others = np.flatnonzero(labels != 0)[: N_DIGITS // 2]
    for i in np.concatenate([zeros, others]):
        ext = ".jpg" if i % 3 == 0 else ".png"
        (root / "digits" / f"{i:04d}_label{labels[i]}{ext}").write_bytes(_encode(images[i], ext))
    digit = images[0]
    png, jpg = _encode(digit, ".png"), _encode(digit, ".jpg")
    (root / "bad/empty.png").write_bytes(b"")
    (root / "bad/truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bad/truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "bad/text.jpg").write_text("this is a text file, not a JPEG\n")
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (root / "bad/huge-header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    os.symlink("self-loop.png", root / "bad/self-loop.png")
    os.symlink("..", root / "bad/sub/up")  # a directory loop
    (root / "bad/unreadable.png").write_bytes(png)
    os.chmod(root / "bad/unreadable.png", 0)
    for name in ("hdr", "jpeg2000", "pgm", "pfm"):
        (root / f"bad/{name}-bomb.png").write_bytes(BOMBS[name][0])
    # Must succeed.
    cv2.imwrite(str(root / "odd/16bit.png"), (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
    Image.fromarray(np.dstack([digit, digit, digit, np.full_like(digit, 200)]), "RGBA").save(root / "odd/rgba.png")
    Image.fromarray(digit, "L").save(root / "odd/gray.png")
    Image.fromarray(digit, "L").save(root / "odd/gray.jpg")
    Image.fromarray(np.dstack([digit] * 3), "RGB").convert("CMYK").save(root / "odd/cmyk.jpg")
    frames = [Image.fromarray(images[k], "L").convert("P") for k in range(3)]
    frames[0].save(root / "odd/anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    inverted = _encode(255 - digit, ".png")  # far from anything normal: flagged, so shown in the report
    (root / "odd" / HOSTILE).write_bytes(inverted)
    with open(os.path.join(os.fsencode(root / "odd"), NON_UTF8), "wb") as f:
        f.write(inverted)
    # Not images: counted as skipped.
    (root / "notes.txt").write_text("not an image")
    (root / "digits/README.md").write_text("digits")
    return root


def _expected_count(root: Path) -> int:
    return len(BAD) + len(GOOD) + 1 + N_DIGITS  # + the non-UTF-8 name


@pytest.fixture(scope="module")
def unreadable_for_root():
    """Root reads any file whatever its mode, so make open() refuse that one file instead."""
    if not IS_ROOT:
        yield
        return
    import builtins

    import ganaudit.runtime.scan as scan_mod

    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith("bad/unreadable.png"):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    scan_mod.open = fake_open  # module global shadows the builtin inside ganaudit.runtime.scan only
    yield
    del scan_mod.open


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def rel(row: dict, root: Path) -> str:
    return os.path.relpath(row["path"], str(root))


@pytest.fixture(scope="module")
def det(tiny_model) -> Detector:
    return Detector.load(tiny_model)


def check_generated_fields(row: dict, det: Detector) -> None:
    """The generated columns: a probability and a flag with a generated head, null without one or when the
    domain gate abstains (the image is then reported as anomalous)."""
    assert row["reasons"] and all(isinstance(s, str) and s for s in row["reasons"])
    if row["in_domain"] is False:
        assert row["generated_score"] is None and row["generated_flag"] is None
        assert row["anomaly_flag"] is True and row["flagged"] is True
        assert any("out of domain" in s for s in row["reasons"])
    elif det.has_generated_head:
        assert row["in_domain"] is True
        assert 0.0 <= row["generated_score"] <= 1.0
        assert 0.0 <= row["generated_score"] <= 1.0
        assert row["generated_flag"] == (row["generated_score"] > det.thresholds.generated)
        assert row["flagged"] == (row["anomaly_flag"] or row["generated_flag"])
    else:
        assert row["generated_score"] is None and row["generated_flag"] is None and row["in_domain"] is None
        assert row["flagged"] == row["anomaly_flag"]


@pytest.fixture(scope="module")
def first_scan(tree, tiny_model, tmp_path_factory, unreadable_for_root):
    out = tmp_path_factory.mktemp("scan-out") / "report"
    res = run_cli("scan", tree, "--model", tiny_model, "--out", out, "--batch-size", "8", "--workers", "2")
    return res, out


# --------------------------------------------------------------------------- rows and statuses


def test_one_row_per_candidate_with_status_and_reason(first_scan, tree, det):
    res, out = first_scan
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == _expected_count(tree)
    by_name = {rel(r, tree): r for r in rows}
    for name, reason in BAD.items():
        row = by_name[name]
        assert row["status"] == "error", name
        assert reason in row["error"], (name, row["error"])
        assert row["anomaly_score"] is None and row["flagged"] is False
    for name in GOOD + [f"odd/{NON_UTF8.decode('utf-8', 'backslashreplace')}"]:
        row = by_name[name]
        assert row["status"] == "ok", (name, row["error"])
        assert row["error"] is None and row["width"] > 0 and row["height"] > 0
        assert isinstance(row["anomaly_score"], float) and 0 <= row["anomaly_percentile"] <= 100
        assert row["anomaly_flag"] == (row["anomaly_score"] > det.thresholds.anomaly)
        check_generated_fields(row, det)
    assert by_name["odd/anim.gif"]["width"] == 28 and by_name["odd/16bit.png"]["width"] == 32
    digits = [r for r in rows if rel(r, tree).startswith("digits/")]
    assert len(digits) == N_DIGITS and all(r["status"] == "ok" for r in digits)


def test_rows_follow_the_walk_order_and_csv_matches_jsonl(first_scan, tree):
    from ganaudit.core.files import display_path, iter_files

    _, out = first_scan
    rows = read_jsonl(out / "results.jsonl")
    assert [r["path"] for r in rows] == [display_path(c.path) for c in iter_files([tree])]
    table = read_csv(out / "results.csv")
    assert list(table[0].keys()) == ROW_FIELDS and ROW_FIELDS[: len(COLUMNS)] == COLUMNS
    assert [t["path"] for t in table] == [r["path"] for r in rows]
    for t, r in zip(table, rows):
        assert t["status"] == r["status"] and t["sha256"] == (r["sha256"] or "")
        if r["status"] == "ok":
            assert float(t["anomaly_score"]) == r["anomaly_score"]
            assert t["flagged"] == ("true" if r["flagged"] else "false")
            if r["generated_score"] is None:
                assert t["generated_score"] == "" and t["generated_flag"] == ""
            else:
                assert float(t["generated_score"]) == r["generated_score"]
                assert t["generated_flag"] == ("true" if r["generated_flag"] else "false")


def test_sha256_and_size_are_of_the_file_bytes(first_scan, tree):
    import hashlib

    _, out = first_scan
    for row in read_jsonl(out / "results.jsonl"):
        name = rel(row, tree)
        if row["status"] == "ok" and "\\x" not in name:
            data = (tree / name).read_bytes()
            assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["size"] == len(data)
            assert row["mtime"] == os.stat(tree / name).st_mtime


def test_summary_json(first_scan, tree, tiny_model):
    from ganaudit.runtime.detector import Detector

    _, out = first_scan
    s = json.loads((out / "summary.json").read_text())
    det = Detector.load(tiny_model)
    n = _expected_count(tree)
    c = s["counts"]
    assert c["candidates"] == n and c["ok"] + c["error"] == n
    assert c["error"] == len(BAD) and c["skipped"] == 2 and c["resumed"] == 0 and c["processed"] == n
    rows = read_jsonl(out / "results.jsonl")
    assert c["flagged"] == sum(r["flagged"] for r in rows)
    assert s["model"]["name"] == "tiny-zeros" and s["model"]["spec_hash"] == det.spec_hash
    assert s["thresholds"]["anomaly"] == pytest.approx(det.thresholds.anomaly)
    assert "model default" in s["thresholds"]["how"]["anomaly"]
    if det.has_generated_head:
        assert s["thresholds"]["generated"] == pytest.approx(det.thresholds.generated)
        assert "model default" in s["thresholds"]["how"]["generated"]
        assert c["generated_flagged"] == sum(bool(r["generated_flag"]) for r in rows)
    else:
        assert s["thresholds"]["generated"] is None and c["generated_flagged"] == 0
    assert c["anomaly_flagged"] == sum(bool(r["anomaly_flag"]) for r in rows)
    assert s["complete"] is True and s["seconds"] > 0 and s["images_per_second"] > 0
    assert s["files"] == {"csv": "results.csv", "jsonl": "results.jsonl", "html": "report.html", "summary": "summary.json"}


def test_stdout_names_the_report_folder_and_stderr_has_no_progress_frames_off_a_terminal(first_scan):
    res, out = first_scan
    assert res.stdout.count("\n") == 1 and str(out) in res.stdout and "flagged" in res.stdout
    assert "\r" not in res.stderr and "img/s" not in res.stderr  # stderr is not a terminal here (issue 13)


def test_report_html_is_self_contained_and_escaped(first_scan, tree, det):
    import html

    _, out = first_scan
    page = (out / "report.html").read_text(encoding="utf-8")
    rows = read_jsonl(out / "results.jsonl")
    flagged = [r for r in rows if r["flagged"]]
    names = {rel(r, tree) for r in flagged}
    assert f"odd/{HOSTILE}" in names and "odd/bad\\xffname.png" in names
    for r in flagged:
        assert html.escape(r["path"]) in page
    passed = sum(r["status"] == "ok" and not r["flagged"] for r in rows)
    shown = len(flagged) + min(passed, 12)  # every flagged image and a sample of 12 passed ones
    evidence = sum(bool(r["generated_flag"]) for r in flagged)  # the generated head's evidence map
    assert page.count('src="data:image/png;base64,') == 2 * shown + evidence  # thumbnail + heat map each
    assert ("Passed images" in page) == (passed > 0)
    assert "<svg" in page and 'class="thr"' in page  # histogram with its threshold line
    if det.has_generated_head:  # two histograms, each with its threshold line
        assert "generated probability" in page and page.count('class="thr"') == 2
    else:
        assert "no generated-image head" in page and "n/a" in page
    assert HOSTILE not in page and html.escape(HOSTILE) in page
    assert "bad\\xffname.png" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched from outside
    for r in rows:  # the errors table
        if r["status"] == "error":
            assert html.escape(r["path"]) in page and html.escape(r["error"]) in page


# --------------------------------------------------------------------------- exit codes


def test_exit_1_with_fail_on_flag(tree, tiny_model, det, tmp_path, unreadable_for_root):
    res = run_cli("scan", tree, "-m", tiny_model, "-o", tmp_path / "a", "--fail-on-flag", "--no-progress")
    assert res.exit_code == 1
    # Nothing above enormous thresholds (a probability is never above 1): exit 0 even with --fail-on-flag.
    high = ["--anomaly-threshold", "1e9"] + (["--generated-threshold", "1"] if det.has_generated_head else [])
    res = run_cli(
        "scan", tree / "digits", "-m", tiny_model, "-o", tmp_path / "b", "--fail-on-flag", *high,
        "--no-progress", "--format", "jsonl",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert not any(r["flagged"] for r in read_jsonl(tmp_path / "b/results.jsonl"))
    assert not (tmp_path / "b/results.csv").exists() and not (tmp_path / "b/report.html").exists()


def test_exit_3_with_strict_and_unreadable_files(tree, tiny_model, tmp_path, unreadable_for_root):
    res = run_cli("scan", tree, "-m", tiny_model, "-o", tmp_path / "a", "--strict", "--fail-on-flag", "--no-progress")
    assert res.exit_code == 3
    assert len(read_jsonl(tmp_path / "a/results.jsonl")) == _expected_count(tree)  # results are still written
    res = run_cli("scan", tree / "odd", "-m", tiny_model, "-o", tmp_path / "b", "--strict", "--no-progress")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--model", "MISSING.onnx"], "model file not found"),
        (["--model", "NOT_ONNX"], "not a loadable ONNX model"),
        (["--fpr", "0.01", "--anomaly-threshold", "1"], "mutually exclusive"),
        (["--fpr", "2"], "fpr must be between 0 and 1"),
        (["--format", "csv,pdf"], "unknown --format pdf"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--model", "NO_HEAD", "--generated-threshold", "0.5"], "no generated-image head"),
        (["--resume", "--format", "csv"], "--resume reads results.jsonl"),
        (["EXTRA_MISSING_PATH"], "path not found"),
    ],
)
def test_exit_2_usage_and_model_errors(args, phrase, tree, tiny_model, no_head_model, tmp_path):
    (tmp_path / "NOT_ONNX").write_text("definitely not a model")
    fixed = [str(tmp_path / a) if a in ("MISSING.onnx", "NOT_ONNX", "EXTRA_MISSING_PATH") else a for a in args]
    fixed = [str(no_head_model) if a == "NO_HEAD" else a for a in fixed]
    model = [] if "--model" in args else ["--model", str(tiny_model)]
    res = run_cli("scan", tree / "odd", *model, "-o", tmp_path / "out", "--no-progress", *fixed)
    assert res.exit_code == 2, res.output
    assert phrase in res.stderr and "Traceback" not in res.output
    assert res.stderr.strip().count("\n") == 0  # one line


def test_exit_2_without_model_when_none_is_shipped(tree, tmp_path, monkeypatch):
    import ganaudit.core.shipped

    monkeypatch.setattr(ganaudit.core.shipped, "MODELS_DIR", tmp_path / "no-models")
    res = run_cli("scan", tree / "odd", "-o", tmp_path / "out")
    assert res.exit_code == 2 and "--model" in res.stderr


def test_model_without_a_generated_head_leaves_its_columns_empty(tree, no_head_model, tmp_path):
    res = run_cli("scan", tree / "odd", "-m", no_head_model, "-o", tmp_path / "o", "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["model"]["heads"] == ["anomaly"] and summary["thresholds"]["generated"] is None
    assert summary["thresholds"]["how"]["generated"] == "n/a" and summary["counts"]["generated_flagged"] == 0
    rows = read_jsonl(tmp_path / "o/results.jsonl")
    assert len(rows) == len(GOOD) + 1 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["generated_score"] is None and r["generated_flag"] is None and r["flagged"] == r["anomaly_flag"]
    for t in read_csv(tmp_path / "o/results.csv"):
        assert t["generated_score"] == "" and t["generated_flag"] == ""
    page = (tmp_path / "o/report.html").read_text(encoding="utf-8")
    assert "this model has no generated-image head" in page and page.count('class="thr"') == 1


def test_model_with_a_generated_head_fills_its_columns_and_report(tree, head_model, tmp_path):
    det = Detector.load(head_model)
    out = tmp_path / "o"
    res = run_cli("scan", tree / "digits", tree / "odd", "-m", head_model, "-o", out, "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["model"]["heads"] == ["anomaly", "generated"]
    assert summary["thresholds"]["generated"] == pytest.approx(det.thresholds.generated)
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == N_DIGITS + len(GOOD) + 1
    readable = [r for r in rows if "\\x" not in r["path"]]  # the non-UTF-8 name is shown escaped
    for r in rows:
        assert r["status"] == "ok"
        check_generated_fields(r, det)
    for r, ref in zip(readable, det.detect([r["path"] for r in readable])):
        assert r["in_domain"] == ref.in_domain and r["reasons"] == ref.reasons
        if ref.in_domain:
            assert r["generated_score"] == pytest.approx(ref.generated_score, rel=1e-5, abs=1e-9)
    assert summary["counts"]["generated_flagged"] == sum(bool(r["generated_flag"]) for r in rows)
    assert summary["counts"]["out_of_domain"] == sum(r["in_domain"] is False for r in rows)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "generated probability" in page and page.count('class="thr"') == 2
    passed = sum(r["status"] == "ok" and not r["flagged"] for r in rows)
    n_flagged, n_gen = sum(r["flagged"] for r in rows), sum(bool(r["generated_flag"]) for r in rows)
    assert page.count('src="data:image/png;base64,') == 2 * (n_flagged + min(passed, 12)) + n_gen
    assert page.count('<ul class="why">') == n_flagged + min(passed, 12)  # reasons beside each image
    # Thresholds per head: nothing flagged above 1e9 / a probability of 1; everything generated-flagged at 0.
    res = run_cli("scan", tree / "digits", "-m", head_model, "-o", tmp_path / "hi", "--anomaly-threshold", "1e9",
                  "--generated-threshold", "1", "--fail-on-flag", "--no-progress", "--format", "jsonl")  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run_cli("scan", tree / "digits", "-m", head_model, "-o", tmp_path / "lo", "--anomaly-threshold", "1e9",
                  "--generated-threshold", "0", "--fail-on-flag", "--no-progress", "--format", "jsonl", "--json",
                  "--no-domain-gate")  # fmt: skip
    assert res.exit_code == 1
    lo = read_jsonl(tmp_path / "lo/results.jsonl")
    assert all(r["in_domain"] is None and any("switched off" in s for s in r["reasons"]) for r in lo)
    assert all(r["generated_flag"] == (r["generated_score"] > 0) and r["flagged"] == r["generated_flag"] for r in lo)
    assert json.loads(res.stdout)["thresholds"]["how"]["generated"] == "set with --generated-threshold"


@posix_only
@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"), reason="needs root and setpriv to drop DAC capabilities")
def test_unreadable_file_for_real_in_a_process_without_dac_override(tree, tiny_model, tmp_path):
    """No monkeypatching: a `ganaudit scan` process without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH gets EACCES
    from the mode-000 file, reports it as a row, goes on, and --strict makes that exit 3."""
    drop = "-dac_override,-dac_read_search"
    cmd = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-m", "ganaudit.cli", "scan",
           str(tree / "bad"), str(tree / "odd"), "-m", str(tiny_model), "-o", str(tmp_path / "o"), "--no-progress",
           "--strict"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    rows = {rel(r, tree): r for r in read_jsonl(tmp_path / "o/results.jsonl")}
    assert rows["bad/unreadable.png"]["status"] == "error"
    assert rows["bad/unreadable.png"]["error"] == "permission denied (check the file's read permission)"
    assert len(rows) == len(BAD) + len(GOOD) + 1 and "Traceback" not in proc.stderr


def test_json_output_is_the_summary(tree, tiny_model, tmp_path):
    res = run_cli("scan", tree / "odd", "-m", tiny_model, "-o", tmp_path / "o", "--json", "--no-progress", "--fpr", "0.2")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data == json.loads((tmp_path / "o/summary.json").read_text())
    assert data["thresholds"]["fpr"] == 0.2 and "FPR 0.2" in data["thresholds"]["how"]["anomaly"]
    assert data["counts"]["candidates"] == len(GOOD) + 1


def test_no_recursive_stays_at_the_top(tree, tiny_model, tmp_path):
    res = run_cli("scan", tree, "-m", tiny_model, "-o", tmp_path / "o", "--no-recursive", "--json", "--no-progress")
    assert res.exit_code == 0
    counts = json.loads(res.stdout)["counts"]
    assert counts["candidates"] == 0 and counts["skipped"] == 1


# --------------------------------------------------------------------------- resume and partial files


@pytest.fixture
def count_scored(monkeypatch):
    """Count images scored by the pipeline (heat maps for the report, include_map=True, not counted)."""
    from ganaudit.runtime.detector import Detector

    seen: list[int] = []
    real = Detector.score_prepared

    def spy(self, items, *, include_map=False, thresholds=None):
        if not include_map:
            seen.append(len(items))
        return real(self, items, include_map=include_map, thresholds=thresholds)

    monkeypatch.setattr(Detector, "score_prepared", spy)
    return seen


def test_resume_rescores_nothing_and_keeps_the_rows(first_scan, tree, tiny_model, tmp_path, count_scored, unreadable_for_root):
    import shutil

    _, first = first_scan
    out = tmp_path / "resumed"
    shutil.copytree(first, out)
    before = (out / "results.jsonl").read_bytes()
    res = run_cli("scan", tree, "-m", tiny_model, "-o", out, "--resume", "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    assert sum(count_scored) == 0  # every readable file was kept; only error rows were retried
    counts = json.loads(res.stdout)["counts"]
    assert counts["resumed"] == counts["ok"] == _expected_count(tree) - len(BAD)
    assert counts["processed"] == len(BAD) and counts["candidates"] == _expected_count(tree)
    assert (out / "results.jsonl").read_bytes() == before  # same rows, same (walk) order
    assert read_csv(out / "results.csv") == read_csv(first / "results.csv")

    # A changed file is scored again; its row is replaced in place.
    victim = sorted((tree / "digits").glob("*.png"))[0]
    original, stat = victim.read_bytes(), victim.stat()
    try:
        victim.write_bytes(_encode(255 - cv2.imdecode(np.frombuffer(original, np.uint8), 0), ".png"))
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        count_scored.clear()
        res = run_cli("scan", tree, "-m", tiny_model, "-o", out, "--resume", "--no-progress")
        assert res.exit_code == 0 and sum(count_scored) == 1
        rows = read_jsonl(out / "results.jsonl")
        assert len(rows) == _expected_count(tree)
        assert [r["path"] for r in rows] == [r["path"] for r in read_jsonl(first / "results.jsonl")]
        new = next(r for r in rows if r["path"].endswith(victim.name))
        assert new["size"] == victim.stat().st_size and new["mtime"] == victim.stat().st_mtime
        assert len(read_csv(out / "results.csv")) == len(rows)
    finally:
        victim.write_bytes(original)
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize(
    "field, value", [("path", [1]), ("anomaly_score", "abc"), ("size", {"a": 1}), ("flagged", "yes"), ("reasons", [3])]
)
def test_resume_rescans_rows_of_the_wrong_type_and_survives_a_bad_summary(first_scan, tree, tiny_model, tmp_path, count_scored, field, value):
    """Found by trying: such a row (a hand edit, a hostile file) made every --resume fail with exit 5."""
    import shutil

    out = tmp_path / "o"
    shutil.copytree(first_scan[1], out)
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    ok = next(i for i, line in enumerate(lines) if json.loads(line)["status"] == "ok")
    row = json.loads(lines[ok])
    row[field] = value
    lines[ok] = json.dumps(row)
    (out / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "model": []}))
    res = run_cli("scan", tree, "-m", tiny_model, "-o", out, "--resume", "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    assert sum(count_scored) == 1  # only the bad row's file is scored again (error rows are retried, not scored)
    rows = read_jsonl(out / "results.jsonl")
    assert [r["path"] for r in rows] == [r["path"] for r in read_jsonl(first_scan[1] / "results.jsonl")]


def test_resume_refuses_results_from_another_threshold(first_scan, tree, tiny_model, tmp_path):
    import shutil

    shutil.copytree(first_scan[1], tmp_path / "o")
    res = run_cli("scan", tree, "-m", tiny_model, "-o", tmp_path / "o", "--resume", "--anomaly-threshold", "0.5")
    assert res.exit_code == 2 and "threshold" in res.stderr


def test_interrupted_scan_leaves_valid_partial_files_and_resume_finishes(tree, tiny_model, tmp_path, count_scored):
    from ganaudit.runtime.detector import Detector
    from ganaudit.runtime.scan import scan

    det = Detector.load(tiny_model)
    out = tmp_path / "o"

    def stop_after_two_batches(n, counts):
        if counts["candidates"] >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(det, [tree / "digits", tree / "odd"], out, batch_size=4, workers=1, on_progress=stop_after_two_batches)
    rows = read_jsonl(out / "results.jsonl")  # every line parses
    assert 8 <= len(rows) < N_DIGITS and len(read_csv(out / "results.csv")) == len(rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["counts"]["candidates"] == len(rows)
    assert not (out / "report.html").exists()
    # A kill in the middle of a write leaves a cut-off last line: resume drops it.
    with open(out / "results.jsonl", "ab") as f:
        f.write(b'{"path": "digits/cut-off", "sta')
    with open(out / "results.csv", "a") as f:
        f.write("digits/cut-off,o")

    count_scored.clear()
    result = scan(det, [tree / "digits", tree / "odd"], out, batch_size=4, workers=1, resume=True)
    total = N_DIGITS + len(GOOD) + 1
    assert result.counts["candidates"] == total and result.counts["resumed"] == len(rows)
    assert sum(count_scored) == total - len(rows)
    full = read_jsonl(out / "results.jsonl")
    fresh = scan(det, [tree / "digits", tree / "odd"], tmp_path / "fresh", batch_size=4, workers=1)
    assert fresh.counts["candidates"] == total
    keep = ("path", "status", "anomaly_score", "flagged", "sha256")
    assert [{k: r[k] for k in keep} for r in full] == [{k: r[k] for k in keep} for r in read_jsonl(tmp_path / "fresh/results.jsonl")]
    assert len(read_csv(out / "results.csv")) == total
    assert result.summary["complete"] is True and (out / "report.html").exists()


@posix_only
def test_killed_scan_leaves_parseable_files(tiny_model, mnist_test_images, tmp_path):
    """SIGKILL a real `ganaudit scan` process mid-run: complete lines parse, resume completes the set."""
    images, _ = mnist_test_images
    src = tmp_path / "many"
    src.mkdir()
    n = 1200
    for i in range(n):
        (src / f"{i:05d}.png").write_bytes(_encode(images[i % len(images)], ".png"))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "ganaudit.cli", "scan", str(src), "-m", str(tiny_model), "-o", str(out),
           "--batch-size", "2", "--workers", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    jsonl = out / "results.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if jsonl.exists() and jsonl.stat().st_size > 20_000:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = read_jsonl(jsonl)
    table = read_csv(out / "results.csv")
    assert 0 < len(rows) and abs(len(table) - len(rows)) <= 2  # each flushed per batch
    assert all(len(t) == len(ROW_FIELDS) and None not in t.values() for t in table)
    res = run_cli("scan", src, "-m", tiny_model, "-o", out, "--resume", "--json", "--no-progress", "--format", "jsonl,csv")
    assert res.exit_code == 0, res.output
    full = read_jsonl(jsonl)
    assert [r["path"] for r in full] == [str(src / f"{i:05d}.png") for i in range(n)]
    assert json.loads(res.stdout)["counts"]["resumed"] == len(rows) or len(rows) == n


# --------------------------------------------------------------------------- layering


def test_scan_runs_with_torch_unimportable(tree, tiny_model, tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import ganaudit.runtime.scan, ganaudit.runtime.report, ganaudit.cli.scan
        from ganaudit.runtime.detector import Detector
        result = ganaudit.runtime.scan.scan(Detector.load({str(tiny_model)!r}), [{str(tree / "odd")!r}], {str(tmp_path / "o")!r})
        assert result.counts["ok"] == {len(GOOD) + 1}, result.counts
        assert sys.modules["torch"] is None
        print("OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OK" and (tmp_path / "o/report.html").exists()


def test_report_keeps_the_top_flags_of_each_head():
    """With top_k smaller than the flagged count, generated-only flags are not crowded out by anomaly flags."""
    from ganaudit.runtime.scan import _Tally

    tally = _Tally(top_k=4)
    for i in range(10):  # anomaly-flagged, rising anomaly score
        tally.add({"status": "ok", "anomaly_score": 1.0 + i, "anomaly_flag": True, "generated_score": 0.1,
                   "generated_flag": False, "flagged": True}, f"a{i}", resumed=False)  # fmt: skip
    for i in range(10):  # generated-flagged only, low anomaly score
        tally.add({"status": "ok", "anomaly_score": 0.1, "anomaly_flag": False, "generated_score": 0.5 + i / 100,
                   "generated_flag": True, "flagged": True}, f"g{i}", resumed=False)  # fmt: skip
    tally.add({"status": "ok", "anomaly_score": 50.0, "anomaly_flag": True, "generated_score": 0.99,
               "generated_flag": True, "flagged": True}, "both", resumed=False)  # fmt: skip
    assert [path for path, _ in tally.top()] == ["both", "a9", "g9", "a8"]
    assert tally.counts["flagged"] == 21 and tally.counts["anomaly_flagged"] == 11 and tally.counts["generated_flagged"] == 11


def test_report_never_shows_a_picture_other_than_the_one_scored(det, mnist_test_images, tmp_path):
    """Found by trying: a file swapped while the scan ran showed its new picture beside the old one's score."""
    from ganaudit.runtime.scan import scan

    images, labels = mnist_test_images
    folder = tmp_path / "live"
    folder.mkdir()
    flagged = [img for img, label in zip(images, labels) if label != 0][:3]
    for i, img in enumerate(flagged):
        cv2.imwrite(str(folder / f"{i}.png"), img)

    def swap_one(n, counts):
        cv2.imwrite(str(folder / "0.png"), np.full((28, 28), 255, np.uint8))

    result = scan(det, [folder], tmp_path / "o", batch_size=8, workers=1, on_progress=swap_one)
    assert result.counts["flagged"] == 3
    page = (tmp_path / "o/report.html").read_text(encoding="utf-8")
    assert "the file changed after it was scored" in page  # in place of that file's picture and heat map
