"""`ganaudit scan --files-from LISTING`: files named one per line, by path or by URI (pyarrow's file systems).

A listing gives the rows a folder scan gives for the same files; hostile lines (too long, NUL bytes, formula-like
names, unknown schemes, missing files) become error rows and never abort the scan; the listing may come from
standard input; --resume works; a listing of URIs without pyarrow is a usage error with the advice to install it.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from ganaudit.core.files import WalkStats
from ganaudit.core.listing import MAX_LINE_BYTES, iter_listing

from .conftest import run_cli
from .test_scan import tree  # noqa: F401 - the bad-input tree of test_scan (bad files, oddities, real digits)

SCAN = ["--batch-size", "4", "--no-progress", "--json", "--format", "csv,jsonl"]


def scan(model: Path, out: Path, *extra: str, **kw):
    return run_cli("scan", "--model", model, "--out", out, *SCAN, *extra, **kw)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def digits(tree_dir: Path) -> list[Path]:  # noqa: F811
    return sorted((tree_dir / "digits").glob("*.[pj][np]g"))


def test_a_listing_gives_the_rows_of_the_folder_scan(tiny_model, tree, tmp_path):  # noqa: F811
    files = digits(tree)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    folder = run_cli("scan", *files, "--model", tiny_model, "--out", tmp_path / "a", *SCAN)
    listed = scan(tiny_model, tmp_path / "b", "--files-from", listing)
    assert folder.exit_code == listed.exit_code == 0, listed.output
    assert rows(tmp_path / "a") == rows(tmp_path / "b") and len(rows(tmp_path / "b")) == len(files) > 10
    summary = json.loads(listed.stdout)
    assert summary["files_from"] == str(listing) and summary["paths"] == []


def test_paths_and_a_listing_together_scan_each_file_once(tiny_model, tree, tmp_path):  # noqa: F811
    files = digits(tree)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files[0]}\n{files[1]}\n{files[1]}\n")  # both also under the folder below
    result = scan(tiny_model, tmp_path / "o", tree / "digits", "--files-from", listing)
    assert result.exit_code == 0, result.output
    shown = [r["path"] for r in rows(tmp_path / "o")]
    assert shown == [str(f) for f in files]  # the folder's walk; the listed files were all in it
    assert json.loads(result.stdout)["counts"]["duplicates"] == 3


def test_hostile_lines_become_error_rows_and_the_scan_goes_on(tiny_model, tree, tmp_path):  # noqa: F811
    good = digits(tree)[0]
    listing = tmp_path / "hostile.txt"
    lines = [
        b"# a comment, then a blank line, then CRLF endings",
        b"",
        str(good).encode() + b"\r",
        b"a" * (MAX_LINE_BYTES * 40),  # one line of 320 KB
        b"bad\x00name.png",
        b"=cmd|' /C calc'!A0",  # formula-like: CSV readers must not run it
        b"s3x://bucket/key.png",  # no such file system
        b"file:///no/such/\xff.png",  # a URI that is not UTF-8
        str(tmp_path / "missing.png").encode(),
        str(tree / "digits").encode(),  # a folder, not a file
        str(tree / "bad" / "truncated.png").encode(),
    ]
    listing.write_bytes(b"\n".join(lines))  # no newline after the last line
    result = scan(tiny_model, tmp_path / "o", "--files-from", listing)
    assert result.exit_code == 0, result.output
    got = rows(tmp_path / "o")
    assert [r["status"] for r in got] == ["ok"] + ["error"] * 8
    errors = [r["error"] for r in got[1:]]
    assert "longer than 8192 bytes" in errors[0] and got[1]["path"] == f"{listing}:4"
    assert "NUL byte" in errors[1]
    assert "file not found" in errors[2] and got[3]["path"] == "=cmd|' /C calc'!A0"
    assert "s3x://bucket/key.png" in errors[3]
    assert "UTF-8" in errors[4]
    assert "file not found" in errors[5] and "directory" in errors[6]
    assert "truncated" in errors[7] or "decode" in errors[7]
    csv_text = (tmp_path / "o/results.csv").read_text(encoding="utf-8")
    assert "\n'=cmd|" in csv_text  # neutralised for spreadsheets, as for walked files
    strict = scan(tiny_model, tmp_path / "s", "--files-from", listing, "--strict")
    assert strict.exit_code == 3


def test_a_listing_from_standard_input(tiny_model, tree, tmp_path):  # noqa: F811
    files = digits(tree)[:3]
    result = scan(tiny_model, tmp_path / "o", "--files-from", "-", input="".join(f"{f}\n" for f in files))
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in rows(tmp_path / "o")] == [str(f) for f in files]


@pytest.mark.parametrize("which", ["missing", "folder", "device"])
def test_a_listing_that_cannot_be_read_is_a_usage_error(tiny_model, tmp_path, which):
    if which == "device" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    # a device: /dev/zero was read for ever, without a row or an end (found by trying)
    target = {"missing": tmp_path / "nothing.txt", "folder": tmp_path, "device": "/dev/zero"}[which]
    result = scan(tiny_model, tmp_path / "o", "--files-from", target)
    assert result.exit_code == 2
    assert "--files-from" in result.output and "Traceback" not in result.output


def test_resume_with_a_listing_keeps_the_finished_rows(tiny_model, tree, tmp_path):  # noqa: F811
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f}\n" for f in digits(tree)))
    first = scan(tiny_model, tmp_path / "o", "--files-from", listing)
    again = scan(tiny_model, tmp_path / "o", "--files-from", listing, "--resume")
    assert first.exit_code == again.exit_code == 0, again.output
    counts = json.loads(again.stdout)["counts"]
    assert counts["resumed"] == counts["ok"] == len(digits(tree)) and counts["processed"] == 0


def test_file_uris_are_read_through_pyarrow(tiny_model, tree, tmp_path):  # noqa: F811
    pytest.importorskip("pyarrow.fs")
    files = digits(tree)[:5]
    listing = tmp_path / "uris.txt"
    listing.write_text("".join(f"{f.as_uri()}\n" for f in files) + "file:///no/such/file.png\n")
    local = run_cli("scan", *files, "--model", tiny_model, "--out", tmp_path / "a", *SCAN)
    remote = scan(tiny_model, tmp_path / "b", "--files-from", listing.as_uri())  # the listing by URI too
    assert local.exit_code == remote.exit_code == 0, remote.output
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["path"] for r in b[:-1]] == [f.as_uri() for f in files]
    for x, y in zip(a, b):  # the same bytes, so the same verdict; pyarrow keeps mtime to the microsecond
        assert {k: v for k, v in x.items() if k not in ("path", "mtime")} == {k: v for k, v in y.items() if k not in ("path", "mtime")}
        assert x["mtime"] == pytest.approx(y["mtime"], abs=1e-5)
    assert b[-1]["status"] == "error" and "file not found" in b[-1]["error"]
    again = scan(tiny_model, tmp_path / "b", "--files-from", listing, "--resume")
    assert json.loads(again.stdout)["counts"]["resumed"] == len(files)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX devices and pipes")
def test_uris_of_devices_pipes_and_odd_stores_are_error_rows(tiny_model, tmp_path):
    """Found by trying: each of these ended the scan with exit 5 (a size of None, pyarrow's own errors)."""
    pytest.importorskip("pyarrow.fs")
    os.mkfifo(tmp_path / "pipe.png")
    listing = tmp_path / "odd.txt"
    listing.write_text(f"file:///dev/zero\n{(tmp_path / 'pipe.png').as_uri()}\nabfs://x@y/z.png\n")
    res = scan(tiny_model, tmp_path / "o", "--files-from", listing)
    assert res.exit_code == 0, res.output
    got = rows(tmp_path / "o")
    assert [r["status"] for r in got] == ["error"] * 3
    assert all("not a regular file" in r["error"] for r in got[:2]) and len(got[2]["error"]) < 500


def test_spellings_of_one_local_file_uri_are_scanned_once(tiny_model, tree, tmp_path):  # noqa: F811
    """Found by trying: /../, percent-escapes and // made the same file five rows."""
    pytest.importorskip("pyarrow.fs")
    f = digits(tree)[0]
    uri = f.as_uri()
    head, name = uri.rsplit("/", 1)
    spellings = [uri, f"{head}/../{f.parent.name}/{name}", f"{head}/%{ord(name[0]):02x}{name[1:]}",
                 uri.replace("file:///", "file:////"), str(f)]  # fmt: skip
    listing = tmp_path / "same.txt"
    listing.write_text("\n".join(spellings) + "\n")
    res = scan(tiny_model, tmp_path / "o", "--files-from", listing)
    assert res.exit_code == 0, res.output
    assert len(rows(tmp_path / "o")) == 1 and json.loads(res.stdout)["counts"]["duplicates"] == 4


def test_an_unreachable_cloud_object_is_an_error_row_within_the_retry_limit(tiny_model, tmp_path, monkeypatch):
    """Found by trying: Google Cloud Storage's client retried one object for 15 minutes, stalling the scan."""
    pytest.importorskip("pyarrow.fs")
    from ganaudit.runtime import uri_files

    monkeypatch.setattr(uri_files, "STORE_RETRY_SECONDS", 1.0)
    listing = tmp_path / "gcs.txt"
    listing.write_text("gs://ganaudit-no-such-bucket-for-tests/x.png\n")
    res = scan(tiny_model, tmp_path / "o", "--files-from", listing)
    assert res.exit_code == 0, res.output
    (row,) = rows(tmp_path / "o")
    assert row["status"] == "error" and row["error"].startswith("could not read gs://")
    assert json.loads(res.stdout)["seconds"] < 60


def test_uris_without_pyarrow_are_a_usage_error_with_advice(tiny_model, tree, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "pyarrow.fs", None)  # import pyarrow.fs raises ImportError
    monkeypatch.setattr("ganaudit.runtime.uri_files._systems", {})
    listing = tmp_path / "uris.txt"
    listing.write_text(f"{digits(tree)[0].as_uri()}\n")
    result = scan(tiny_model, tmp_path / "o", "--files-from", listing)
    assert result.exit_code == 2
    assert "ganaudit[distributed]" in result.output and "Traceback" not in result.output


def test_random_listings_never_raise():
    """Fuzz the line reader: any bytes give candidates (an error or a NUL-free path), never an exception."""
    import numpy as np

    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"ab/\\.:#\r\n\x00\xff\xc3 ", dtype=np.uint8)
    for n in range(300):
        size = int(rng.integers(0, 3 * MAX_LINE_BYTES if n % 10 == 0 else 200))
        data = alphabet[rng.integers(0, len(alphabet), size)].tobytes()
        stats = WalkStats()
        for cand in iter_listing(io.BytesIO(data), "fuzz", stats):
            assert cand.error is not None or "\x00" not in cand.path
            assert len(os.fsencode(cand.path)) <= MAX_LINE_BYTES + 16
