"""Training: the CLI smoke run, determinism, resume, data sources and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ganaudit.training.datasets import load_dataset
from ganaudit.core.errors import ConfigError
from ganaudit.training.train import TrainConfig, load_checkpoint
from ganaudit.training.train import train as run_training

from .conftest import run_cli

MICRO = dict(size=16, width=8, z_dim=8, batch_size=16, sample_every=10, checkpoint_every=10, log_every=5)


def micro_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**MICRO, "steps": 20, "encoder_steps": 10, **kw})


@pytest.fixture(scope="module")
def digits():
    return load_dataset("sklearn:digits?label=3", size=16, channels="auto")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir)
    return {f"{net}.{k}": v for net in ("G", "G_ema", "D", "E") for k, v in ckpt[net].items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# --- the CLI smoke run --------------------------------------------------------------------------
def test_cli_smoke_run_writes_a_complete_run_directory(tiny_run):
    for name in ("config.json", "run.json", "validation.npy", "metrics.jsonl", "checkpoints/last.pt"):
        assert (tiny_run / name).is_file(), name
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["size"] == 16 and cfg["channels"] == 1
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["n_train"] + info["n_validation"] == info["n_images"]
    assert info["n_validation"] == round(0.1 * info["n_images"])
    val = np.load(tiny_run / "validation.npy")
    assert val.shape == (info["n_validation"], 1, 16, 16) and val.min() >= -1 and val.max() <= 1
    lines = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 250 and lines[-1]["phase"] == "encoder"
    assert {"d_loss", "g_loss"} <= lines[0].keys()
    assert any("diversity_ratio" in r for r in lines)
    grids = sorted((tiny_run / "samples").glob("step_*.png"))
    assert grids and cv2.imread(str(grids[-1])) is not None
    assert load_checkpoint(tiny_run)["step"] == 250


def test_sample_command_writes_a_grid(tiny_run, tmp_path):
    out = tmp_path / "grid.png"
    res = run_cli("sample", tiny_run, "-n", "16", "-o", out)
    assert res.exit_code == 0, res.output
    grid = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert grid.shape[0] == 4 * 18 + 2 and grid.std() > 0  # 4x4 tiles of 16 px with 2 px padding


# --- determinism and resume -------------------------------------------------------------------
def test_same_seed_gives_identical_weights_and_another_seed_does_not(digits, tmp_path):
    run_training(micro_cfg(seed=1), digits, tmp_path / "a", progress=False)
    run_training(micro_cfg(seed=1), digits, tmp_path / "b", progress=False)
    run_training(micro_cfg(seed=2), digits, tmp_path / "c", progress=False)
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "a", tmp_path / "c")


@pytest.mark.parametrize("stop_at", [13, 25])  # in the GAN phase and in the encoder phase
def test_resume_is_equivalent_to_an_uninterrupted_run(digits, tmp_path, stop_at):
    run_training(micro_cfg(), digits, tmp_path / "straight", progress=False)
    run_training(micro_cfg(), digits, tmp_path / "resumed", progress=False, stop_at=stop_at)
    assert load_checkpoint(tmp_path / "resumed")["step"] == stop_at
    run_training(micro_cfg(), digits, tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics must not repeat steps after a resume"


def test_resume_refuses_different_data(digits, tmp_path):
    run_training(micro_cfg(), digits, tmp_path / "r", progress=False, stop_at=5)
    other = load_dataset("sklearn:digits?label=4", size=16)
    with pytest.raises(Exception, match="data differs"):
        run_training(micro_cfg(), other, tmp_path / "r", resume=True, progress=False)


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ganaudit.cli", "train", "sklearn:digits", "--out", str(out), "--size", "16",
           "--width", "8", "--z-dim", "8", "--batch-size", "16", "--steps", "100000", "--checkpoint-every", "20",
           "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    step = load_checkpoint(out)["step"]
    assert step >= 20
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["step"] <= step + 25 for line in lines)


def test_sigkill_mid_training_resumes_to_a_complete_uncorrupted_run(tmp_path):
    out = tmp_path / "run"
    args = ["train", "sklearn:digits?label=1", "--out", str(out), "--size", "16", "--width", "8", "--z-dim", "8",
            "--batch-size", "16", "--steps", "400", "--encoder-steps", "20", "--checkpoint-every", "10",
            "--sample-every", "50", "--no-progress", "--no-generated-head"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "ganaudit.cli", *args], stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: only atomic writes keep the files whole
    proc.wait(timeout=30)
    killed_at = load_checkpoint(out)["step"]
    assert 10 <= killed_at < 420, "the run was not killed mid-training"

    res = run_cli(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out)["step"] == 420
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 420  # no duplicated or half-written lines
    assert run_cli("export", out, "-o", tmp_path / "m.onnx").exit_code == 0


# --- data sources -------------------------------------------------------------------------------
def test_idx_source_with_label_filter_and_index_range(mnist_path):
    ds = load_dataset(str(mnist_path), size=16, label=0, index_range="0:1000")
    assert set(ds.labels.tolist()) == {0}
    assert 70 < len(ds) < 130  # about a tenth of 1000
    assert all(int(i.split("[")[1][:-1]) < 1000 for i in ds.ids)
    assert ds.images.shape[1:] == (1, 16, 16)


def test_hostile_idx_files_are_refused_by_their_header_without_reading_the_rest(tmp_path):
    """Found by trying: a 5 MB .gz that expands to 5 GB was decompressed whole before its header was checked."""
    import gzip

    from ganaudit.core.errors import ConfigError
    from ganaudit.training.datasets import read_idx

    bomb = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (100000).to_bytes(4, "big") + (300).to_bytes(4, "big") * 2)
        f.write(bytes(2**20) * 64)  # 64 MB of zeros in a file of about 64 kB; the header declares 9 GB
    with pytest.raises(ConfigError, match="declares more than"):
        read_idx(bomb)
    short = tmp_path / "short-images-idx3-ubyte"
    short.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(100))
    with pytest.raises(ConfigError, match="is truncated"):
        read_idx(short)
    long = tmp_path / "long-images-idx1-ubyte"
    long.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes(4))
    with pytest.raises(ConfigError, match="past what its header declares"):
        read_idx(long)
    res = run_cli("train", bomb, "--out", tmp_path / "run")
    assert res.exit_code == 2 and "declares more than" in res.stderr and not (tmp_path / "run").exists()


def test_a_small_file_that_declares_many_images_is_refused_before_memory_runs_out(tmp_path, monkeypatch):
    """A 1 KB .gz declaring a million 1x1 images: each is enlarged to --size, and training reached 9.5 GB of
    memory before failing. The preprocessed set is bounded by an eighth of the machine's memory (here set low)."""
    import gzip

    from ganaudit.training import datasets

    many = tmp_path / "many-images-idx3-ubyte.gz"
    with gzip.open(many, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (1_000_000).to_bytes(4, "big") + (1).to_bytes(4, "big") * 2 + bytes(1_000_000))
    monkeypatch.setattr(datasets, "dataset_budget", lambda: 20 * 2**20)  # 20 MiB: 1,706 images of 3x32x32
    res = run_cli("train", many, "--out", tmp_path / "run", "--size", "32", "--channels", "3", "--no-progress")
    assert res.exit_code == 2 and "more than 1706 images, over 20 MiB" in res.stderr, res.output
    assert "once preprocessed to 32 px" in res.stderr and "--index-range" in res.stderr, res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()
    labels = tmp_path / "lab-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") * 2 + bytes(2))
    images = tmp_path / "lab-images-idx3-ubyte"
    images.write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + bytes(32))
    for args, message in (([images, "--labels", labels, "--label", "0"], "a labels IDX file is 1-D"),
                          ([f"{images}?label=x"], "must be a whole number")):  # fmt: skip
        res = run_cli("train", *args, "--out", tmp_path / "run2", "--no-progress")
        assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output, res.output


