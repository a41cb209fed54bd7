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
