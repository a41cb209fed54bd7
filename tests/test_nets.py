import pytest
import torch

from ganaudit.core.errors import ConfigError
from ganaudit.training.nets import Discriminator, Encoder, Generator


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_size(size, channels):
    G = Generator(size, channels, z_dim=8, width=8)
    D = Discriminator(size, channels, width=8)
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


def test_without_spectral_norm_is_equivalent_and_leaves_the_original_intact():
    D = Discriminator(16, 1, width=8, spectral_norm=True)
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


def test_shift_moves_the_image_a_quarter_side_and_fills_the_border_by_reflection():
    from ganaudit.training.nets import SHIFTS, shift, shift_each

    x = torch.arange(16.0 * 16).reshape(1, 1, 16, 16)
    assert torch.equal(shift(x, 0), x)
    for k, (dx, dy) in enumerate(SHIFTS):
        moved = shift(x, k)
        assert moved.shape == x.shape
        # the interior is x read 4 px further along each axis the shift names
        inner = slice(4, 12)
        torch.testing.assert_close(moved[..., inner, inner], x[..., 4 + 4 * dy : 12 + 4 * dy, 4 + 4 * dx : 12 + 4 * dx])
    batch = torch.randn(6, 3, 16, 16)
    classes = torch.tensor([0, 3, 8, 1, 1, 5])
    each = shift_each(batch, classes)
    for i, k in enumerate(classes.tolist()):
        torch.testing.assert_close(each[i], shift(batch[i : i + 1], k)[0])


def test_translation_task_trains_on_shifted_turns_and_scores_four_turns_by_five_shifts():
    from ganaudit.training.nets import SCORE_SHIFTS, SHIFTS, rotate4, shift

    D = Discriminator(16, 3, width=8, rotation=True, translation=True).eval()
    x = torch.randn(3, 3, 16, 16)
    classes = torch.randint(0, len(SHIFTS), (12,))
    with torch.no_grad():
        logit, features, rot, trans = D.with_transforms(x, classes)
        torch.testing.assert_close(logit, D(x)[0])  # x itself is judged, unshifted
        assert rot.shape == (12, 4) and trans.shape == (12, 6)
        logit, features, rot, trans = D.scoring_pass(x)
        torch.testing.assert_close(features, D(x)[1])
        assert rot.shape == (4 * SCORE_SHIFTS * 3, 4) and trans.shape == (4 * SCORE_SHIFTS * 3, 6)
        # shift-major: block 2 is every turned copy moved by SHIFTS[2]
        block = slice(2 * 12, 3 * 12)
        torch.testing.assert_close(rot[block], D.rotation_head(D.trunk(shift(rotate4(x), 2)).flatten(1)))
        plain = D.without_spectral_norm()
        torch.testing.assert_close(plain.scoring_pass(x)[3], trans)
        assert D.without_spectral_norm(rotation=False).translation_head is None
    with pytest.raises(ValueError, match="rotation"):
        Discriminator(16, 3, width=8, translation=True)


def test_transformation_score_is_low_when_d_names_every_turn_and_shift_and_high_when_it_misses():
    from ganaudit.training.nets import SCORE_SHIFTS, SHIFTS
    from ganaudit.training.scoring import ScoringModel

    n, big = 2, 30.0
    rot = torch.zeros(SCORE_SHIFTS, 4, n, 4)
    trans = torch.zeros(SCORE_SHIFTS, 4, n, 6)
    for s in range(SCORE_SHIFTS):
        dx, dy = SHIFTS[s]
        for r in range(4):
            rot[s, r, :, r] = big
            trans[s, r, :, dx + 1] = big
            trans[s, r, :, 3 + dy + 1] = big
    right = ScoringModel.rotation_score(rot.flatten(0, 2), trans.flatten(0, 2))
    assert right.shape == (n,) and right.max() < 1e-6
    wrong = trans.clone()
    wrong[3, 1, 0] = wrong[3, 1, 0].roll(1)  # image 0: one turned copy's shift misread
    score = ScoringModel.rotation_score(rot.flatten(0, 2), wrong.flatten(0, 2))
    assert score[0] > 20 and score[1] < 1e-6
    # without the translation task the score reads the four turns only
    assert ScoringModel.rotation_score(rot[0].flatten(0, 1)).max() < 1e-6