def test_sklearn_digits_query_label():
    ds = load_dataset("sklearn:digits?label=3", size=16)
    assert len(ds) == 183 and set(ds.labels.tolist()) == {3}


def test_folder_with_mixed_sizes_and_channels_and_a_bad_file(tmp_path, caplog):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 255, (40, 30), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "b.jpg"), rng.integers(0, 255, (20, 50, 3), dtype=np.uint8))
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "c.png"), rng.integers(0, 255, (64, 64, 4), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_dataset(str(tmp_path), size=32)
    assert len(ds) == 3 and ds.images.shape == (3, 3, 32, 32)
    assert ds.skipped and "broken.png" in ds.skipped[0]
    assert "skipped 1 unreadable file(s)" in caplog.text


def test_all_gray_folder_gives_one_channel(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((10, 10), 40 * i, np.uint8))
    assert load_dataset(str(tmp_path), size=16).channels == 1


# --- bad input: one line on stderr, exit code 2, no traceback --------------------------------------
def _empty_dir(tmp_path: Path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def _undecodable_dir(tmp_path: Path) -> str:
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(os.urandom(100))
    return str(d)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p: ["/no/such/folder", "--out", p / "o"], "path not found"),
        (lambda p: [_empty_dir(p), "--out", p / "o"], "no images found"),
        (lambda p: [_undecodable_dir(p), "--out", p / "o"], "no image could be decoded"),
        (lambda p: ["sklearn:digits", "--out", p / "o", "--size", "48"], "power of two"),
        (lambda p: ["sklearn:digits", "--out", p / "o", "--resume"], "no checkpoint"),
        (lambda p: ["sklearn:digits", "--out", p / "o", "--loss", "l2"], "unknown loss"),
        (lambda p: ["sklearn:digits", "--out", p / "o", "--index-range", "9:3"], "empty"),
        (lambda p: ["sklearn:digits", "--out", p / "o", "--d-head", "mlp"], "unknown d-head"),
    ],
    ids=["missing", "empty", "undecodable", "size", "resume", "loss", "range", "d-head"],
)
def test_bad_input_is_a_one_line_error_with_exit_2(tmp_path, make_args, message):
    res = run_cli("train", *make_args(tmp_path), "--steps", "1", "--encoder-steps", "1", "--no-progress")
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr
    assert "Traceback" not in res.output


