"""The run directory's files, named once in ganaudit.training.rundir: a trained run has them where training, export and the
audit look for them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ganaudit.core.errors import ModelFormatError
from ganaudit.training.rundir import RunDir


def test_a_trained_run_has_every_file_its_readers_expect(tiny_run):
    run = RunDir(tiny_run)
    assert run.is_run() and run.has_checkpoint()
    cfg = run.read_config()
    val = run.load_validation()
    assert val.dtype == np.float32 and val.shape[1:] == (1, cfg["size"], cfg["size"])
    assert len(val) == run.read_info()["n_validation"]
    bank = run.load_memory_bank()
    assert bank.dtype == np.float32 and 0 < len(bank) <= run.read_info()["n_train"]
    assert run.metrics.is_file()


def test_a_folder_without_the_run_files_is_refused_with_the_missing_name(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    run = RunDir(copy)
    run.memory_bank.unlink()
    with pytest.raises(ModelFormatError, match="memory_bank.npy"):
        run.load_memory_bank()
    run.config.unlink()
    assert not run.is_run()
    with pytest.raises(ModelFormatError, match="not a ganaudit run directory"):
        run.read_config()
    assert RunDir(tmp_path / "nowhere").read_info() == {}
