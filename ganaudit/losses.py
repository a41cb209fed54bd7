"""GAN losses and regularisers as plain functions of logits (and images where needed)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Critic = Callable[[torch.Tensor], torch.Tensor]


def d_loss_ns(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN (BCE with logits), discriminator side."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_loss_ns(fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake).mean()


def d_loss_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def g_loss_hinge(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


def d_loss_wgan(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return fake.mean() - real.mean()


g_loss_wgan = g_loss_hinge


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: (||grad critic(x_hat)|| - 1)^2 on random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(real_logit: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1: squared gradient norm of D on real data (``real`` must require grad)."""
    (grad,) = torch.autograd.grad(real_logit.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()


def instance_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Add Gaussian noise to D's inputs (anneal ``sigma`` towards 0 over training)."""
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


AUGMENTS = ("translation", "flip")


def parse_augment(spec: str) -> tuple[str, ...]:
    """``"none"``, ``""`` or a comma list of :data:`AUGMENTS` -> the chosen operations, in a fixed order."""
    chosen = {a.strip() for a in spec.split(",") if a.strip() and a.strip() != "none"}
    unknown = chosen - set(AUGMENTS)
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(sorted(unknown))}: choose from none, {', '.join(AUGMENTS)}")
    return tuple(a for a in AUGMENTS if a in chosen)


def diff_augment(x: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
    """Differentiable augmentation of D's inputs (DiffAugment, Zhao et al. 2020), applied to real AND generated
    images alike so that G is not taught to imitate it: per image, a shift of up to 1/8 of the side with zero
    fill ("translation") and a horizontal mirror with probability 1/2 ("flip")."""
    n, _, h, w = x.shape
    if "flip" in ops:
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
    if "translation" in ops:
        s = max(1, h // 8)
        dy, dx = (torch.randint(-s, s + 1, (2, n, 1, 1), device=x.device) + s).unbind(0)
        rows = (torch.arange(h, device=x.device)[None, :, None] + dy).expand(n, h, w)
        cols = (torch.arange(w, device=x.device)[None, None, :] + dx).expand(n, h, w)
        padded = F.pad(x, (s, s, s, s))
        x = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    return x


def izif_loss(
    x: torch.Tensor, x_rec: torch.Tensor, f_x: torch.Tensor, f_rec: torch.Tensor, kappa: float
) -> torch.Tensor:
    """f-AnoGAN izi_f encoder loss: pixel residual + kappa * D-feature residual."""
    return F.mse_loss(x_rec, x) + kappa * F.mse_loss(f_rec, f_x)


LOSSES: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "hinge": (d_loss_hinge, g_loss_hinge),
    "ns": (d_loss_ns, g_loss_ns),
    "wgan-gp": (d_loss_wgan, g_loss_wgan),
}
