import pytest
import torch

from ganaudit import losses
from ganaudit.nets import Discriminator, Generator


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_loss_gives_finite_values_and_gradients(name):
    torch.manual_seed(0)
    G, D = Generator(16, 1, 8, 8), Discriminator(16, 1, 8)
    d_loss_fn, g_loss_fn = losses.LOSSES[name]
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    fake = G(torch.randn(4, 8))
    d = d_loss_fn(D(real)[0], D(fake.detach())[0])
    if name == "wgan-gp":
        d = d + 10 * losses.gradient_penalty(lambda t: D(t)[0], real, fake.detach())
    d.backward()
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert torch.isfinite(d) and grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    g = g_loss_fn(D(fake)[0])
    G.zero_grad()
    g.backward()
    assert torch.isfinite(g)
    assert all(torch.isfinite(p.grad).all() for p in G.parameters() if p.grad is not None)


def test_hinge_and_ns_values():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])
    assert losses.d_loss_hinge(real, fake).item() == pytest.approx(0.5 + 0.5)
    expected = torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()
    assert losses.d_loss_ns(real, fake).item() == pytest.approx(expected.item())


def test_r1_penalty_is_zero_for_a_constant_critic_and_positive_otherwise():
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    assert losses.r1_penalty((x * 0).sum(dim=(1, 2, 3)), x).item() == 0
    assert losses.r1_penalty((2 * x).sum(dim=(1, 2, 3)), x).item() == pytest.approx(4 * 16)


def test_gradient_penalty_is_zero_for_a_unit_slope_critic():
    w = torch.zeros(1, 1, 4, 4)
    w[0, 0, 0, 0] = 1.0
    critic = lambda t: (t * w).sum(dim=(1, 2, 3))  # noqa: E731 - gradient norm is exactly 1
    gp = losses.gradient_penalty(critic, torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4))
    assert gp.item() == pytest.approx(0.0, abs=1e-10)


def test_instance_noise_zero_sigma_is_identity():
    x = torch.randn(2, 1, 4, 4)
    assert losses.instance_noise(x, 0.0) is x
    assert not torch.equal(losses.instance_noise(x, 0.1), x)


def test_diff_augment_shifts_with_zero_fill_and_mirrors_each_image_on_its_own():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16) + 1  # strictly positive: zero fill shows where the shift moved in from
    moved = losses.diff_augment(x, ("translation",))
    assert moved.shape == x.shape
    zero_cols = (moved == 0).all(dim=(1, 2)).sum(dim=1)  # per image, columns entirely zero
    assert zero_cols.max() <= 2 and len(set(zero_cols.tolist())) > 1  # at most 16 // 8 px, differs per image
    kept = torch.stack([m[m != 0].sum() for m in moved]) / torch.stack([v.sum() for v in x])
    assert float(kept.max()) <= 1.0
    flipped = losses.diff_augment(x, ("flip",))
    same, mirrored = (flipped == x).flatten(1).all(1), (flipped == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54
    assert losses.parse_augment("none") == () and losses.parse_augment("flip,translation") == ("translation", "flip")
    with pytest.raises(ValueError, match="unknown augmentation"):
        losses.parse_augment("rotate")
