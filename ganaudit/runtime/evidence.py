"""Where the generated-image head sees generation: an occlusion map of its evidence, per window.

The head scores K native-scale crops of an image (imaging.native_crops) and averages their logits. For each
window of a GRID x GRID grid over the crops (side = crop size / 4, overlapping), the window is replaced by
the crop's mean colour in all K crops at once and the head is run again; the window's evidence is how much
the generated logit drops (Zeiler and Fergus 2014, occlusion sensitivity). Positive evidence: that part of the
image makes the head say "generated"; negative: it makes the head say "real".

The map is at the model's input resolution, in crop coordinates. For an image no larger than the model size
the crops cover the whole image, so the map lies over the image; for a larger image each point is the same
window position in each of its K crops (see docs/heatmap.md).

onnxruntime runs the whole graph whatever outputs are asked for, so the ``image`` input is fed one blank
image (the head reads only ``crops``): the anomaly part then costs one image per call, not one per variant.
Runtime layer: numpy and onnxruntime (through the Detector).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .detector import Detector, Prepared

GRID = 7
# Rows of crops per onnxruntime call (each row is K crops).
ROWS_PER_CALL = 64


def windows(size: int, grid: int = GRID) -> list[tuple[int, int, int]]:
    """(top, left, side) of each occluded window: side = size // 4, origins evenly spaced, grid x grid of them."""
    side = max(1, size // 4)
    starts = np.linspace(0, size - side, grid).round().astype(int)
    return [(int(t), int(l), side) for t in starts for l in starts]


def _logits(det: "Detector", crops: np.ndarray) -> np.ndarray:
    """Generated logit of each row of crops [R, K, C, S, S] (the ``image`` input: one blank image)."""
    pre = det.spec.preprocess
    image = np.zeros((1, pre.channels, pre.size, pre.size), np.float32)
    out = []
    for i in range(0, len(crops), ROWS_PER_CALL):
        part = np.ascontiguousarray(crops[i : i + ROWS_PER_CALL], dtype=np.float32)
        out.append(det.session.run(["generated_logit"], {det.input_name: image, "crops": part})[0])
    return np.concatenate(out).astype(np.float64)


def evidence_map(det: "Detector", item: "Prepared", grid: int = GRID) -> np.ndarray:
    """[S, S] float32 in [-1, 1]: each pixel's mean evidence over the windows covering it, divided by the
    largest absolute value (1 = the strongest evidence for "generated", -1 for "real")."""
    k = det.spec.preprocess.native_crops
    crops = item.crops if item.crops is not None else np.repeat(item.tensor[None], k, 0)
    size = crops.shape[-1]
    wins = windows(size, grid)
    fill = np.median(crops, axis=(2, 3), keepdims=True)  # [K, C, 1, 1]: each crop's median colour (its background)
    variants = np.repeat(crops[None], len(wins) + 1, 0)  # row 0: the crops untouched
    for n, (t, l, s) in enumerate(wins, start=1):
        variants[n, :, :, t : t + s, l : l + s] = fill
    logits = _logits(det, variants)
    drop = logits[0] - logits[1:]
    total = np.zeros((size, size), np.float64)
    count = np.zeros((size, size), np.float64)
    for (t, l, s), d in zip(wins, drop):
        total[t : t + s, l : l + s] += d
        count[t : t + s, l : l + s] += 1
    m = total / np.maximum(count, 1)
    peak = float(np.abs(m).max())
    return (m / peak if peak > 0 else m).astype(np.float32)


def evidence_maps(det: "Detector", items: Sequence["Prepared"], grid: int = GRID) -> list[np.ndarray]:
    return [evidence_map(det, item, grid) for item in items]


def for_display(m: np.ndarray) -> np.ndarray:
    """The evidence for "generated" only, scaled to [0, 1] (1 = the strongest window): what the heat maps show."""
    pos = np.clip(np.asarray(m, np.float32), 0, None)
    peak = float(pos.max()) if pos.size else 0.0
    return pos / peak if peak > 0 else pos