def test_existing_run_is_not_overwritten_without_resume(tiny_run):
    res = run_cli("train", "sklearn:digits", "--out", tiny_run, "--size", "16", "--no-progress")
    assert res.exit_code == 2 and "already holds a training run" in res.stderr


def test_every_command_documents_every_option():
    from ganaudit.cli import app
    import typer.main

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"{name} --{param.name} has no help text"


def test_rotation_task_trains_exports_and_fuses_its_score_in_the_oriented_layout(tmp_path, mnist_path):
    from ganaudit import Detector
    from ganaudit.training.export_fit import FUSION_WEIGHTS

    run, model = tmp_path / "rot", tmp_path / "rot.onnx"
    args = ["--size", "16", "--width", "8", "--z-dim", "8", "--steps", "30", "--encoder-steps", "10", "--batch-size", "16",
            "--no-generated-head", "--no-progress", "--no-audit", "--rotation", "1"]  # fmt: skip
    res = run_cli("train", mnist_path, "--label", "1", "--index-range", "0:2000", "--out", run, *args,
                  "--augment", "flip, translation")  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["rotation"] == 1.0 and cfg["augment"] == "translation,flip"
    assert run_cli("export", run, "-o", model).exit_code == 0
    det = Detector.load(model)
    sc = det.spec.scoring
    assert sc["layout"] == "oriented" and sc["weight"] == list(FUSION_WEIGHTS["oriented"])
    assert "rotation_score" in det.output_names and sc["components"][-1] == "rotation_score"
    v = det.detect(np.zeros((28, 28), np.uint8))
    assert v.components["rotation_score"] > 0  # a summed cross-entropy
    # the oriented layout scores the larger of its weighted z-scores (feature residual, rotation score)
    assert sc["combine"] == "max" and "max(" in run_cli("info", model).stdout
    z = [(np.log(v.components[n] + 1e-8) - c) / s for n, c, s in zip(sc["components"], sc["center"], sc["scale"])]
    assert v.anomaly_score == pytest.approx(max(w * x for w, x in zip(sc["weight"], z) if w), rel=1e-4, abs=1e-4)
    bad = run_cli("train", mnist_path, "--out", tmp_path / "x", "--rotation", "-1", *args[:-2])
    assert bad.exit_code == 2 and "rotation" in bad.stderr
    bad = run_cli("train", mnist_path, "--out", tmp_path / "x", "--augment", "rotate", *args)
    assert bad.exit_code == 2 and "unknown augmentation rotate" in bad.stderr and not (tmp_path / "x").exists()


def test_export_refuses_the_oriented_layout_without_the_rotation_task(tiny_run, tmp_path):
    res = run_cli("export", tiny_run, "-o", tmp_path / "m.onnx", "--layout", "oriented")
    assert res.exit_code == 2 and "--rotation" in res.stderr and not (tmp_path / "m.onnx").exists()


def test_rotation_task_and_npr_are_on_by_default_for_colour_photographs_only(tmp_path, tiny_run):
    """--rotation and --head-npr unset: on for colour images with a layout (a centred object), off for digits."""
    from ganaudit.training.rundir import RunDir

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    yy, xx = np.mgrid[:16, :16]
    for i in range(40):  # a coloured blob in the middle, sky above, ground below: a way up
        img = np.zeros((16, 16, 3), np.uint8)
        img[:8] = (200, 120, 60)
        img[8:] = (40, 110, 40)
        img[(yy - 8) ** 2 + (xx - 8) ** 2 < 12 + i % 5] = (30, 30, 220)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:02d}.png"), img)
    args = ["--size", "16", "--width", "8", "--z-dim", "8", "--steps", "4", "--encoder-steps", "2", "--batch-size", "8",
            "--no-generated-head", "--no-progress", "--no-audit"]  # fmt: skip
    res = run_cli("train", folder, "--out", tmp_path / "rgb", *args)
    assert res.exit_code == 0, res.output
    rgb, grey = RunDir(tmp_path / "rgb").read_config(), RunDir(tiny_run).read_config()  # grey: MNIST, same defaults
    assert rgb["rotation"] == 1.0 and rgb["head_npr"] is True and rgb["head_resize_max"] == 3.0
    assert grey["rotation"] == 0.0 and grey["head_npr"] is False and grey["head_resize_max"] == 2.0
    off = run_cli("train", folder, "--out", tmp_path / "off", "--rotation", "0", "--head-resize-max", "2", *args)
    assert off.exit_code == 0 and RunDir(tmp_path / "off").read_config()["rotation"] == 0.0
    assert RunDir(tmp_path / "off").read_config()["head_resize_max"] == 2.0
    bad = run_cli("train", folder, "--out", tmp_path / "bad", "--head-resize-max", "0.1", *args)
    assert bad.exit_code == 2 and "head_resize_max" in bad.output.replace("-", "_")


