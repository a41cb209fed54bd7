"""Shared fixtures: one tiny trained run and its exported detector per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ._models import head_model, head_run, no_head_model  # noqa: F401 - session fixtures, shared by every module

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"

# Small enough to train in a few seconds on 2 cores, real enough to score digits sensibly.
TINY_TRAIN_ARGS = [
    "--size", "16", "--width", "8", "--z-dim", "16", "--steps", "150", "--encoder-steps", "100",
    "--batch-size", "32", "--sample-every", "100", "--checkpoint-every", "100", "--seed", "0", "--no-progress",
    "--no-generated-head",  # the anomaly-only model; tests/test_generated.py trains one with the head
]  # fmt: skip


def run_cli(*args: str, input: str | bytes | None = None):
    """Invoke the ganaudit CLI in-process (``input``: its standard input); returns the click Result (exit_code,
    stdout, stderr)."""
    from typer.testing import CliRunner

    from ganaudit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    if not MNIST.is_file():
        pytest.skip(f"MNIST test set not found at {MNIST}")
    return MNIST


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mnist_path) -> Path:
    """A tiny GAN + encoder trained on real MNIST zeros (index < 2000)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = run_cli("train", mnist_path, "--label", "0", "--index-range", "0:2000", "--out", out, *TINY_TRAIN_ARGS)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported to ONNX."""
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    res = run_cli("export", tiny_run, "-o", path, "--name", "tiny-zeros")
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture(scope="session")
def mnist_test_images(mnist_path) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST images with index >= 8000 (never trained on) and their labels."""
    from ganaudit.training.datasets import read_idx

    images = read_idx(mnist_path)[8000:8400]
    labels = read_idx(mnist_path.with_name("t10k-labels-idx1-ubyte.gz"))[8000:8400]
    return images, labels
