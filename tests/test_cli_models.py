"""`ganaudit models` and the shipped models as package data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_models_lists_the_shipped_default():
    from ganaudit import Detector
    from ganaudit.core.shipped import DEFAULT_MODEL, shipped_models

    models = shipped_models()
    assert DEFAULT_MODEL in models, "the default model must ship in ganaudit/models/"
    # about 5 MB of networks + the float16 kNN memory bank (at most 4,096 x 2,048 values, 17 MB) + patch bank
    assert models[DEFAULT_MODEL].stat().st_size < 24_000_000, "keep shipped models small"
    det = Detector.load(models[DEFAULT_MODEL])

    res = run_cli("models", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    row = rows[DEFAULT_MODEL]
    assert row["default"] is True
    assert row["spec_hash"] == det.spec_hash
    assert row["heads"] == det.spec.heads
    assert row["input"]["size"] == det.spec.preprocess.size
    assert row["thresholds"]["anomaly"]["value"] == pytest.approx(det.thresholds.anomaly)
    assert Path(row["path"]) == models[DEFAULT_MODEL]

    res = run_cli("models")
    assert res.exit_code == 0, res.output
    assert f"{DEFAULT_MODEL} (default)" in res.stdout
    assert "threshold:  anomaly >" in res.stdout and det.spec_hash in res.stdout


def test_models_reports_a_broken_file_and_an_empty_folder(tmp_path, monkeypatch, tiny_model):
    import ganaudit.core.shipped

    shutil.copy(tiny_model, tmp_path / "tiny.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    monkeypatch.setattr(ganaudit.core.shipped, "MODELS_DIR", tmp_path)
    res = run_cli("models", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"tiny", "broken"}
    assert "not a loadable ONNX model" in rows["broken"]["error"]
    assert rows["tiny"]["model_name"] == "tiny-zeros" and rows["tiny"]["default"] is False

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(ganaudit.core.shipped, "MODELS_DIR", empty)
    res = run_cli("models")
    assert res.exit_code == 0
    assert res.stdout == "" and "no shipped models" in res.stderr


def test_wheel_ships_the_models(tmp_path):
    """A non-editable build carries ganaudit/models/*.onnx as package data."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ganaudit", src / "ganaudit", ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel offline here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "dist").glob("ganaudit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "ganaudit" / "models").glob("*.onnx"))
    assert shipped, "no shipped models to check"
    for name in shipped:
        assert f"ganaudit/models/{name}" in names
    assert "ganaudit/cli/models.py" in names


def test_every_shipped_model_has_a_model_card_in_the_docs():
    from ganaudit.core.shipped import shipped_models

    page = (ROOT / "docs" / "models.md").read_text()
    for name in shipped_models():
        card = ROOT / "models" / f"{name}.md"
        assert card.is_file(), f"shipped model {name} has no model card models/{name}.md"
        text = card.read_text()
        for section in ("## Training data", "## How to reproduce it", "## Thresholds", "## Intended use",
                        "## Limits", "## Ethical considerations"):  # fmt: skip
            assert section in text, f"models/{name}.md lacks {section!r}"
        assert f'--8<-- "models/{name}.md"' in page, f"docs/models.md does not include models/{name}.md"


def test_the_shipped_patch_bank_model_splits_a_batch_into_bounded_calls_with_the_same_results(mnist_test_images):
    from ganaudit import Detector
    from ganaudit.core.imaging import preprocess_batch
    from ganaudit.core.shipped import DEFAULT_MODEL, shipped_models

    det = Detector.load(shipped_models()[DEFAULT_MODEL])
    assert det.spec.scoring["patch_bank_size"] == 4096 and det.spec.preprocess.size == 32
    assert det.batch_size == 64 and det.rows_per_call == 16  # 16 x 256 positions x 4,096 floats = 64 MiB
    x = preprocess_batch(mnist_test_images[0][:40], det.spec.preprocess)
    calls, run = [], det.session.run
    det.session.run = lambda names, feed: calls.append(len(feed["image"])) or run(names, feed)
    whole = det.run(x)
    assert calls == [16, 16, 8]
    one_by_one = [det.run(x[i : i + 1]) for i in range(len(x))]
    for name in ("anomaly_score", "patch_distance", "generated_logit"):
        np.testing.assert_allclose(whole[name], np.concatenate([o[name] for o in one_by_one]), rtol=1e-5, atol=1e-6)
