"""Image grids for sample sheets and reports (numpy + OpenCV only)."""

from __future__ import annotations

import math

import cv2
import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """NCHW float in [-1, 1] -> NHWC uint8."""
    x = np.clip((np.asarray(images, np.float32) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """NCHW float in [-1, 1] -> one HxWxC uint8 image, tiles in a near-square grid."""
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i, tile in enumerate(tiles):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = tile
    return out


def encode_png(image: np.ndarray) -> bytes:
    """Encode an HxW, HxWx1 or HxWx3 (RGB) uint8 image as PNG bytes."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
