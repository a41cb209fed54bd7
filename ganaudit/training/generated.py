"""The generated-image head: a real-vs-generated classifier initialised from the trained discriminator.

Training layer (torch). The head sees images at native scale through the ONE crop policy of
:func:`ganaudit.core.imaging.native_crops`, so training and the runtime cut crops the same way.

* :class:`GeneratedHead` = a copy of D (spectral norm folded in; its realness logit negated, so it starts as
  D's own fake judgement) plus an optional spectral branch, the azimuthally averaged log power spectrum of
  each crop computed by fixed DFT matrix products (exports to plain ONNX MatMuls). With ``npr`` a second CNN
  of D's shape reads only the upsampling residual of :func:`npr_residual`; each branch is trained on its own,
  and the head's logit is the larger of the two.
* The fake pool mixes generator snapshots saved during GAN training, the EMA generator and reconstructions
  G(E(x)); :func:`augment` degrades real and fake images alike (JPEG 30-100, blur sigma 0-2, resize 0.35-2x or 0.35-3x)
  so that format or quality cannot give the answer.
* :func:`held_out_logits` scores real validation images and fresh fakes that the head never trained on;
  export fits the calibration and the threshold on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.imaging import head_regions, native_regions, regions_to_input, stack_head_regions
from .nets import Discriminator, Encoder, Generator
from .rundir import RunDir
from .torch_files import load_tensors
from ..core.errors import ModelFormatError
from ..core.spec import PreprocessSpec

N_SNAPSHOTS = 6
JPEG_QUALITY = (30, 100)
BLUR_SIGMA = (0.0, 2.0)
RESIZE_SCALE = (0.35, 2.0)  # below 0.5: halved images were the weak spot (docs/benchmarks.md, Q2)
# The largest factor for colour images: enlarged photographs were the weak spot of the 2x range (Q2b, CIFAR-10
# development split); on digits 3x did not help (Q2, MNIST development split).
RESIZE_MAX_COLOUR = 3.0
AUGMENT_PROB = 0.5


# --------------------------------------------------------------------------- networks


def _dft_mats(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(size, dtype=torch.float64)
    ang = 2 * math.pi * torch.outer(k, k) / size
    return torch.cos(ang), torch.sin(ang)


def _radial_bins(size: int) -> torch.Tensor:
    """[size*size, R] averaging matrix: column r averages the DFT bins at integer radius r (R = size//2 + 1)."""
    f = torch.arange(size)
    f = torch.minimum(f, size - f).double()  # unshifted frequency index -> |frequency|
    r = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).round().long().clamp(max=size // 2).flatten()
    m = F.one_hot(r, size // 2 + 1).double()
    return m / m.sum(0, keepdim=True)


class SpectralBranch(nn.Module):
    """Crop [B, C, S, S] -> logit contribution [B] from the azimuthally averaged log power spectrum.

    The spectrum is computed in float64 (fixed DFT matrices, not saved in checkpoints): in float32 the weak
    high-frequency bins come out of cancelling large terms, and torch and onnxruntime would round them apart.
    """

    def __init__(self, size: int, hidden: int = 32) -> None:
        super().__init__()
        cos, sin = _dft_mats(size)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("bins", _radial_bins(size), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(size // 2 + 1, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)  # starts as a no-op: the head begins as D
        nn.init.zeros_(self.mlp[2].bias)

    def profile(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(1).double()
        g = g - g.mean((1, 2), keepdim=True)
        c, s = self.cos, self.sin
        # DFT of a real image with W = C - iS:  W g W^T = (C g C - S g S) - i (S g C + C g S)
        re = c @ g @ c - s @ g @ s
        im = s @ g @ c + c @ g @ s
        power = (re * re + im * im).flatten(1)
        prof = torch.log(power @ self.bins + 1e-6)
        return (prof - prof.mean(1, keepdim=True)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.profile(x)).squeeze(1)


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """Neighbouring-pixel residual (NPR, Tan et al. 2024): ``x`` minus its nearest 2x down- then up-sampled copy.

    Zero at the top-left pixel of every 2x2 block; elsewhere the difference to it, which shows the local
    correlations that upsampling layers (nearest, bilinear, transposed conv, pixel shuffle) leave behind.
    """
    return x - F.interpolate(x[:, :, ::2, ::2], scale_factor=2.0, mode="nearest")


class GeneratedHead(nn.Module):
    """Crops [B, C, S, S] -> generated logit [B] (higher = more likely generated)."""

    def __init__(self, D: Discriminator, size: int, spectral: bool = True, npr: bool = False) -> None:
        super().__init__()
        self.d = D
        self.spectral = SpectralBranch(size) if spectral else None
        # NPR: a second CNN of D's shape, freshly initialised, that reads only npr_residual(crops)
        args = {k: v for k, v in D.init_args.items() if k != "rotation"}
        self.residual_d = Discriminator(**args, spectral_norm=False) if npr else None

    @classmethod
    def from_discriminator(cls, D: Discriminator, spectral: bool = True, npr: bool = False) -> "GeneratedHead":
        """A trainable head whose image CNN starts as a plain copy of the trained (spectral-normalised) D."""
        was_training = D.training
        plain = D.without_spectral_norm(rotation=False)
        D.train(was_training)
        return cls(plain.requires_grad_(True), D.init_args["size"], spectral, npr)

    @classmethod
    def build(
        cls, size: int, channels: int, width: int, minibatch_std: bool, spectral: bool, npr: bool = False,
        d_head: str = "conv",
    ) -> "GeneratedHead":
        """An untrained head with the right shapes (to load a state_dict into)."""
        D = Discriminator(size, channels, width, spectral_norm=False, minibatch_std=minibatch_std, head=d_head)
        return cls(D, size, spectral, npr)

    def train(self, mode: bool = True) -> "GeneratedHead":
        super().train(mode)
        for cnn in (self.d, self.residual_d):
            if cnn is not None and cnn.mbstd is not None:
                cnn.mbstd.eval()  # always the frozen running statistic: a score never depends on the batch
        return self

    def branch_logits(self, crops: torch.Tensor) -> list[torch.Tensor]:
        """One generated logit [B] per branch: the image CNN (+ spectrum), then the NPR residual CNN if any.
        Training fits each branch to the whole task on its own, so neither leans on the other."""
        logit = -self.d(crops)[0]
        if self.spectral is not None:
            logit = logit + self.spectral(crops)
        if self.residual_d is None:
            return [logit]
        return [logit, -self.residual_d(npr_residual(crops))[0]]

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """The generated logit: the larger branch logit (an image is as generated as its strongest evidence)."""
        logits = self.branch_logits(crops)
        return logits[0] if len(logits) == 1 else torch.maximum(logits[0], logits[1])


# --------------------------------------------------------------------------- data


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Network images float32 NCHW in [-1, 1] -> uint8 NHWC (what saving them as PNG gives)."""
    return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def augment(img: np.ndarray, rng: np.random.Generator, resize_max: float | None = None) -> np.ndarray:
    """Random degradation applied to real and generated images alike: each of resize (0.35 to ``resize_max``,
    default RESIZE_SCALE's 2x, log-uniform, random interpolation), Gaussian blur (sigma 0-2) and JPEG (quality
    30-100) with probability 1/2, in that order."""
    out = img
    if rng.random() < AUGMENT_PROB:
        hi = RESIZE_SCALE[1] if resize_max is None else resize_max
        f = float(np.exp(rng.uniform(np.log(RESIZE_SCALE[0]), np.log(hi))))
        h, w = out.shape[:2]
        interp = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)[int(rng.integers(3))]
        out = cv2.resize(out, (max(1, round(w * f)), max(1, round(h * f))), interpolation=interp)
    if rng.random() < AUGMENT_PROB:
        sigma = float(rng.uniform(*BLUR_SIGMA))
        if sigma > 0.05:
            out = cv2.GaussianBlur(out, (0, 0), sigma)
    if rng.random() < AUGMENT_PROB:
        q = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if out.ndim == 2:
        out = out[:, :, None]
    return out


def training_crops(
    images: list[np.ndarray], spec: PreprocessSpec, rng: np.random.Generator, resize_max: float | None = None
) -> np.ndarray:
    """Augment each uint8 image, then cut one crop at a random origin with the shared crop policy."""
    regions = np.concatenate([native_regions(augment(im, rng, resize_max), spec, n=1, rng=rng) for im in images])
    return regions_to_input(regions, spec)


# --------------------------------------------------------------------------- snapshots and fake pool


def snapshot_every(gan_steps: int) -> int:
    return max(1, gan_steps // N_SNAPSHOTS)


@torch.no_grad()
def _sample(G: Generator, n: int, gen: torch.Generator, device: torch.device, batch: int = 256) -> np.ndarray:
    G.eval()
    parts = []
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), G.z_dim, generator=gen).to(device)
        parts.append(G(z).cpu().numpy())
    return np.concatenate(parts) if parts else np.empty((0,))


@torch.no_grad()
def _reconstruct(G: Generator, E: Encoder, x: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    G.eval(), E.eval()
    parts = [G(E(torch.from_numpy(x[i : i + batch]).to(device))).cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(parts)


@dataclass
class PoolSources:
    """Where fakes come from: generator snapshots, the EMA generator, and G(E(x)) of some real images."""

    snapshots: list[Generator]
    G_ema: Generator
    E: Encoder
    recon_inputs: np.ndarray  # preprocessed real images to reconstruct


def fake_pool(src: PoolSources, n: int, seed: int, device: torch.device) -> np.ndarray:
    """``n`` generated images as uint8 NHWC: a third each from the snapshots, the EMA generator and
    reconstructions (the snapshots' share goes to the EMA generator when there are none)."""
    gen = torch.Generator().manual_seed(seed)
    n_rec = min(n // 3, len(src.recon_inputs))
    n_snap = n // 3 if src.snapshots else 0
    n_ema = n - n_rec - n_snap
    parts = [_sample(src.G_ema, n_ema, gen, device)]
    for i, G in enumerate(src.snapshots):
        k = n_snap // len(src.snapshots) + (1 if i < n_snap % len(src.snapshots) else 0)
        if k:
            parts.append(_sample(G, k, gen, device))
    if n_rec:
        idx = torch.randperm(len(src.recon_inputs), generator=gen)[:n_rec].numpy()
        parts.append(_reconstruct(src.G_ema, src.E, src.recon_inputs[np.sort(idx)], device))
    return to_uint8(np.concatenate([p for p in parts if len(p)]))


def load_snapshots(run_dir: Path, like: Generator) -> list[Generator]:
    """The generator snapshots a run saved during its GAN phase (eval mode, CPU)."""
    import copy

    out = []
    for path in RunDir(run_dir).snapshots():
        G = copy.deepcopy(like).cpu()
        state = load_tensors(path, "generator snapshot")
        try:
            G.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:  # wrong keys or shapes, or not a state dict
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFormatError(f"generator snapshot {path} does not fit this run's generator ({first})") from None
        out.append(G.eval())
    return out


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def head_logits(head: GeneratedHead, crops: np.ndarray, batch: int = 512) -> np.ndarray:
    """Mean head logit over each image's crops: crops [N, K, C, S, S] -> [N] (what the exported graph does)."""
    head.eval()
    n, k = crops.shape[:2]
    flat = torch.from_numpy(np.ascontiguousarray(crops.reshape(n * k, *crops.shape[2:]), dtype=np.float32))
    out = torch.cat([head(flat[i : i + batch]) for i in range(0, len(flat), batch)]) if len(flat) else torch.empty(0)
    return out.view(n, k).mean(1).numpy()


def crops_of(images_u8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The runtime's crops [N, k, C, S, S] of uint8 NHWC images (the shared crop policy, stacked to one k)."""
    return np.stack([regions_to_input(r, spec) for r in stack_head_regions([head_regions(im, spec) for im in images_u8])])
