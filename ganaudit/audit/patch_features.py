"""Patch-dictionary features (Coates, Lee & Ng 2011, "An analysis of single-layer networks in unsupervised feature
learning"), fitted on the REFERENCE images of an audit only.

1. 6x6 RGB patches at 32x32, each brightness- and contrast-normalised, are ZCA-whitened (whitening fitted on
   patches of the reference images);
2. a dictionary of 256 patch centroids is found by seeded k-means on whitened reference patches;
3. every patch position of an image (stride 2: 14 x 14) is encoded by the "triangle" activation
   f_k = max(0, mean_j(z_j) - z_k), z_k the distance of the whitened patch to centroid k;
4. activations are summed over the four image quadrants (4 x 256 numbers), then standardised with the reference
   images' mean and spread per dimension;
5. a spectral block is appended: the log energy of three difference-of-Gaussians bands of the gray image (sigma
   0 -> 0.7 -> 1.4 -> 2.8 px) relative to its variance (how much fine detail an image has, whatever its contrast),
   standardised on the reference and scaled so that the block's total variance equals the patch block's: the two
   views weigh equally in every distance. Patch codes are contrast-normalised per patch and barely move when an
   image is blurred; the band energies drop by an order of magnitude.

Nothing here is trained against an audited generator, nothing is downloaded, and the same reference set and seed
give the same features. Whitened patches weigh edges and fine texture, which is what blur removes; the pooled
code is a far better linear class separator on natural images than random convolutions (Coates et al. report
about 70 % linear accuracy on CIFAR-10 with a dictionary of this size; see docs/auditing.md for what the audit
measures). Limits: it sees local patterns and their rough layout, not objects; its space depends on the
reference set, so figures compare only between audits against the same reference.
"""

from __future__ import annotations

import cv2
import numpy as np

from .features import FEATURE_SIZE, to_rgb_size
from .kmeans import kmeans

PATCH = 6
STRIDE = 2  # 14 x 14 patch positions at 32 px (stride 1, 27 x 27, costs 3.7 times as much)
CENTROIDS = 256
FIT_PATCHES = 20_000  # reference patches drawn (by seed) to fit the whitening and the dictionary
SEED = 20112
SCALE_IMAGES = 2000  # reference images (by seed) whose features set the standardisation
BATCH = 64  # images encoded at once (64 x 729 x 256 activations, about 48 MB)
NORM_EPS = 10.0 / 255.0**2  # Coates et al.'s contrast-normalisation floor (10 on the 0-255 scale), on [0, 1] pixels
ZCA_EPS = 0.1


def _patches(x: np.ndarray) -> np.ndarray:
    """NHWC images -> [N, positions, PATCH*PATCH*C] patches (every STRIDE-th position)."""
    win = np.lib.stride_tricks.sliding_window_view(x, (PATCH, PATCH), axis=(1, 2))[:, ::STRIDE, ::STRIDE]
    n, h, w = win.shape[:3]
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(n, h * w, -1)


def _normalise(p: np.ndarray) -> np.ndarray:
    """Per-patch brightness and contrast normalisation."""
    p = p - p.mean(-1, keepdims=True)
    return p / np.sqrt(p.var(-1, keepdims=True) + NORM_EPS)


BANDS = (0.0, 0.7, 1.4, 2.8)  # Gaussian sigmas (px at 32 px) whose differences are the spectral bands
LOG_FLOOR = 1e-5


def band_energies(images: np.ndarray) -> np.ndarray:
    """NCHW in [-1, 1] -> [N, 3]: log energy of each difference-of-Gaussians band of the gray image, relative to
    the image's variance."""
    gray = to_rgb_size(images, FEATURE_SIZE).mean(1)
    out = np.empty((len(gray), len(BANDS) - 1), np.float32)
    for i, img in enumerate(gray):
        levels = [img] + [cv2.GaussianBlur(img, (0, 0), s) for s in BANDS[1:]]
        energy = [np.mean((levels[j] - levels[j + 1]) ** 2) for j in range(len(BANDS) - 1)]
        out[i] = np.log(np.array(energy) + LOG_FLOOR) - np.log(img.var() + LOG_FLOOR)
    return out


