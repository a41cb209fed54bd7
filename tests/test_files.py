"""Walking input paths: order, filtering, symlinks, errors as candidates."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganaudit.core.errors import ConfigError
from ganaudit.core.files import Candidate, WalkStats, display_path, iter_files
from ganaudit.core.imaging import decode

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file system features")


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rel(cands: list[Candidate], root: Path) -> list[str]:
    return [os.path.relpath(c.path, root) for c in cands]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("b.png", "a.JPG", "c.txt", "sub/z.webp", "sub/deeper/y.TIFF", "sub/notes.md", "d.jpeg", ".e.gif"):
        touch(tmp_path / name)
    return tmp_path


def test_recursive_sorted_case_insensitive_and_counted(tree):
    stats = WalkStats()
    cands = list(iter_files([tree], stats=stats))
    assert all(c.error is None and isinstance(c.path, str) for c in cands)
    assert rel(cands, tree) == [".e.gif", "a.JPG", "b.png", "d.jpeg", "sub/deeper/y.TIFF", "sub/z.webp"]
    assert stats.skipped_non_image == 2  # c.txt, sub/notes.md


def test_order_is_deterministic(tree):
    assert list(iter_files([tree])) == list(iter_files([str(tree)]))


def test_non_recursive_stays_at_the_top(tree):
    assert rel(list(iter_files([tree], recursive=False)), tree) == [".e.gif", "a.JPG", "b.png", "d.jpeg"]


def test_custom_extensions_with_or_without_dot(tree):
    assert rel(list(iter_files([tree], extensions={"png", ".WEBP"})), tree) == ["b.png", "sub/z.webp"]


def test_file_argument_is_yielded_whatever_its_extension(tree):
    cands = list(iter_files([tree / "c.txt", tree / "sub"]))
    assert cands[0] == Candidate(str(tree / "c.txt"))
    assert rel(cands[1:], tree) == ["sub/deeper/y.TIFF", "sub/z.webp"]


def test_a_single_path_need_not_be_wrapped_in_a_list(tree):
    assert list(iter_files(str(tree))) == list(iter_files([tree]))


def test_missing_path_raises_config_error_at_call_time(tree):
    with pytest.raises(ConfigError, match="path not found: .*nope"):
        iter_files([tree, tree / "nope"])  # raised before anything is iterated


def test_walk_streams_one_directory_at_a_time(tmp_path):
    touch(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    it = iter_files([tmp_path])
    assert os.path.relpath(next(it).path, tmp_path) == os.path.join("a", "1.png")
    touch(tmp_path / "b" / "2.png")  # created after the walk started: b is listed only when reached
    assert rel(list(it), tmp_path) == [os.path.join("b", "2.png")]


@posix_only
def test_symlink_loop_terminates_with_an_error_candidate(tmp_path):
    touch(tmp_path / "top" / "sub" / "img.png")
    os.symlink("..", tmp_path / "top" / "sub" / "up")  # top/sub/up -> top
    os.symlink("self.png", tmp_path / "top" / "self.png")  # a link to itself
    stats = WalkStats()
    cands = list(iter_files([tmp_path / "top"], stats=stats))
    by_path = {os.path.relpath(c.path, tmp_path / "top"): c for c in cands}
    assert set(by_path) == {"self.png", "sub/img.png", "sub/up"}
    assert by_path["sub/img.png"].error is None
    assert by_path["sub/up"].error.startswith("symlink loop:")
    assert "leads back to" in by_path["sub/up"].error
    assert by_path["self.png"].error.startswith("symlink loop:")
    assert stats.errors == 2


@posix_only
def test_directory_symlinks_are_followed(tmp_path):
    touch(tmp_path / "real" / "x.png")
    (tmp_path / "scan").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "scan" / "link")
    cands = list(iter_files([tmp_path / "scan"]))
    assert cands == [Candidate(str(tmp_path / "scan" / "link" / "x.png"))]


@posix_only
def test_broken_symlink_becomes_an_error_candidate(tmp_path):
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    touch(tmp_path / "ok.png")
    cands = list(iter_files([tmp_path]))
    assert cands[0].path == str(tmp_path / "link.png")
    assert cands[0].error.startswith("broken symlink:") and "gone.png" in cands[0].error
    assert cands[1] == Candidate(str(tmp_path / "ok.png"))


@posix_only
def test_fifo_with_image_extension_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (cand,) = list(iter_files([tmp_path]))
    assert cand.error == "not a regular file (device, pipe or socket)"
    # Named and inside a walked folder, it is still one file: one row (found by trying)
    (first,) = list(iter_files([tmp_path / "pipe.png", tmp_path]))
    assert first.path == str(tmp_path / "pipe.png")  # named: the scan reports it when it reads it


@posix_only
def test_unreadable_directory_becomes_an_error_candidate(tmp_path):
    touch(tmp_path / "locked" / "x.png")
    touch(tmp_path / "open" / "y.png")
    (tmp_path / "locked").chmod(0)
    try:
        if os.access(tmp_path / "locked", os.R_OK):
            pytest.skip("running as a user (e.g. root) that ignores directory permissions")
        cands = list(iter_files([tmp_path]))
        assert cands[0].path == str(tmp_path / "locked") and cands[0].error.startswith("cannot read directory")
        assert cands[1] == Candidate(str(tmp_path / "open" / "y.png"))
    finally:
        (tmp_path / "locked").chmod(0o700)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a file system that allows non-UTF-8 names")
def test_non_utf8_names_round_trip_and_open(tmp_path):
    raw_dir = os.fsencode(tmp_path)
    with open(os.path.join(raw_dir, b"caf\xe9.png"), "wb") as f:
        Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(f, "PNG")
    for arg in (tmp_path, raw_dir):
        (cand,) = list(iter_files([arg]))
        assert isinstance(cand.path, str) and os.fsencode(cand.path).endswith(b"caf\xe9.png")
        assert decode(cand.path)[0, 0].tolist() == [9, 9, 9]
        assert display_path(cand.path).endswith("caf\\xe9.png")
        display_path(cand.path).encode("utf-8")  # printable
