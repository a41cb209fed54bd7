"""Image arrays kept as ``.npy`` files (a run's validation images, crops and memory bank, an audit's image set),
checked before they reach a network: an edited or damaged array must fail with its reason, not deep inside."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

# Images are in [-1, 1]; a generator's samples with noise added may overshoot a little. Beyond this they were
# saved in another scale (0-255): comparing them with [-1, 1] images gives false verdicts.
RANGE_LIMIT = 1.5


def _header_only(path: Path) -> np.ndarray:
    """The array memory-mapped, so its header is checked before any byte of data is read or allocated (a
    lying header cannot ask for more memory than the file holds). Pickles and .npz archives are refused."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"it is not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):  # an NpzFile: np.load opens an .npz archive whatever the file is called
        arr.close()
        raise ValueError("it is an .npz archive, not a .npy array")
    return arr


def load_float_images(path: Path, channels: Collection[int], size: int) -> np.ndarray:
    """Float32 NCHW images from ``path``: a float array [N, C, size, size] with C in ``channels``, finite, in
    [-1, 1] (give or take RANGE_LIMIT). Raises ValueError with the reason, for the caller to name the file."""
    arr = _header_only(path)
    if arr.dtype.kind != "f" or arr.ndim != 4 or arr.shape[1] not in channels or arr.shape[2:] != (size, size):
        want = " or ".join(str(c) for c in sorted(channels))
        raise ValueError(f"it holds {arr.dtype} {list(arr.shape)}, not float images [N, {want}, {size}, {size}]")
    arr = np.array(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("it holds NaN or infinite values")
    if arr.size and np.abs(arr).max() > RANGE_LIMIT:
        raise ValueError(
            f"its values span [{arr.min():.4g}, {arr.max():.4g}], not [-1, 1]: scale the images first "
            "(8-bit pixels: x / 127.5 - 1)"
        )
    return arr


def load_uint8_crops(path: Path, n: int, crops: Collection[int], size: int, channels: int) -> np.ndarray:
    """uint8 crops [n, K, size, size, channels] with K in ``crops``; ValueError with the reason otherwise."""
    arr = _header_only(path)
    k = " or ".join(str(c) for c in sorted(crops))
    if arr.dtype != np.uint8 or arr.ndim != 5 or arr.shape[1] not in crops or arr.shape[2:] != (size, size, channels):
        raise ValueError(f"it holds {arr.dtype} {list(arr.shape)}, not uint8 crops [{n}, {k}, {size}, {size}, {channels}]")
    if len(arr) != n:
        raise ValueError(f"it holds the crops of {len(arr)} images, not of the {n} validation images")
    return np.array(arr)
