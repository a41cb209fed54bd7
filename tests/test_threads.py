"""The thread policy (ganaudit/core/threads.py) reaches torch's OpenMP runtime and the onnxruntime session."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ganaudit import ConfigError, Detector
from ganaudit.core.threads import ORT_SPINNING, SPIN_COUNT, available_cores

from .conftest import run_cli

SPIN_SHOWN = f"GOMP_SPINCOUNT = '{SPIN_COUNT}'"


def test_detector_threads_reach_the_session_and_never_spin(tiny_model):
    one = Detector.load(tiny_model, threads=1)
    opts = one.session.get_session_options()
    assert (one.threads, opts.inter_op_num_threads) == (1, 1)
    assert opts.get_session_config_entry(ORT_SPINNING) == "0"
    default = Detector.load(tiny_model)
    assert default.threads == available_cores()
    assert default.session.get_session_options().get_session_config_entry(ORT_SPINNING) == "0"
    with pytest.raises(ConfigError, match="at least 1"):
        Detector.load(tiny_model, threads=0)


def test_scan_threads_option_reaches_the_session(tiny_model, tmp_path, mnist_test_images):
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(mnist_test_images[0][:3]):
        cv2.imwrite(str(images / f"{i}.png"), img)
    res = run_cli("scan", images, "--model", tiny_model, "--out", tmp_path / "out", "--workers", "1",
                  "--threads", "2", "--format", "jsonl", "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["workers"], summary["threads"]) == (1, 2)


def test_absurd_thread_and_worker_counts_are_refused_before_any_work(tiny_model, tmp_path):
    """An operator's typo (--threads 100000) once made onnxruntime start 100,000 threads and take 17 GB."""
    images = tmp_path / "images"
    images.mkdir()
    limit = 4 * available_cores()
    for flag in ("--threads", "--workers"):
        res = run_cli("scan", images, "--model", tiny_model, "--out", tmp_path / "out", flag, "100000")
        assert res.exit_code == 2 and f"{flag} must be at most {limit}" in res.stderr, res.output
    assert not (tmp_path / "out").exists()
    res = run_cli("serve", "--model", tiny_model, "--threads", "100000", "--port", "0")
    assert res.exit_code == 2 and "at most" in res.stderr and "serving model" not in res.stderr
    res = run_cli("train", "sklearn:digits", "--out", tmp_path / "run", "--threads", "100000")
    assert res.exit_code == 2 and "--threads must be at most" in res.stderr and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="at most"):
        Detector.load(tiny_model, threads=limit + 1)
    assert Detector.load(tiny_model, threads=limit).threads == limit


def test_serve_refuses_zero_threads(tiny_model):
    res = run_cli("serve", "--model", tiny_model, "--threads", "0", "--port", "0")
    assert res.exit_code == 2 and "--threads" in res.stderr and "serving model" not in res.stderr


def _train(tmp_path, *extra: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """A few-step training in a fresh process, with libgomp printing the settings it read at start-up."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **env_extra)
    cmd = [sys.executable, "-m", "ganaudit.cli", "-v", "train", "sklearn:digits?label=3", "--out",
           str(tmp_path / "run"), "--size", "16", "--width", "8", "--z-dim", "8", "--batch-size", "8", "--steps", "2",
           "--encoder-steps", "1", "--no-generated-head", "--no-audit", "--no-progress", *extra]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res


def test_train_sets_a_short_spin_before_torch_loads_and_the_thread_count(tmp_path):
    res = _train(tmp_path, "--threads", "1", env_extra={})
    assert SPIN_SHOWN in res.stderr  # what libgomp itself read when torch loaded it (default: 300000)
    assert f"threads: 1 torch thread(s); OpenMP wait: GOMP_SPINCOUNT={SPIN_COUNT}" in res.stderr


def test_train_keeps_the_users_own_wait_policy(tmp_path):
    res = _train(tmp_path, env_extra={"OMP_WAIT_POLICY": "ACTIVE"})
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in res.stderr and SPIN_SHOWN not in res.stderr
    assert "OpenMP wait: OMP_WAIT_POLICY=ACTIVE" in res.stderr


def test_train_refuses_zero_threads(tmp_path):
    res = run_cli("train", "sklearn:digits", "--out", tmp_path / "run", "--threads", "0")
    assert res.exit_code == 2 and "--threads must be" in res.stderr
    assert not (tmp_path / "run").exists()
