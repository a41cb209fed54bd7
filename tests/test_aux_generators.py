"""Auxiliary generators of other families in the generated head's fake pool (`ganaudit train --head-aux`)."""

from __future__ import annotations

import json

import numpy as np
import torch

from ganaudit.training.rundir import AUX_POOL as AUX_DIR
from ganaudit.runtime.detector import Detector
from ganaudit.training.train import load_checkpoint

from .conftest import run_cli

ARGS = ["sklearn:digits?label=3", "--size", "16", "--width", "8", "--z-dim", "8", "--batch-size", "16",
        "--steps", "8", "--encoder-steps", "2", "--head-steps", "4", "--sample-every", "8", "--checkpoint-every", "8",
        "--no-progress"]  # fmt: skip


def test_head_aux_trains_the_chosen_families_into_the_pool_and_retrain_head_reuses_them(tmp_path):
    run = tmp_path / "run"
    res = run_cli("train", *ARGS, "--out", run, "--head-aux", "all,-mlp", "--head-aux-steps", "3")
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["head_aux"] == "nearest,bilinear,pixelshuffle,transposed,autoencoder" and cfg["head_aux_steps"] == 3
    cached = sorted(p.name.split("_")[0] for p in (run / AUX_DIR).glob("*.npy"))
    assert cached == ["autoencoder", "bilinear", "nearest", "pixelshuffle", "transposed"]  # never the dropped mlp
    fakes = np.load(next((run / AUX_DIR).glob("nearest_*.npy")))
    assert fakes.dtype == np.uint8 and fakes.shape[1:] == (16, 16, 1) and fakes.std() > 0
    model = tmp_path / "m.onnx"
    assert run_cli("export", run, "-o", model).exit_code == 0
    assert Detector.load(model).has_generated_head

    head = load_checkpoint(run)["H"]
    stamps = {p: p.stat().st_mtime_ns for p in (run / AUX_DIR).glob("*.npy")}
    res = run_cli("train", *ARGS, "--out", run, "--retrain-head", "--head-aux", "nearest", "--head-aux-steps", "3")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["head_aux"] == "nearest"
    assert {p: p.stat().st_mtime_ns for p in (run / AUX_DIR).glob("*.npy")} == stamps  # cached, not retrained
    assert not all(torch.equal(head[k], v) for k, v in load_checkpoint(run)["H"].items())  # another pool, head

    res = run_cli("train", *ARGS, "--out", run, "--retrain-head", "--head-aux", "all,-mlp", "--head-aux-steps", "3")
    assert res.exit_code == 0, res.output
    assert all(torch.equal(head[k], v) for k, v in load_checkpoint(run)["H"].items())  # same settings, same head


def test_unknown_aux_family_is_a_one_line_error(tmp_path):
    res = run_cli("train", *ARGS, "--out", tmp_path / "r", "--head-aux", "nearest,stylegan")
    assert res.exit_code == 2
    assert "unknown auxiliary generator family 'stylegan'" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "r" / "checkpoints").exists()
