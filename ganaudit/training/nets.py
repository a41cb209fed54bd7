"""DCGAN-family networks: generator G, discriminator D (returns logit and features) and encoder E."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _sn

from ..core.spec import check_size


ROTATIONS = (0, 90, 180, 270)


def rotate4(x: torch.Tensor) -> torch.Tensor:
    """[4N, C, H, W]: ``x`` turned by 0, 90, 180 and 270 degrees (as ``torch.rot90``), in that order; flips and
    transposes only, which export to ONNX exactly."""
    return torch.cat([x, x.flip(3).transpose(2, 3), x.flip(2).flip(3), x.transpose(2, 3).flip(3)])


def rotation_targets(n: int, device: torch.device | None = None) -> torch.Tensor:
    """The class of each row of ``rotate4`` of an ``n``-image batch."""
    return torch.arange(len(ROTATIONS), device=device).repeat_interleave(n)


# D's last layer over its 4x4 trunk output (plus the minibatch-std channel): "conv" (the default), a 3x3 conv and
# LeakyReLU before a linear map, or "linear", the linear map alone as in DCGAN (a cheaper step; docs/benchmarks.md T1).
D_HEADS = ("conv", "linear")


def _n_blocks(size: int) -> int:
    """Number of stride-2 stages between a 4x4 map and ``size``."""
    return int(math.log2(check_size(size))) - 2


def _widths(width: int, n: int, cap: int = 512) -> list[int]:
    """Channel widths from the full-resolution stage (index 0) to the 4x4 stage."""
    return [min(width * 2**i, cap) for i in range(n)]


class MinibatchStd(nn.Module):
    """Appends the mean feature standard deviation across the batch as one extra channel.

    In eval mode it uses a running average instead, so a score never depends on
    what else is in the batch (batch 1 and batch 64 give the same result).
    """

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_std", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 1:
            std = x.std(dim=0, unbiased=False).mean()
            with torch.no_grad():
                self.running_std.lerp_(std.detach(), self.momentum)
        else:
            std = self.running_std
        return torch.cat([x, std.expand_as(x[:, :1])], dim=1)  # shape-free: exports with a dynamic batch


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, C, size, size] in [-1, 1]."""

    def __init__(self, size: int = 32, channels: int = 1, z_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        n = _n_blocks(size)
        w = _widths(width, n)[::-1]  # 4x4 stage first
        self.z_dim = z_dim
        self.project = nn.Sequential(nn.Linear(z_dim, w[0] * 16), nn.Unflatten(1, (w[0], 4, 4)), nn.BatchNorm2d(w[0]), nn.ReLU(True))
        blocks: list[nn.Module] = []
        for i in range(n - 1):
            blocks += [nn.ConvTranspose2d(w[i], w[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(w[i + 1]), nn.ReLU(True)]
        blocks += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z))


def _down_trunk(size: int, channels: int, width: int, spectral: bool, norm: bool) -> tuple[nn.Sequential, int]:
    """Stride-2 conv stages from ``size`` down to 4x4. Returns the trunk and its output width."""
    n = _n_blocks(size)
    w = _widths(width, n)
    wrap = _sn if spectral else (lambda m: m)
    layers: list[nn.Module] = []
    c_in = channels
    for i, c_out in enumerate(w):
        layers.append(wrap(nn.Conv2d(c_in, c_out, 4, 2, 1)))
        if norm and i > 0:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.2, True))
        c_in = c_out
    return nn.Sequential(*layers), c_in


class Discriminator(nn.Module):
    """image -> (logit [N], features [N, F]).

    ``features`` are the flattened 4x4 activations of the last conv stage; the
    encoder is trained to match them and the anomaly score compares them.
    """

    def __init__(
        self,
        size: int = 32,
        channels: int = 1,
        width: int = 64,
        spectral_norm: bool = True,
        minibatch_std: bool = True,
        rotation: bool = False,
        head: str = "conv",
    ) -> None:
        super().__init__()
        if head not in D_HEADS:
            raise ValueError(f"unknown discriminator head {head!r}: choose one of {', '.join(D_HEADS)}")
        self.init_args = dict(
            size=size, channels=channels, width=width, minibatch_std=minibatch_std, rotation=rotation, head=head
        )
        self.trunk, c = _down_trunk(size, channels, width, spectral_norm, norm=False)
        self.feature_dim = c * 16
        wrap = _sn if spectral_norm else (lambda m: m)
        self.mbstd = MinibatchStd() if minibatch_std else None
        c_judged = c + (1 if minibatch_std else 0)
        if head == "conv":
            self.head = nn.Sequential(
                wrap(nn.Conv2d(c_judged, c, 3, 1, 1)), nn.LeakyReLU(0.2, True), nn.Flatten(), wrap(nn.Linear(c * 16, 1))
            )
        else:
            self.head = nn.Sequential(nn.Flatten(), wrap(nn.Linear(c_judged * 16, 1)))
        # Self-supervised auxiliary task (SS-GAN): which of 4 rotations an image was turned by, from its features.
        self.rotation_head = wrap(nn.Linear(c * 16, len(ROTATIONS))) if rotation else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.judge(h), h.flatten(1)

    def judge(self, h: torch.Tensor) -> torch.Tensor:
        """The realness logit [N] from trunk activations (the minibatch-std channel sees only these rows)."""
        if self.mbstd is not None:
            h = self.mbstd(h)
        return self.head(h).squeeze(1)

    def rotation_logits(self, features: torch.Tensor) -> torch.Tensor:
        """[N, 4] logits of the rotation each image was turned by (see :func:`rotate4`)."""
        if self.rotation_head is None:
            raise ValueError("this discriminator was built without the rotation task (rotation=False)")
        return self.rotation_head(features)

    def with_rotations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One trunk pass over ``x`` and its three turned copies: (realness logit of ``x`` [N], features of ``x``
        [N, F], rotation logits [4N, 4] in :func:`rotate4` order)."""
        h = self.trunk(rotate4(x))
        upright = h.unflatten(0, (len(ROTATIONS), -1))[0]
        return self.judge(upright), upright.flatten(1), self.rotation_logits(h.flatten(1))

    def without_spectral_norm(self, rotation: bool = True) -> "Discriminator":
        """An equivalent plain copy (eval mode) with the spectral-normalised weights folded in, for export.
        ``rotation=False`` leaves the rotation head out."""
        self.eval()
        keep_rotation = rotation and self.rotation_head is not None
        state = {k: v for k, v in self.state_dict().items() if ".parametrizations." not in k}
        with torch.no_grad():
            for name, sub in self.named_modules():
                if parametrize.is_parametrized(sub):
                    for tensor_name in sub.parametrizations:
                        state[f"{name}.{tensor_name}"] = getattr(sub, tensor_name).detach().clone()
        if not keep_rotation:
            state = {k: v for k, v in state.items() if not k.startswith("rotation_head.")}
        plain = Discriminator(**{**self.init_args, "rotation": keep_rotation}, spectral_norm=False)
        plain.load_state_dict(state)
        return plain.eval()


class Encoder(nn.Module):
    """image -> z [N, z_dim]; shaped like the discriminator's trunk."""

    def __init__(self, size: int = 32, channels: int = 1, z_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.trunk, c = _down_trunk(size, channels, width, spectral=False, norm=True)
        self.out = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, z_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(x))
