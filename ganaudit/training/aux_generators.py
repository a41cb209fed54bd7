"""Auxiliary generators of other families for the generated head's fake pool (training layer, torch).

ganaudit's own GAN is one family (a DCGAN: transposed convolutions); a head trained only on its fakes learns
that family's traces and misses others (docs/benchmarks.md, Q2b). Before the head phase, ``train`` can fit
small generators of other families on the same training images, for a fixed number of steps each, and mix
their samples into the fake pool:

    nearest       nearest-neighbour upsampling + 3x3 conv     (non-saturating loss)
    bilinear      bilinear upsampling + 3x3 conv              (hinge loss)
    pixelshuffle  3x3 conv to 4x channels + PixelShuffle(2)   (non-saturating loss)
    transposed    4x4 transposed conv, stride 2               (hinge loss)
    mlp           fully connected generator and critic        (non-saturating loss)
    autoencoder   reconstructions by a conv autoencoder, squared-error loss (transposed-conv decoder)

Each GAN family keeps samples from three moments of its training (a third, two thirds, the end), so the
pool holds early, half-trained and trained fakes. Samples are cached in the run directory (``aux_pool/``),
keyed by family, steps, count and seed: resuming or retraining the head with other families reuses them.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.atomic import atomic_write
from ..core.errors import ConfigError
from .losses import LOSSES
from .rundir import RunDir

AUX_FAMILIES = ("nearest", "bilinear", "pixelshuffle", "transposed", "mlp", "autoencoder")
_LOSS = {"nearest": "ns", "bilinear": "hinge", "pixelshuffle": "ns", "transposed": "hinge", "mlp": "ns"}
_Z = 32
_WIDTH = 8


def parse_families(text: str) -> tuple[str, ...]:
    """``"all"`` / ``"none"`` / ``""`` / a comma list (``"all,-mlp"`` drops one) -> the families, in order."""
    chosen: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part in ("", "none"):
            continue
        if part == "all":
            chosen += [f for f in AUX_FAMILIES if f not in chosen]
        elif part.startswith("-") and part[1:] in AUX_FAMILIES:
            chosen = [f for f in chosen if f != part[1:]]
        elif part in AUX_FAMILIES:
            chosen += [part] if part not in chosen else []
        else:
            raise ConfigError(
                f"unknown auxiliary generator family {part!r}: use all, none, or some of {', '.join(AUX_FAMILIES)} "
                "(a leading - drops one, e.g. all,-mlp)"
            )
    return tuple(f for f in AUX_FAMILIES if f in chosen)


# --------------------------------------------------------------------------- networks


def _upsample(family: str, cin: int, cout: int) -> list[nn.Module]:
    if family == "transposed":
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
    if family == "pixelshuffle":
        return [nn.Conv2d(cin, 4 * cout, 3, padding=1), nn.PixelShuffle(2)]
    return [nn.Upsample(scale_factor=2, mode=family), nn.Conv2d(cin, cout, 3, padding=1)]


class _ConvGenerator(nn.Module):
    """z -> 4x4 map -> log2(size)-2 upsampling stages of one family -> image in [-1, 1]."""

    def __init__(self, family: str, size: int, channels: int) -> None:
        super().__init__()
        n = int(math.log2(size)) - 2
        widths = [_WIDTH * 2 ** min(n - i, 3) for i in range(n + 1)]
        self.fc = nn.Linear(_Z, widths[0] * 16)
        layers: list[nn.Module] = [nn.Unflatten(1, (widths[0], 4, 4)), nn.GroupNorm(4, widths[0]), nn.LeakyReLU(0.2)]
        for i in range(n):
            layers += [*_upsample(family, widths[i], widths[i + 1]), nn.GroupNorm(4, widths[i + 1]), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(widths[-1], channels, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z))


def _mlp_generator(size: int, channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(_Z, 384), nn.LeakyReLU(0.2), nn.Linear(384, 768), nn.LeakyReLU(0.2),
        nn.Linear(768, channels * size * size), nn.Tanh(), nn.Unflatten(1, (channels, size, size)),
    )  # fmt: skip


def _critic(family: str, size: int, channels: int) -> nn.Module:
    if family == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 384), nn.LeakyReLU(0.2),
                             nn.Linear(384, 1))  # fmt: skip
    return nn.Sequential(
        nn.Conv2d(channels, _WIDTH, 3, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(_WIDTH, 2 * _WIDTH, 3, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * _WIDTH, 4 * _WIDTH, 3, 2, 1), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * _WIDTH, 1),
    )  # fmt: skip


class _Autoencoder(nn.Module):
    def __init__(self, size: int, channels: int) -> None:
        super().__init__()
        n = int(math.log2(size)) - 2
        enc: list[nn.Module] = []
        c = channels
        for i in range(n):
            enc += [nn.Conv2d(c, _WIDTH * 2**i, 4, 2, 1), nn.LeakyReLU(0.2)]
            c = _WIDTH * 2**i
        self.encode = nn.Sequential(*enc, nn.Flatten(), nn.Linear(c * 16, _Z))
        dec: list[nn.Module] = [nn.Linear(_Z, c * 16), nn.Unflatten(1, (c, 4, 4)), nn.LeakyReLU(0.2)]
        for i in reversed(range(n)):
            out = channels if i == 0 else _WIDTH * 2 ** (i - 1)
            dec += [nn.ConvTranspose2d(c, out, 4, 2, 1), nn.Tanh() if i == 0 else nn.LeakyReLU(0.2)]
            c = out
        self.decode = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------- training


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return np.rint((x.clamp(-1, 1).cpu().numpy() + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _train_gan(family: str, x: torch.Tensor, steps: int, n: int, gen: torch.Generator, batch: int) -> np.ndarray:
    """Train one GAN of ``family`` for ``steps``; ``n`` samples, a third at each of 1/3, 2/3 and all steps."""
    size, channels, dev = x.shape[-1], x.shape[1], x.device
    G = (_mlp_generator(size, channels) if family == "mlp" else _ConvGenerator(family, size, channels)).to(dev)
    D = _critic(family, size, channels).to(dev)
    d_loss, g_loss = LOSSES[_LOSS[family]]
    opt_g = torch.optim.Adam(G.parameters(), 3e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 3e-4, betas=(0.5, 0.999))
    marks = {max(1, steps * k // 3): n // 3 + (n % 3 if k == 3 else 0) for k in (1, 2, 3)}
    out = []
    for step in range(1, steps + 1):
        real = x[torch.randint(len(x), (batch,), generator=gen).to(dev)]
        fake = G(torch.randn(batch, _Z, generator=gen).to(dev))
        loss_d = d_loss(D(real).flatten(), D(fake.detach()).flatten())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = g_loss(D(fake).flatten())
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step in marks:
            with torch.no_grad():
                out.append(_to_uint8(G(torch.randn(marks[step], _Z, generator=gen).to(dev))))
    return np.concatenate(out)


def _train_autoencoder(x: torch.Tensor, steps: int, n: int, gen: torch.Generator, batch: int) -> np.ndarray:
    """Train a conv autoencoder (squared error) for ``steps``; reconstructions of ``n`` training images."""
    ae = _Autoencoder(x.shape[-1], x.shape[1]).to(x.device)
    opt = torch.optim.Adam(ae.parameters(), 1e-3)
    for _ in range(steps):
        real = x[torch.randint(len(x), (batch,), generator=gen).to(x.device)]
        loss = F.mse_loss(ae(real), real)  # an L1 loss first collapses to the dark background
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    idx = torch.randperm(len(x), generator=gen)[:n].to(x.device)
    with torch.no_grad():
        return np.concatenate([_to_uint8(ae(x[idx[i : i + 256]])) for i in range(0, len(idx), 256)])


def family_samples(family: str, x: torch.Tensor, steps: int, n: int, seed: int, batch: int = 32) -> np.ndarray:
    """``n`` uint8 NHWC fakes of one auxiliary family trained ``steps`` steps on ``x`` (float NCHW in [-1, 1])."""
    gen = torch.Generator().manual_seed(seed * 1009 + AUX_FAMILIES.index(family))
    with torch.random.fork_rng(devices=[]):  # its own seed: nothing else's random stream moves
        torch.manual_seed(seed * 1009 + AUX_FAMILIES.index(family))
        with torch.enable_grad():
            if family == "autoencoder":
                return _train_autoencoder(x, steps, n, gen, batch)
            return _train_gan(family, x, steps, n, gen, batch)


def aux_pool(
    run_dir: Path, families: tuple[str, ...], x: torch.Tensor, n: int, steps: int, seed: int
) -> np.ndarray:
    """``n`` fakes shared about evenly among ``families`` (uint8 NHWC), each trained once and cached in the run."""
    parts = []
    each = -(-n // len(families)) if families else 0
    for family in families:
        # n per family (sampling is cheap next to training), so any subset of families reuses the cache
        path = RunDir(run_dir).aux_pool_dir / f"{family}_steps{steps}_n{n}_seed{seed}.npy"
        if path.is_file():
            imgs = np.load(path, allow_pickle=False)
        else:
            imgs = family_samples(family, x, steps, n, seed)
            buf = io.BytesIO()
            np.save(buf, imgs)
            atomic_write(path, buf.getvalue())
        pick = np.random.default_rng([seed, AUX_FAMILIES.index(family)]).permutation(len(imgs))[:each]
        parts.append(imgs[np.sort(pick)])  # from every moment of its training
    return np.concatenate(parts)[:n] if parts else np.empty((0, *x.shape[2:], x.shape[1]), np.uint8)