def _nhwc(images: np.ndarray) -> np.ndarray:
    """NCHW in [-1, 1] (1 or 3 channels, any size) -> NHWC in [0, 1] at FEATURE_SIZE."""
    return ((to_rgb_size(images, FEATURE_SIZE).transpose(0, 2, 3, 1) + 1.0) * 0.5).astype(np.float32)


class PatchFeatures:
    """The fitted extractor; call it on NCHW images in [-1, 1]. Build it with :meth:`fit` on reference images."""

    def __init__(self, mean: np.ndarray, zca: np.ndarray, centroids: np.ndarray) -> None:
        self.mean, self.zca, self.centroids = mean, zca, centroids
        self.c2 = (centroids**2).sum(1)
        n_code, n_band = 4 * len(centroids), len(BANDS) - 1
        self.shift = np.zeros(n_code + n_band, np.float32)
        self.scale = np.ones(n_code + n_band, np.float32)

    @property
    def dim(self) -> int:
        return 4 * len(self.centroids) + len(BANDS) - 1

    @classmethod
    def fit(cls, reference: np.ndarray, *, seed: int = SEED, centroids: int = CENTROIDS) -> "PatchFeatures":
        rng = np.random.default_rng(seed)
        ref = _nhwc(reference)
        side = FEATURE_SIZE - PATCH + 1
        n = min(FIT_PATCHES, len(ref) * side * side)
        img, row, col = rng.integers(len(ref), size=n), rng.integers(side, size=n), rng.integers(side, size=n)
        offsets = np.arange(PATCH)
        p = ref[img[:, None, None], row[:, None, None] + offsets[None, :, None], col[:, None, None] + offsets[None, None, :]]
        p = _normalise(p.reshape(n, -1).astype(np.float64))
        mean = p.mean(0)
        vals, vecs = np.linalg.eigh(np.cov(p - mean, rowvar=False))
        zca = (vecs * (1.0 / np.sqrt(np.maximum(vals, 0) + ZCA_EPS))) @ vecs.T
        white = (p - mean) @ zca
        centers = kmeans(white, centroids, seed=seed, iterations=10)
        out = cls(mean.astype(np.float32), zca.astype(np.float32), centers.astype(np.float32))
        some = reference[np.sort(rng.permutation(len(reference))[:SCALE_IMAGES])]
        code = np.concatenate([out._encode(some[s : s + BATCH]) for s in range(0, len(some), BATCH)])
        bands = band_energies(some)
        code_sd = np.maximum(code.std(0), 1e-3 * max(float(code.std(0).max()), 1e-12))
        band_sd = np.maximum(bands.std(0), 1e-6) / np.sqrt(code.shape[1] / bands.shape[1])  # equal block variance
        out.shift = np.concatenate([code.mean(0), bands.mean(0)]).astype(np.float32)
        out.scale = np.concatenate([code_sd, band_sd]).astype(np.float32)
        return out

    def _encode(self, images: np.ndarray) -> np.ndarray:
        x = _nhwc(images)
        p = _normalise(_patches(x))
        n, m, d = p.shape
        w = (p.reshape(-1, d) - self.mean) @ self.zca
        z2 = (w**2).sum(1, keepdims=True) + self.c2[None] - 2.0 * (w @ self.centroids.T)
        z = np.sqrt(np.maximum(z2, 0))
        act = np.maximum(z.mean(1, keepdims=True) - z, 0).reshape(n, m, -1)
        side = int(round(np.sqrt(m)))
        half = side // 2
        grid = act.reshape(n, side, side, -1)
        quads = [grid[:, :half, :half], grid[:, :half, half:], grid[:, half:, :half], grid[:, half:, half:]]
        return np.concatenate([q.sum(axis=(1, 2)) for q in quads], axis=1).astype(np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        code = np.concatenate([self._encode(images[s : s + BATCH]) for s in range(0, len(images), BATCH)])
        return (np.concatenate([code, band_energies(images)], axis=1) - self.shift) / self.scale
