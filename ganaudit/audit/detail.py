"""Fine detail: how much of each image's variance lies in detail finer than a Gaussian blur of 1 px removes.

A blurry generator (early in training, or one that averages its modes) keeps little of it, in any feature space;
noise adds it. Read in pixels, so it does not depend on the feature space the other figures use. Scale-free:
each image's fine-detail energy is divided by its own variance, so contrast and brightness do not count.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

BLUR_SIGMA = 1.0


def detail_share(images: np.ndarray) -> np.ndarray:
    """Per image [N] (float NCHW), the share of its grey-level variance in fine detail (0 for a flat image)."""
    grey = np.asarray(images, np.float32).mean(1)
    out = np.empty(len(grey), np.float64)
    for i, g in enumerate(grey):
        fine = g - cv2.GaussianBlur(g, (0, 0), BLUR_SIGMA)
        var = float(g.var())
        out[i] = float((fine**2).mean()) / var if var > 1e-8 else 0.0
    return out


def detail_figures(generated: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Median fine-detail share of the generated and reference images, and their ratio (about 1 for a generator
    as sharp as the data, well under 1 for a blurry one)."""
    g, r = float(np.median(detail_share(generated))), float(np.median(detail_share(reference)))
    return {"generated": g, "reference": r, "ratio": g / r if r > 0 else None, "blur_sigma": BLUR_SIGMA}
