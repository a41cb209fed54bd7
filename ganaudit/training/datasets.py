"""Training data sources: image folders, IDX files (MNIST style) and ``sklearn:digits``.

Every source goes through :func:`ganaudit.core.imaging.preprocess`, the same function the runtime uses.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs

import numpy as np

from ..core.errors import ConfigError, ImageDecodeError
from ..core.files import display_path, iter_files
from ..core.imaging import decode, head_regions, preprocess, stack_head_regions
from ..core.spec import PreprocessSpec

log = logging.getLogger(__name__)

SKLEARN_DIGITS = "sklearn:digits"
MAX_IDX_BYTES = 2**31  # the most pixel data an IDX file may declare (MNIST's training set: 47 MB)


@dataclass
class Dataset:
    """Preprocessed images (float32 NCHW in [-1, 1]) with ids and optional labels."""

    images: np.ndarray
    ids: list[str]
    labels: np.ndarray | None
    source: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    # uint8 [N, k, S, S, C]: the generated-image head's crops of each image (imaging.head_regions), or None.
    native: np.ndarray | None = None
    # How ``native`` was cut: (native_crops, scale_view), or None when unknown.
    crop_policy: tuple[int, bool] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def fingerprint(self) -> str:
        """A hash of the exact pixels the model sees, for provenance."""
        return hashlib.sha256(np.ascontiguousarray(self.images, dtype=np.float16).tobytes()).hexdigest()[:16]

    def subset(self, idx: np.ndarray) -> "Dataset":
        labels = None if self.labels is None else self.labels[idx]
        native = None if self.native is None else self.native[idx]
        return Dataset(
            self.images[idx], [self.ids[i] for i in idx], labels, dict(self.source), native=native,
            crop_policy=self.crop_policy,
        )  # fmt: skip


def parse_index_range(text: str | None) -> tuple[int, int | None]:
    """``"0:8000"`` -> (0, 8000); ``":8000"`` -> (0, 8000); ``"8000:"`` -> (8000, None)."""
    if not text:
        return 0, None
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not m:
        raise ConfigError(f"index range {text!r} must look like START:STOP, e.g. 0:8000")
    start = int(m[1]) if m[1] else 0
    stop = int(m[2]) if m[2] else None
    if stop is not None and stop <= start:
        raise ConfigError(f"index range {text!r} is empty")
    return start, stop


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` allowed): uint8 images [N, H, W] or labels [N]."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"path not found: {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            # Only what the header declares is read (plus one byte, to see trailing data): a small .gz that
            # expands to gigabytes is refused by its header, not decompressed into memory.
            magic = f.read(4)
            if len(magic) < 4 or magic[:3] != b"\x00\x00\x08":
                raise ConfigError(f"{p} is not an unsigned-byte IDX file (bad magic number)")
            raw_dims = f.read(4 * magic[3])
            dims = [int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(len(raw_dims) // 4)]
            size = math.prod(dims)
            if len(dims) != magic[3] or size > MAX_IDX_BYTES or max(dims, default=0) > MAX_IDX_BYTES:
                raise ConfigError(f"{p}: its header ({dims}) is cut short or declares more than {MAX_IDX_BYTES} bytes")
            data = f.read(size + 1)
    except (OSError, EOFError) as e:
        raise ConfigError(f"cannot read IDX file {p}: {e}") from None
    if len(data) != size:
        what = "is truncated" if len(data) < size else "has data past what its header declares"
        raise ConfigError(f"{p} {what}: header says {dims}")
    return np.frombuffer(data, np.uint8).reshape(dims)


def guess_labels_file(images_path: Path) -> Path | None:
    """MNIST naming: ``t10k-images-idx3-ubyte.gz`` -> ``t10k-labels-idx1-ubyte.gz``."""
    name = images_path.name.replace("images", "labels").replace("idx3", "idx1")
    candidate = images_path.with_name(name)
    return candidate if candidate != images_path and candidate.is_file() else None


def _split_query(source: str) -> tuple[str, dict[str, str]]:
    base, _, query = source.partition("?")
    return base, {k: v[-1] for k, v in parse_qs(query).items()}


def _iter_arrays(
    arrays: np.ndarray, labels: np.ndarray | None, prefix: str, start: int, stop: int | None, label: int | None
) -> Iterator[tuple[str, np.ndarray, int | None]]:
    stop = len(arrays) if stop is None else min(stop, len(arrays))
    for i in range(start, stop):
        lab = None if labels is None else int(labels[i])
        if label is None or lab == label:
            yield f"{prefix}[{i}]", arrays[i], lab


def _iter_folder(root: Path, skipped: list[str]) -> Iterator[tuple[str, np.ndarray, None]]:
    for cand in iter_files([root]):
        if cand.error:
            skipped.append(f"{display_path(cand.path)} ({cand.error})")
            continue
        try:
            yield cand.path, decode(cand.path), None
        except ImageDecodeError as e:
            skipped.append(f"{display_path(cand.path)} ({e})")


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("sklearn:digits needs scikit-learn: pip install 'ganaudit[train]'") from None
    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64)


def iter_source(
    source: str,
    *,
    label: int | None = None,
    labels_file: str | os.PathLike | None = None,
    index_range: str | None = None,
    skipped: list[str] | None = None,
) -> tuple[Iterator[tuple[str, np.ndarray, int | None]], dict]:
    """Open a data source. Returns an iterator of (id, decoded uint8 image, label) and a description."""
    base, query = _split_query(source)
    if "label" in query and label is None:
        try:
            label = int(query["label"])
        except ValueError:
            raise ConfigError(f"label={query['label']!r} in {source!r} must be a whole number") from None
    start, stop = parse_index_range(index_range or query.get("range"))
    desc = {"source": base, "label": label, "index_range": [start, stop]}
    skipped = [] if skipped is None else skipped
    if base == SKLEARN_DIGITS:
        images, labels = _load_digits()
        return _iter_arrays(images, labels, "digits", start, stop, label), {**desc, "kind": "sklearn-digits"}
    path = Path(base)
    if not path.exists():
        raise ConfigError(f"path not found: {path}")
    if path.is_dir():
        if label is not None:
            raise ConfigError("--label applies to labelled sources (IDX files, sklearn:digits), not folders")
        return _iter_folder(path, skipped), {**desc, "kind": "folder"}
    if "idx" in path.name or path.suffix in (".idx", ".ubyte"):
        images = read_idx(path)
        if images.ndim != 3:
            raise ConfigError(f"{path} holds {images.ndim}-D data; an image IDX file is 3-D (N, H, W)")
        lab_path = Path(labels_file) if labels_file else guess_labels_file(path)
        labels = read_idx(lab_path) if lab_path else None
        if labels is not None and labels.ndim != 1:
            raise ConfigError(f"{lab_path} holds {labels.ndim}-D data; a labels IDX file is 1-D (N)")
        if labels is not None and len(labels) != len(images):
            raise ConfigError(f"{lab_path} has {len(labels)} labels for {len(images)} images")
        if label is not None and labels is None:
            raise ConfigError(f"--label needs a labels file for {path}: pass --labels FILE")
        desc = {**desc, "kind": "idx", "labels_file": str(lab_path) if lab_path else None}
        return _iter_arrays(images, labels, path.name, start, stop, label), desc
    raise ConfigError(
        f"cannot tell what {path} is: give an image folder, an IDX file (name containing 'idx'), or {SKLEARN_DIGITS}"
    )


def dataset_budget() -> int:
    """The most bytes a preprocessed data set may take: an eighth of the machine's memory (stacking it into
    one array doubles that for a moment). A 1 KB IDX file declaring a million 1x1 images took 9.5 GB."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): 2 GiB
        return 2**31


