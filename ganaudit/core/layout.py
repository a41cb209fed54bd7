"""How much a set of images shares a layout: decides the fused score's weights and whether D learns rotations."""

from __future__ import annotations

import numpy as np

# Alignment below which images count as stationary (every position alike): texture patches score under 0.0001,
# as chance alone gives after the 1/N correction; centred digits 0.5-1.4; single-object photographs (CIFAR-10
# training classes) 0.004-0.18. Measured on training images only (docs/concepts.md).
STATIONARY_BELOW = 0.002


def alignment(images: np.ndarray) -> float:
    """How much images [N, C, H, W] share a layout: the variance over positions of their mean image (per
    channel, so colour is not layout), over the mean per-pixel variance, less 1/N (what the mean image of N
    stationary images varies by chance). Near 0 when every position looks alike (texture patches), 0.5-1.4
    for centred digits."""
    per_pixel_var = float(images.var(axis=0).mean())
    spatial_var = float(images.mean(axis=0).var(axis=(-2, -1)).mean())
    return max(spatial_var / max(per_pixel_var, 1e-12) - 1.0 / len(images), 0.0)


def is_stationary(aligned_by: float) -> bool:
    """Whether images of this :func:`alignment` look alike at every position (textures, surfaces)."""
    return aligned_by < STATIONARY_BELOW
