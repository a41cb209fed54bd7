import pytest
import torch

from ganaudit.core.errors import ConfigError
from ganaudit.training.nets import Discriminator, Encoder, Generator


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("head", ["linear", "conv"])
def test_shapes_for_every_size(size, channels, head):
    G = Generator(size, channels, z_dim=8, width=8)
    D = Discriminator(size, channels, width=8, head=head)
    E = Encoder(size, channels, z_dim=8, width=8)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    logit, feats = D(x)
    assert logit.shape == (3,)
    assert feats.shape == (3, D.feature_dim)
    assert E(x).shape == (3, 8)


@pytest.mark.parametrize("size", [8, 24, 256])
def test_unsupported_size_is_a_config_error(size):
    with pytest.raises(ConfigError, match="power of two"):
        Generator(size)


def test_minibatch_std_in_eval_does_not_depend_on_the_batch():
    D = Discriminator(16, 1, width=8, spectral_norm=False, minibatch_std=True)
    x = torch.randn(8, 1, 16, 16)
    D.train()
    D(x)  # updates the running statistic
    D.eval()
    with torch.no_grad():
        alone = D(x[:1])[0]
        together = D(x)[0][:1]
    torch.testing.assert_close(alone, together)


def test_spectral_norm_bounds_the_weight_norm():
    D = Discriminator(16, 1, width=8, spectral_norm=True)
    D.train()
    for _ in range(20):  # power iterations converge
        D(torch.randn(4, 1, 16, 16))
    conv = D.trunk[0]
    w = conv.weight.flatten(1)
    assert torch.linalg.matrix_norm(w, ord=2) < 1.1


def test_unknown_discriminator_head_is_refused():
    with pytest.raises(ValueError, match="unknown discriminator head"):
        Discriminator(16, 1, width=8, head="mlp")


@pytest.mark.parametrize("head", ["linear", "conv"])
def test_without_spectral_norm_is_equivalent_and_leaves_the_original_intact(head):
    D = Discriminator(16, 1, width=8, spectral_norm=True, head=head)
    D.train()
    D(torch.randn(8, 1, 16, 16))
    D.eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        plain = D.without_spectral_norm()
        for a, b in zip(D(x), plain(x)):
            torch.testing.assert_close(a, b)
        D(x)  # the original still works after the copy
    assert not any("parametrizations" in k for k in plain.state_dict())


def test_rotate4_turns_like_rot90_and_rotation_targets_match_it():
    from ganaudit.training.nets import rotate4, rotation_targets

    x = torch.randn(3, 2, 5, 5)
    turned = rotate4(x)
    for k in range(4):
        torch.testing.assert_close(turned[3 * k : 3 * k + 3], torch.rot90(x, k, (2, 3)))
    assert rotation_targets(3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_rotation_head_sees_one_trunk_pass_and_judges_only_the_upright_images():
    D = Discriminator(16, 3, width=8, spectral_norm=True, rotation=True)
    D.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        logit, features, rot = D.with_rotations(x)
        torch.testing.assert_close(logit, D(x)[0])
        torch.testing.assert_close(features, D(x)[1])  # the realness logit of the upright images only
        assert rot.shape == (16, 4)
        plain = D.without_spectral_norm()
        torch.testing.assert_close(plain.with_rotations(x)[2], rot)
        assert D.without_spectral_norm(rotation=False).rotation_head is None
    with pytest.raises(ValueError, match="rotation"):
        Discriminator(16, 1, width=8).rotation_logits(torch.zeros(1, 8 * 2 * 16))
