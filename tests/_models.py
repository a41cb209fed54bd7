"""Model variants for the tests: the session's tiny run with the generated-image head (test_generated, scan,
service), and the tiny anomaly-only detector with its head dropped from the spec.

The tiny detector may or may not carry a generated-image head (training's default decides). The front ends
must handle both, so their tests use the tiny model as it is *and* a copy that has no generated head.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GENERATED = "generated"


def without_generated_head(src: Path, dst: Path) -> Path:
    """Copy an exported detector, dropping the generated-image head from its spec (as a model trained with
    ``--no-generated-head`` has none): the head is left out of ``heads``, ``outputs``, thresholds, quantiles
    and calibration. The graph is unchanged; the runtime ignores outputs its spec does not name."""
    onnx = pytest.importorskip("onnx")
    from ganaudit.core.spec import METADATA_KEY

    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            spec = json.loads(prop.value)
            spec["heads"] = [h for h in spec["heads"] if h != GENERATED]
            spec["outputs"] = [o for o in spec["outputs"] if o != "generated_logit"]
            for key in ("thresholds", "quantiles", "calibration"):
                spec.get(key, {}).pop(GENERATED, None)
            prop.value = json.dumps(spec)
            break
    else:
        raise AssertionError(f"{src} has no ganaudit spec")
    onnx.save(model, str(dst))
    return dst


# A tiny run WITH the generated-image head (the session's tiny model is trained without it).
HEAD_TRAIN_ARGS = [
    "--size", "16", "--width", "8", "--z-dim", "16", "--steps", "80", "--encoder-steps", "40", "--head-steps", "60",
    "--batch-size", "32", "--sample-every", "40", "--checkpoint-every", "40", "--seed", "0", "--no-progress",
    "--generated-head",
]  # fmt: skip


@pytest.fixture(scope="session")
def head_run(tmp_path_factory, mnist_path) -> Path:
    """A tiny run with both heads (anomaly and generated), trained on MNIST zeros."""
    from .conftest import run_cli

    run = tmp_path_factory.mktemp("runs") / "tiny-head"
    res = run_cli("train", mnist_path, "--label", "0", "--index-range", "0:2000", "--out", run, *HEAD_TRAIN_ARGS)
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture(scope="session")
def head_model(head_run, tmp_path_factory) -> Path:
    """The tiny run with both heads exported to ONNX, named ``tiny-head``."""
    from ganaudit.runtime.detector import Detector

    from .conftest import run_cli

    path = tmp_path_factory.mktemp("models-head") / "tiny-head.onnx"
    res = run_cli("export", head_run, "-o", path, "--name", "tiny-head")
    assert res.exit_code == 0, res.output
    assert "generated threshold" in res.stdout
    assert Detector.load(path).has_generated_head
    return path


@pytest.fixture(scope="session")
def no_head_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny detector without a generated-image head (whatever the session's tiny model carries)."""
    from ganaudit.runtime.detector import Detector

    path = without_generated_head(tiny_model, tmp_path_factory.mktemp("models-nohead") / "tiny-nohead.onnx")
    det = Detector.load(path)
    assert not det.has_generated_head
    return path