def load_dataset(
    source: str,
    *,
    size: int,
    channels: int | str = "auto",
    fit: str = "stretch",
    label: int | None = None,
    labels_file: str | os.PathLike | None = None,
    index_range: str | None = None,
    progress: bool = False,
    native_crops: int = 0,
    scale_view: bool = True,
) -> Dataset:
    """Load and preprocess a whole source. ``channels="auto"`` picks 1 if every image is grayscale, else 3.

    With ``native_crops`` K > 0 it also keeps the generated-image head's crops of each image (``Dataset.native``,
    uint8), cut by its crop policy (imaging.head_regions): K native-scale crops, and with ``scale_view`` K more of
    each large image downscaled, when the source has one (training with ``TrainConfig(generated_head=True)``
    needs them).
    """
    skipped: list[str] = []
    items, desc = iter_source(source, label=label, labels_file=labels_file, index_range=index_range, skipped=skipped)
    auto = channels == "auto"
    spec = PreprocessSpec(size=size, channels=3 if auto else int(channels), fit=fit)
    ids, rows, labels, all_gray, natives = [], [], [], True, []
    crop_spec = PreprocessSpec(size=size, channels=1, native_crops=native_crops, scale_view=scale_view) if native_crops else None
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="loading images", unit="img", leave=False)
    budget, row_bytes = dataset_budget(), 4 * spec.channels * size * size
    for ident, image, lab in items:
        if (len(rows) + 1) * row_bytes > budget:
            raise ConfigError(
                f"{source}: more than {len(rows)} images, over {budget / 2**20:,.0f} MiB once preprocessed to {size} px "
                f"(an eighth of this machine's memory); train on part of it (--index-range, a label) or at a "
                f"smaller --size"
            )  # fmt: skip
        all_gray &= image.ndim == 2 or image.shape[2] == 1
        ids.append(ident)
        rows.append(preprocess(image, spec))
        labels.append(lab)
        if crop_spec is not None:
            natives.append(head_regions(image, crop_spec))
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning("skipped %d unreadable file(s): %s", len(skipped), shown)
    if not rows:
        what = "no image could be decoded" if skipped else "no images found"
        raise ConfigError(f"{what} in {source}" + (f" (label={label})" if label is not None else ""))
    images = np.stack(rows)
    if auto and all_gray:
        images = np.ascontiguousarray(images[:, :1])
    lab_arr = None if labels[0] is None else np.asarray(labels, dtype=np.int64)
    native = stack_head_regions(natives) if natives else None
    policy = (native_crops, scale_view) if native is not None else None
    return Dataset(images, ids, lab_arr, {**desc, "count": len(ids)}, skipped, native, policy)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / validation index split; validation gets at least one image when n >= 2."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
