"""Issue 13: no traceback reaches a user, and exit 1 means "flagged" only (OS errors 4, internal errors 5)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import run_cli

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    for i in range(2):
        cv2.imwrite(str(root / f"{i}.png"), np.full((28, 28), 40 * i, np.uint8))
    return root


def one_line_error(res, code: int, phrase: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and phrase in lines[-1], res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout


def test_out_under_a_regular_file_is_exit_4(images, tiny_model, tmp_path):
    (tmp_path / "file").write_text("x")
    res = run_cli("scan", images, "--model", tiny_model, "--out", tmp_path / "file" / "report", "--no-progress")
    one_line_error(res, 4, "Not a directory")


def test_out_under_proc_is_exit_4(images, tiny_model):
    if not Path("/proc/self").exists():
        pytest.skip("no /proc")
    res = run_cli("scan", images, "--model", tiny_model, "--out", "/proc/nope", "--no-progress")
    one_line_error(res, 4, "/proc/nope")


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_unwritable_out_is_exit_4(images, tiny_model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = run_cli("scan", images, "--model", tiny_model, "--out", locked / "report", "--no-progress")
    finally:
        locked.chmod(0o700)
    one_line_error(res, 4, "Permission denied")


def test_disk_full_is_exit_4(images, tiny_model, tmp_path, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    res = run_cli("scan", images, "--model", tiny_model, "--out", tmp_path / "report", "--no-progress")
    one_line_error(res, 4, "No space left on device")


def test_unexpected_exception_is_one_line_and_exit_5(images, tiny_model, tmp_path, monkeypatch):
    import ganaudit.runtime.scan

    def broken(*args, **kwargs):
        raise ValueError("x" * 10_000)

    monkeypatch.setattr(ganaudit.runtime.scan, "scan", broken)
    res = run_cli("scan", images, "--model", tiny_model, "--out", tmp_path / "report")
    one_line_error(res, 5, "internal error (ValueError")
    assert len(res.stderr) < 600  # a long message is cut


def test_flagged_keeps_exit_1_and_a_real_process_prints_no_traceback(images, tiny_model, tmp_path):
    (tmp_path / "file").write_text("x")
    out = subprocess.run(
        [sys.executable, "-m", "ganaudit", "scan", str(images), "--model", str(tiny_model), "--out",
         str(tmp_path / "file" / "r"), "--fail-on-flag"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 4 and "Traceback" not in out.stderr
    res = run_cli("scan", images, "--model", tiny_model, "--out", tmp_path / "ok", "--fail-on-flag",
                  "--anomaly-threshold", "-1e30", "--no-progress")  # fmt: skip
    assert res.exit_code == 1  # everything is flagged
