"""Image sets for an audit: folders, IDX files, ``.npy`` arrays and training runs (sampled from the generator, or
their held-out validation images / training memory bank), plus reference labels (CSV, class subfolders or IDX).

Every set comes back as float32 NCHW in [-1, 1] through :func:`ganaudit.core.imaging.preprocess` (via
:func:`ganaudit.training.datasets.load_dataset`), the one preprocessing function.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..training.datasets import load_dataset
from ..core.errors import ConfigError
from ..core.files import read_csv_rows
from ..core.npy import load_float_images
from ..training.rundir import RunDir



@dataclass
class ImageSet:
    images: np.ndarray  # float32 NCHW in [-1, 1]
    ids: list[str]
    labels: list[str] | None = None  # class name per image, when the source carries labels
    description: str = ""
    unreadable: int = 0  # files left out because they could not be read or decoded


def is_run(path: str | os.PathLike) -> bool:
    return RunDir(path).is_run()


def _npy(path: Path, size: int) -> ImageSet:
    """A ``.npy`` image set: float NCHW images of 1 or 3 channels at ``size``, finite, at least one (a set of
    another size was compared pixel for pixel with the others, and gave a false memorisation flag)."""
    try:
        arr = load_float_images(path, (1, 3), size)
    except ValueError as e:
        raise ConfigError(f"{path}: {e} (this audit compares images at {size}x{size})") from None
    if len(arr) == 0:
        raise ConfigError(f"{path} holds no images")
    return ImageSet(arr, [f"{path.name}[{i}]" for i in range(len(arr))], None, str(path))


def load_images(source: str, size: int, *, progress: bool = False) -> ImageSet:
    """Load a folder, IDX file (``?range=``/``?label=`` filters), ``.npy`` array or ``sklearn:digits`` at ``size``."""
    if source.endswith(".npy"):
        return _npy(Path(source), size)
    ds = load_dataset(source, size=size, channels="auto", progress=progress)
    labels = None if ds.labels is None else [str(v) for v in ds.labels]
    if labels is None and ds.source.get("kind") == "folder":
        labels = _subfolder_labels(Path(source.partition("?")[0]), ds.ids)
    return ImageSet(ds.images, list(ds.ids), labels, source, len(ds.skipped))


def _subfolder_labels(root: Path, ids: list[str]) -> list[str] | None:
    """The first folder below ``root`` of each image, when every image sits in one."""
    parts = [Path(i).relative_to(root).parts for i in ids]
    if all(len(p) >= 2 for p in parts):
        return [p[0] for p in parts]
    return None


def read_labels_csv(path: str | os.PathLike, ids: list[str]) -> list[str]:
    """Labels from a ``path,label`` CSV (header optional). Paths match image ids in full, relative to the CSV's
    folder, or by file name; every image needs one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--labels: file not found: {path}")
    table: dict[str, str] = {}
    for row in read_csv_rows(path, "--labels"):
        if len(row) >= 2 and row[0] and row[0] != "path":
            table[row[0]] = row[1]
    out = []
    for ident in ids:
        p = Path(ident)
        for key in (ident, str(p.resolve()), os.path.relpath(p, path.parent), p.name):
            if key in table:
                out.append(table[key])
                break
        else:
            raise ConfigError(f"--labels: no label for {ident} in {path}")
    return out


def sample_run(run: str | os.PathLike, n: int, seed: int, progress: bool = False) -> ImageSet:
    """``n`` images from a run's EMA generator (needs torch: the ``[train]`` extra), 512 per call."""
    try:
        from ..training.train import sample
    except ImportError:
        raise ConfigError("sampling a training run needs the training extra: pip install 'ganaudit[train]'") from None
    starts: Iterable[int] = range(0, n, 512)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="sampling the generator", unit="batch", leave=False, file=sys.stderr)
    images = np.concatenate([sample(run, min(512, n - s), seed + s) for s in starts])
    return ImageSet(images, [f"G[{i}]" for i in range(n)], None, f"{n} samples from the generator of {run}")


def run_file(run: str | os.PathLike, name: str) -> ImageSet | None:
    path = Path(run) / name
    return _npy(path, RunDir(run).image_size()) if path.is_file() else None


def drop_shared(ref: ImageSet, other: ImageSet) -> tuple[ImageSet, int]:
    """Remove from ``ref`` every image whose pixels equal an image of ``other`` (a held-out image passed in the
    reference too would look memorised). Returns the filtered set and how many were removed."""

    def key(x: np.ndarray) -> bytes:
        return hashlib.sha1(np.ascontiguousarray(x, dtype=np.float16).tobytes()).digest()

    seen = {key(x) for x in other.images}
    keep = [i for i, x in enumerate(ref.images) if key(x) not in seen]
    if len(keep) == len(ref.images):
        return ref, 0
    labels = None if ref.labels is None else [ref.labels[i] for i in keep]
    return ImageSet(ref.images[keep], [ref.ids[i] for i in keep], labels, ref.description), len(ref.images) - len(keep)
