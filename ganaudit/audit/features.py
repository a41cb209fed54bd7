"""Image features for the audit metrics.

``random``: a fixed, seeded, randomly initialised convolutional network in numpy (three 3x3 conv + ReLU + 2x2
average-pool stages, 32 -> 64 -> 128 channels, He-initialised). Its output is the 2x2-pooled last stage (512) and
the global means of the first two stages (96): 608 numbers per image. No audited generator was trained against it,
and it needs no download; it sees textures, strokes and layout, not semantics (see docs/auditing.md).

``FILE.onnx``: a user's feature extractor run by onnxruntime: its first input takes float32 NCHW images in [-1, 1],
its first output (flattened per image) is the feature vector.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..core.errors import ConfigError, ModelFormatError

FEATURE_SIZE = 32
SEED = 20201  # fixed: every audit with the random features uses the same network
WIDTHS = (32, 64, 128)
BATCH = 256
# What ``--features auto`` means. ``patches`` wins A1 on CIFAR-10 but not on MNIST (its spectral block reads light
# pixel noise as lost fidelity), so the default stays the random net (docs/auditing.md).
AUTO = "random"

Extractor = Callable[[np.ndarray], np.ndarray]


def to_rgb_size(images: np.ndarray, size: int) -> np.ndarray:
    """NCHW float in [-1, 1] with 1 or 3 channels -> N x 3 x size x size (gray replicated, area/linear resize)."""
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    if images.shape[2:] == (size, size):
        return np.ascontiguousarray(images, dtype=np.float32)
    shrink = images.shape[2] > size
    inter = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = [cv2.resize(img.transpose(1, 2, 0), (size, size), interpolation=inter).transpose(2, 0, 1) for img in images]
    return np.stack(out).astype(np.float32)


class RandomConvNet:
    """The seeded random network; call it on NCHW images in [-1, 1] (any size, 1 or 3 channels)."""

    def __init__(self, seed: int = SEED) -> None:
        rng = np.random.default_rng(seed)
        self.weights = []
        c_in = 3
        for c_out in WIDTHS:
            fan_in = 9 * c_in
            self.weights.append(rng.normal(0, np.sqrt(2.0 / fan_in), (fan_in, c_out)).astype(np.float32))
            c_in = c_out

    @property
    def dim(self) -> int:
        return 4 * WIDTHS[-1] + sum(WIDTHS[:-1])

    @staticmethod
    def _conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """3x3 'same' convolution of NHWC x with weights [9*C, C_out], then ReLU."""
        n, h, wd, c = x.shape
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # n, h, w, c, 3, 3
        cols = cols.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * wd, 9 * c)
        return np.maximum(cols @ w, 0).reshape(n, h, wd, -1)

    @staticmethod
    def _pool(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = to_rgb_size(images, FEATURE_SIZE).transpose(0, 2, 3, 1)
        means = []
        for i, w in enumerate(self.weights):
            x = self._pool(self._conv(x, w))
            if i < len(self.weights) - 1:
                means.append(x.mean(axis=(1, 2)))
        n, h, wd, c = x.shape
        last = x.reshape(n, 2, h // 2, 2, wd // 2, c).mean(axis=(2, 4)).reshape(n, -1)
        return np.concatenate([last, *means], axis=1)


MAX_FEATURE_INPUT = 1024  # the largest fixed input side a --features model may ask the audit to resize to


class OnnxFeatures:
    """A user's ONNX feature extractor (float32 NCHW input in [-1, 1]; first output flattened)."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        from ..core.threads import session_options

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--features: file not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for unreadable graphs
            raise ModelFormatError(f"--features: {path} is not a usable ONNX model ({str(e).splitlines()[0]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4:
            raise ModelFormatError(f"--features: {path} input must be NCHW, got shape {shape}")
        self.channels = shape[1] if isinstance(shape[1], int) else 3
        self.size = shape[2] if isinstance(shape[2], int) else None
        if self.channels not in (1, 3):
            raise ModelFormatError(f"--features: {path} takes {self.channels} channels; it must take 1 or 3 (NCHW)")
        if self.size is not None and not 1 <= self.size <= MAX_FEATURE_INPUT:
            raise ModelFormatError(
                f"--features: {path} takes {self.size} px images; its fixed input size must be from 1 to "
                f"{MAX_FEATURE_INPUT} px (a 60000 px input asked for 43 GB)"
            )  # fmt: skip

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.size is not None or images.shape[1] != self.channels:
            size = self.size or images.shape[2]
            images = to_rgb_size(images, size)
            if self.channels == 1:
                images = images.mean(axis=1, keepdims=True)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(images), -1)


def discriminator(run: str | Path) -> Extractor:
    """The trunk features of a training run's discriminator (torch, imported here: the ``[train]`` extra). Biased
    towards the run's own generator: report it beside a neutral space, never instead of one."""
    try:
        import torch

        from ..training.train import load_networks
    except ImportError:
        raise ConfigError("--features discriminator needs the training extra: pip install 'ganaudit[train]'") from None
    cfg, nets, _ = load_networks(run)

    @torch.no_grad()
    def run_d(images: np.ndarray) -> np.ndarray:
        if images.shape[1] != cfg.channels:
            images = to_rgb_size(images, cfg.size)
            images = images.mean(axis=1, keepdims=True) if cfg.channels == 1 else images
        elif images.shape[2] != cfg.size:
            images = to_rgb_size(images, cfg.size)[:, : cfg.channels]
        return nets.D(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))[1].numpy()

    return run_d


def extractor(kind: str, run: str | Path | None = None, reference: np.ndarray | None = None) -> tuple[Extractor, str]:
    """``random``, ``patches`` (fitted on ``reference``), ``auto`` (AUTO), ``discriminator`` (of ``run``) or a path
    to an ONNX file -> (callable, description)."""
    kind = AUTO if kind == "auto" else kind
    if kind == "patches":
        from .patch_features import CENTROIDS, PatchFeatures

        if reference is None or not len(reference):
            raise ConfigError("--features patches needs reference images to fit its patch dictionary on")
        fn = PatchFeatures.fit(reference)
        return fn, f"patch dictionary fitted on the reference ({CENTROIDS} centroids, 6x6 whitened patches, {fn.dim}-d)"
    if kind == "discriminator":
        if run is None:
            raise ConfigError("--features discriminator needs a training run as GENERATED")
        return discriminator(run), f"discriminator of {Path(run).name} (biased towards its own generator)"
    if kind == "random":
        return RandomConvNet(), f"random conv net (seed {SEED}, {FEATURE_SIZE} px, 608-d)"
    if kind.endswith(".onnx"):
        return OnnxFeatures(kind), f"ONNX feature extractor {Path(kind).name}"
    raise ConfigError(f"--features must be auto, patches, random, discriminator or a .onnx file, got {kind!r}")


def embed(fn: Extractor, images: np.ndarray, progress: bool = False, desc: str = "features") -> np.ndarray:
    """Features of NCHW images in batches, with a progress bar on stderr when ``progress`` is true."""
    starts: Iterable[int] = range(0, len(images), BATCH)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False, file=sys.stderr)
    return np.concatenate([fn(images[s : s + BATCH]) for s in starts]).astype(np.float32)