# --- the GAN step's recipe: D's linear head and the shared generated batch (issue 16, T1) ----------------------
@pytest.mark.parametrize("reuse, n_critic, draws", [(True, 1, 1), (False, 1, 2), (True, 2, 2), (False, 2, 3)])
def test_gan_step_draws_one_generated_batch_per_d_step_when_the_g_step_reuses_it(digits, tmp_path, reuse, n_critic, draws):
    from ganaudit.training.train import Trainer, prepare_run

    cfg = micro_cfg(reuse_fakes=reuse, n_critic=n_critic)
    trainer = Trainer(cfg, prepare_run(cfg, digits, tmp_path / "r", {}), tmp_path / "r", torch.device("cpu"))
    calls = []
    trainer.nets.G.register_forward_hook(lambda *_: calls.append(1))
    before = [p.detach().clone() for p in trainer.nets.G.parameters()]
    for _ in range(3):
        losses = trainer._one_step()
        trainer.step += 1
    assert len(calls) == 3 * draws
    assert all(np.isfinite(v) for v in losses.values())
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.nets.G.parameters())), "G must still learn"


def test_a_run_from_before_the_linear_head_loads_resumes_and_exports(digits, tmp_path):
    """A run whose config.json predates d_head and reuse_fakes keeps the conv head and fresh G batches."""
    from ganaudit.training.rundir import RunDir
    from ganaudit.training.train import load_networks

    run = tmp_path / "old"
    run_training(micro_cfg(d_head="conv", reuse_fakes=False), digits, run, progress=False, stop_at=12)
    config = RunDir(run).read_config()
    del config["d_head"], config["reuse_fakes"]
    RunDir(run).write_config(config)
    run_training(micro_cfg(d_head="conv", reuse_fakes=False), digits, tmp_path / "straight", progress=False)
    run_training(micro_cfg(), digits, run, resume=True, progress=False)
    assert_same_weights(tmp_path / "straight", run)
    cfg, nets, _ = load_networks(run)
    assert (cfg.d_head, cfg.reuse_fakes) == ("conv", False)
    assert isinstance(nets.D.head[0], torch.nn.Conv2d)
    res = run_cli("export", run, "-o", tmp_path / "old.onnx")
    assert res.exit_code == 0, res.output


def test_the_dcgan_speed_step_trains_exports_and_scans_from_the_cli(tmp_path, mnist_path):
    """`--d-head linear --reuse-fakes`: D judges with one linear map, and the run goes through export and scan."""
    from ganaudit.training.train import load_networks

    run, model = tmp_path / "fast", tmp_path / "fast.onnx"
    args = ["--size", "16", "--width", "8", "--z-dim", "8", "--steps", "6", "--encoder-steps", "3", "--head-steps", "3",
            "--batch-size", "8", "--no-progress", "--no-audit", "--label", "1", "--index-range", "0:400"]  # fmt: skip
    res = run_cli("train", mnist_path, "--out", run, "--d-head", "linear", "--reuse-fakes", *args)
    assert res.exit_code == 0, res.output
    cfg, nets, _ = load_networks(run)
    assert (cfg.d_head, cfg.reuse_fakes) == ("linear", True)
    assert type(nets.D.head[0]) is torch.nn.Flatten and isinstance(nets.D.head[1], torch.nn.Linear)
    assert len(nets.D.head) == 2
    assert run_cli("export", run, "-o", model).exit_code == 0
    res = run_cli("scan", run / "samples", "--model", model, "--out", tmp_path / "report", "--no-progress")
    assert res.exit_code == 0, res.output
    counts = json.loads((tmp_path / "report" / "summary.json").read_text())["counts"]
    assert counts["ok"] == len(list((run / "samples").glob("*.png"))) > 0 and counts["error"] == 0


def test_the_default_gan_step_keeps_the_conv_head_and_two_generator_batches(tiny_run):
    from ganaudit.training.train import load_networks

    cfg, nets, _ = load_networks(tiny_run)
    assert (cfg.d_head, cfg.reuse_fakes) == ("conv", False)
    assert isinstance(nets.D.head[0], torch.nn.Conv2d)
