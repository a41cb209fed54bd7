"""Data-parallel training: 2 CPU processes under torchrun (gloo) train to the end, export a detector, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ganaudit.runtime.detector import Detector
from ganaudit.training.train import load_checkpoint

from .conftest import run_cli

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

DATA = "sklearn:digits?label=3"
ARGS = [
    "--size", "16", "--width", "8", "--z-dim", "8", "--steps", "30", "--encoder-steps", "20", "--head-steps", "10",
    "--batch-size", "16", "--sample-every", "10", "--checkpoint-every", "10", "--seed", "0", "--no-progress",
    "--no-audit",
]  # fmt: skip


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("ddp") / "run"
    return run, torchrun("-m", "ganaudit", "train", DATA, "--out", str(run), "--generated-head", *ARGS)


def test_two_processes_train_to_the_end_and_export_a_detector(ddp_run, tmp_path):
    run, res = ddp_run
    assert res.stdout.count("run complete") == 1  # rank 0 alone prints
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 30 + 20 + 10
    assert len(ckpt["rng_ranks"]) == 2 and not torch.equal(ckpt["rng_ranks"][0], ckpt["rng_ranks"][1])
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # one writer: every logged step once
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [f"step_{s:06d}.png" for s in range(10, 61, 10)]
    model = tmp_path / "ddp.onnx"
    out = run_cli("export", run, "-o", model, "--name", "ddp")
    assert out.exit_code == 0, out.output
    det = Detector.load(model)
    assert det.has_generated_head
    verdict = det.detect(np.zeros((16, 16), np.uint8))
    assert verdict.anomaly_score is not None


RESUME = """
import sys
from ganaudit.training.datasets import load_dataset
from ganaudit.training.train import TrainConfig, train
cfg = TrainConfig(size=16, width=8, z_dim=8, steps=30, encoder_steps=20, batch_size=16, sample_every=10,
                  checkpoint_every=10, seed=0)
data = load_dataset("sklearn:digits?label=3", size=16, channels="auto")
if sys.argv[2] == "resume":
    train(cfg, data, sys.argv[1], resume=True, progress=False)
else:
    train(cfg, data, sys.argv[1], stop_at=int(sys.argv[2]), progress=False)
"""


def test_an_interrupted_two_process_run_resumes_to_the_same_weights(ddp_run, tmp_path):
    """Stopped at step 25 (GAN phase) and resumed: the same G, D and E as the run trained straight through
    (trained without the head phase, which leaves them as they are)."""
    script = tmp_path / "resume.py"
    script.write_text(textwrap.dedent(RESUME))
    torchrun(str(script), str(tmp_path / "run"), "25")
    assert load_checkpoint(tmp_path / "run")["step"] == 25
    torchrun(str(script), str(tmp_path / "run"), "resume")
    straight, resumed = load_checkpoint(ddp_run[0]), load_checkpoint(tmp_path / "run")
    assert (resumed["step"], straight["step"]) == (50, 60)
    for net in ("G", "G_ema", "D", "E"):
        for k, v in straight[net].items():
            assert torch.equal(v, resumed[net][k]), f"{net}.{k}"


def test_batch_size_must_split_evenly_over_the_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ganaudit",
           "train", DATA, "--out", str(tmp_path / "r"), *ARGS, "--batch-size", "15"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode != 0
    assert "error: --batch-size 15 must be a multiple of the number of processes (2)" in res.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "env, message",
    [({"RANK": "1"}, "RANK=1, WORLD_SIZE=None"), ({"WORLD_SIZE": "0"}, "do not describe a job"),
     ({"WORLD_SIZE": "2", "RANK": "0"}, "is set but not MASTER_ADDR")],
)  # fmt: skip
def test_a_stray_torchrun_environment_is_refused_before_training(tmp_path, env, message):
    """Found by trying: RANK=1 left in a shell made one process train in full, write nothing and exit 0."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    cmd = [sys.executable, "-m", "ganaudit", "train", DATA, "--out", str(tmp_path / "r"), *ARGS]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**clean, "OMP_NUM_THREADS": "1", **env}, timeout=120)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "r").exists()
