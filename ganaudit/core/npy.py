"""Image arrays kept as ``.npy`` files (a run's validation images and memory bank, an audit's image set),
checked before they reach a network: an edited or damaged array must fail with its reason, not deep inside."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np


def load_float_images(path: Path, channels: Collection[int], size: int) -> np.ndarray:
    """Float32 NCHW images from ``path``: a float array [N, C, size, size] with C in ``channels``, finite
    (pickles refused). Raises ValueError with the reason, for the caller to name the file and the fix."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"it is not a readable .npy array ({e})") from None
    if arr.dtype.kind != "f" or arr.ndim != 4 or arr.shape[1] not in channels or arr.shape[2:] != (size, size):
        want = " or ".join(str(c) for c in sorted(channels))
        raise ValueError(f"it holds {arr.dtype} {list(arr.shape)}, not float images [N, {want}, {size}, {size}]")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("it holds NaN or infinite values")
    return arr
