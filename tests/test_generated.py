"""The generated-image head: crop policy, head training on tiny data, resume, export parity, runtime use."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from ganaudit.training.datasets import load_dataset, read_idx
from ganaudit.training.generated import (
    RESIZE_SCALE, GeneratedHead, SpectralBranch, augment, crops_of, head_logits, npr_residual, to_uint8,
)  # fmt: skip
from ganaudit.core.errors import ConfigError, ModelFormatError
from ganaudit.core.imaging import (
    head_regions, native_crops, native_regions, preprocess, regions_to_input, stack_head_regions,
)  # fmt: skip
from ganaudit.training.nets import Discriminator
from ganaudit.runtime.detector import Detector
from ganaudit.core.spec import METADATA_KEY, ModelSpec, PreprocessSpec
from ganaudit.training.train import TrainConfig, load_checkpoint, load_networks, sample
from ganaudit.training.train import train as run_training

from .conftest import run_cli

SPEC16 = PreprocessSpec(size=16, channels=1, native_crops=4)


def _test_images(mnist_path: Path, label: int = 0, n: int = 400) -> list[np.ndarray]:
    images = read_idx(mnist_path)[8000 : 8000 + n]
    labels = read_idx(mnist_path.with_name("t10k-labels-idx1-ubyte.gz"))[8000 : 8000 + n]
    return [im for im, lab in zip(images, labels) if lab == label]


def _auroc(neg: list[float], pos: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([0] * len(neg) + [1] * len(pos), list(neg) + list(pos)))


# --- the crop policy --------------------------------------------------------------------------------
def test_crop_policy_keeps_native_pixels_of_an_image_larger_than_the_model():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (50, 40), dtype=np.uint8)  # 16x16 model, image ~3x larger: never downscaled
    regions = native_regions(big, SPEC16)
    assert regions.shape == (4, 16, 16, 1)
    corners = [big[:16, :16], big[:16, 24:], big[34:, :16], big[34:, 24:]]
    for got, want in zip(regions, corners):
        np.testing.assert_array_equal(got[..., 0], want)
    centre = native_regions(big, SPEC16, n=1)[0, ..., 0]
    np.testing.assert_array_equal(centre, big[17:33, 12:28])
    crops = native_crops(big, SPEC16)
    assert crops.shape == (4, 1, 16, 16) and crops.dtype == np.float32
    np.testing.assert_allclose(crops[0, 0], big[:16, :16] / 127.5 - 1, atol=1e-6)


def test_crop_policy_on_small_and_model_size_images_matches_preprocess():
    rng = np.random.default_rng(1)
    for shape in [(16, 16), (12, 12), (28, 28, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        spec = PreprocessSpec(size=16, channels=1, native_crops=3)
        crops = native_crops(img, spec)
        assert crops.shape == (3, 1, 16, 16)
        if shape[0] <= 16:  # enlarged, never shrunk: a square image then gives exactly preprocess()
            np.testing.assert_array_equal(crops, np.repeat(preprocess(img, spec)[None], 3, 0))
    wide = rng.integers(0, 256, (8, 40), dtype=np.uint8)  # short side enlarged to 16 keeping the aspect ratio
    assert native_regions(wide, SPEC16).shape == (4, 16, 16, 1)


def test_random_crops_for_training_are_native_windows_at_varied_places():
    img = np.random.default_rng(3).integers(0, 256, (40, 40), dtype=np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(img, (16, 16))  # [25, 25, 16, 16]
    regions = native_regions(img, SPEC16, n=12, rng=np.random.default_rng(0))
    assert regions.shape == (12, 16, 16, 1)
    origins = set()
    for r in regions:
        hits = np.argwhere((windows == r[..., 0]).all(axis=(2, 3)))
        assert len(hits) == 1
        origins.add(tuple(hits[0]))
    assert len(origins) > 6


def test_augment_changes_quality_and_scale_within_the_documented_ranges():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    sizes, changed = set(), 0
    for _ in range(200):
        out = augment(img, rng)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 1
        sizes.add(out.shape[0])
        changed += out.shape == img.shape and not np.array_equal(out, img)
    lo, hi = RESIZE_SCALE
    assert min(sizes) >= round(32 * lo) and max(sizes) <= round(32 * hi) and min(sizes) < 16 and len(sizes) > 5
    assert changed > 20  # blur / JPEG without resizing
    wider = {augment(img, rng, resize_max=3.0).shape[0] for _ in range(200)}  # colour images' range
    assert max(wider) <= 96 and max(wider) > round(32 * hi)


def test_spectral_branch_finds_the_frequency_of_a_grating():
    branch = SpectralBranch(16)
    y, x = np.mgrid[:16, :16]
    grating = torch.from_numpy(np.cos(2 * np.pi * 4 * x / 16).astype(np.float32))[None, None]
    prof = branch.profile(grating)[0]
    assert int(prof.argmax()) == 4
    with torch.no_grad():
        assert float(branch(grating)) == 0.0  # zero-initialised: the head starts as D alone


def test_npr_residual_is_zero_on_nearest_upsampled_images_and_not_on_photos():
    torch.manual_seed(0)
    small = torch.rand(3, 3, 8, 8)
    upsampled = torch.nn.functional.interpolate(small, scale_factor=2.0, mode="nearest")
    assert float(npr_residual(upsampled).abs().max()) == 0.0
    natural = torch.rand(3, 3, 16, 16)
    r = npr_residual(natural)
    assert float(r[:, :, ::2, ::2].abs().max()) == 0.0 and float(r.abs().mean()) > 0.1


def test_head_starts_as_the_negated_discriminator():
    torch.manual_seed(0)
    D = Discriminator(16, 1, 8).eval()
    with torch.no_grad():
        D(torch.randn(4, 1, 16, 16))  # power iterations settle
    head = GeneratedHead.from_discriminator(D).eval()
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(head(x).numpy(), -D(x)[0].numpy(), rtol=1e-4, atol=1e-5)
    assert D.trunk[0].parametrizations.weight is not None  # D itself untouched (still spectral-normalised)


# --- training ------------------------------------------------------------------------------------------
def test_head_training_on_tiny_data_separates_real_from_generated(head_run, mnist_path):
    lines = [json.loads(line) for line in (head_run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 180 and lines[-1]["phase"] == "head" and "h_loss" in lines[-1]
    assert len(list((head_run / "snapshots").glob("G_*.pt"))) == 6
    # 4 native-scale crops and, the 28 px digits being at least 1.41x the 16 px model, 4 of the scale view
    assert np.load(head_run / "validation_native.npy").shape[1:] == (8, 16, 16, 1)
    cfg, nets, ckpt = load_networks(head_run)
    assert ckpt["step"] == 180 and nets.H is not None
    spec = cfg.preprocess
    real = head_logits(nets.H, crops_of(np.stack(_test_images(mnist_path))[..., None], spec))
    fake = head_logits(nets.H, crops_of(to_uint8(sample(head_run, 100, seed=123)), spec))
    assert _auroc(real.tolist(), fake.tolist()) > 0.9


def test_resume_inside_the_head_phase_is_equivalent_to_a_straight_run(tmp_path):
    data = load_dataset("sklearn:digits?label=3", size=16, native_crops=4)
    assert data.native is not None and data.native.shape[1:] == (4, 16, 16, 1)
    cfg = TrainConfig(size=16, width=8, z_dim=8, batch_size=16, steps=12, encoder_steps=4, generated_head=True,
                      head_steps=6, head_pool=64, sample_every=6, checkpoint_every=6, log_every=2)  # fmt: skip
    run_training(cfg, data, tmp_path / "straight", progress=False)
    run_training(cfg, data, tmp_path / "resumed", progress=False, stop_at=19)
    assert load_checkpoint(tmp_path / "resumed")["step"] == 19
    run_training(cfg, data, tmp_path / "resumed", resume=True, progress=False)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["step"] == b["step"] == 22
    for k in a["H"]:
        assert torch.equal(a["H"][k], b["H"][k]), k
    trained = GeneratedHead.from_discriminator(load_networks(tmp_path / "straight")[1].D)
    assert any(not torch.equal(v, trained.state_dict()[k]) for k, v in a["H"].items())  # the head did train


def test_prefetched_head_batches_train_the_same_head_as_batches_made_in_step(tmp_path, monkeypatch):
    import ganaudit.training.train as train_module

    data = load_dataset("sklearn:digits?label=3", size=16, native_crops=4)
    cfg = TrainConfig(size=16, width=8, z_dim=8, batch_size=16, steps=6, encoder_steps=2, generated_head=True,
                      head_steps=5, head_pool=64, sample_every=6, checkpoint_every=6, log_every=1)  # fmt: skip
    run_training(cfg, data, tmp_path / "prefetched", progress=False)
    monkeypatch.setattr(train_module, "HEAD_PREFETCH", False)
    run_training(cfg, data, tmp_path / "in_step", progress=False)
    a, b = load_checkpoint(tmp_path / "prefetched"), load_checkpoint(tmp_path / "in_step")
    for k in a["H"]:
        assert torch.equal(a["H"][k], b["H"][k]), k
    losses = [[json.loads(line).get("h_loss") for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("prefetched", "in_step")]  # fmt: skip
    assert losses[0] == losses[1] and sum(v is not None for v in losses[0]) == 5


def test_retrain_head_from_python_takes_the_new_head_learning_rate(tmp_path):
    from dataclasses import replace

    data = load_dataset("sklearn:digits?label=3", size=16, native_crops=4)
    cfg = TrainConfig(size=16, width=8, z_dim=8, batch_size=16, steps=4, encoder_steps=2, generated_head=True,
                      head_steps=3, head_pool=64, sample_every=6, checkpoint_every=6)  # fmt: skip
    run_training(cfg, data, tmp_path / "run", progress=False)
    first = load_checkpoint(tmp_path / "run")["H"]
    run_training(replace(cfg, head_lr=1e-2), data, tmp_path / "run", progress=False, retrain_head=True)
    assert load_networks(tmp_path / "run")[0].head_lr == 1e-2
    assert any(not torch.equal(v, load_checkpoint(tmp_path / "run")["H"][k]) for k, v in first.items())


def test_retrain_head_gives_the_head_a_fresh_run_with_those_head_steps_would_have(tmp_path):
    args = ["sklearn:digits?label=3", "--size", "16", "--width", "8", "--z-dim", "8", "--batch-size", "16",
            "--steps", "12", "--encoder-steps", "4", "--sample-every", "6", "--checkpoint-every", "6", "--no-progress"]  # fmt: skip
    for name, head_steps in (("short", "4"), ("long", "9")):
        res = run_cli("train", *args, "--head-steps", head_steps, "--out", tmp_path / name)
        assert res.exit_code == 0, res.output
    before = load_checkpoint(tmp_path / "short")
    res = run_cli("train", *args, "--out", tmp_path / "short", "--retrain-head", "--head-steps", "9")
    assert res.exit_code == 0, res.output
    a, b = load_checkpoint(tmp_path / "short"), load_checkpoint(tmp_path / "long")
    assert a["step"] == b["step"] == 25 and a["config"]["head_steps"] == 9
    for net in ("H", "D", "E", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    assert not all(torch.equal(before["H"][k], a["H"][k]) for k in a["H"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 25  # the old head's lines were dropped, none doubled

    no_head = run_cli("train", *args, "--no-generated-head", "--out", tmp_path / "plain")
    assert no_head.exit_code == 0, no_head.output
    res = run_cli("train", *args, "--out", tmp_path / "plain", "--retrain-head")
    assert res.exit_code == 2 and "without the generated-image head" in res.stderr
    res = run_cli("train", "sklearn:digits?label=4", *args[1:], "--out", tmp_path / "short", "--retrain-head")
    assert res.exit_code == 2 and "data differs" in res.stderr
    assert load_checkpoint(tmp_path / "short")["step"] == 25  # refused before anything was rewound


def test_retrain_head_with_the_npr_branch_exports_with_parity(tmp_path):
    args = ["sklearn:digits?label=3", "--size", "16", "--width", "8", "--z-dim", "8", "--batch-size", "16",
            "--steps", "12", "--encoder-steps", "4", "--head-steps", "6", "--sample-every", "6",
            "--checkpoint-every", "6", "--no-progress", "--no-audit", "--out", tmp_path / "run"]  # fmt: skip
    assert run_cli("train", *args).exit_code == 0
    res = run_cli("train", *args, "--retrain-head", "--head-npr")
    assert res.exit_code == 0, res.output
    cfg, nets, _ = load_networks(tmp_path / "run")
    assert cfg.head_npr and nets.H.residual_d is not None
    x = torch.from_numpy(np.load(tmp_path / "run" / "validation.npy")[:8])
    with torch.no_grad():
        image, residual = nets.H.branch_logits(x)
        np.testing.assert_allclose(nets.H(x).numpy(), torch.maximum(image, residual).numpy())
        shifted = nets.H.branch_logits(x + 0.1)[1]  # the residual CNN cannot see a brightness shift
        np.testing.assert_allclose(residual.numpy(), shifted.numpy(), rtol=1e-4, atol=1e-4)
    res = run_cli("train", *args, "--retrain-head")  # not given again: the run keeps its branches
    assert res.exit_code == 0, res.output
    assert load_networks(tmp_path / "run")[0].head_npr
    res = run_cli("export", tmp_path / "run", "--output", tmp_path / "m.onnx")
    assert res.exit_code == 0, res.output  # export checks torch-vs-onnxruntime parity of every output
    verdicts = Detector.load(tmp_path / "m.onnx").detect([np.full((16, 16), 128, np.uint8)])
    assert verdicts[0].generated_score is not None


def test_head_needs_native_crops_with_a_clear_message(tmp_path):
    data = load_dataset("sklearn:digits?label=3", size=16)  # no native crops kept by default
    cfg = TrainConfig(size=16, width=8, z_dim=8, steps=2, encoder_steps=1, generated_head=True)
    with pytest.raises(Exception, match="native-scale crops"):
        run_training(cfg, data, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()


# --- export and runtime ------------------------------------------------------------------------------
def test_export_writes_one_file_with_the_head_and_its_spec(head_model):
    proto = onnx.load(str(head_model))
    assert [i.name for i in proto.graph.input] == ["image", "crops"]
    assert proto.graph.input[1].type.tensor_type.shape.dim[1].dim_param == "crops"  # any K: see the next tests
    assert "generated_logit" in [o.name for o in proto.graph.output]
    det = Detector.load(head_model)
    spec = det.spec
    assert spec.heads == ["anomaly", "generated"] and spec.inputs == ["image", "crops"]
    assert spec.preprocess.native_crops == 4 and det.has_generated_head
    cal, thr = spec.calibration["generated"], spec.thresholds["generated"]
    assert cal["method"] == "platt" and cal["n_negative"] == thr.n_val > 0 and cal["n_positive"] >= 64
    assert 0 <= thr.value <= 1 and thr.fpr == 0.01 and len(spec.quantiles["generated"]) == 1001


def test_export_parity_torch_vs_onnxruntime_on_native_crops(head_run, head_model, mnist_path):
    from ganaudit.training.export_graph import scoring_model, torch_outputs

    cfg, nets, _ = load_networks(head_run)
    det = Detector.load(head_model)
    model = scoring_model(Path(head_run), cfg, nets, head=nets.H).use_scoring(det.spec.scoring)
    rng = np.random.default_rng(0)
    imgs = [np.kron(im, np.ones((2, 3), np.uint8)) for im in _test_images(mnist_path)[:6]]  # 56x84: larger
    imgs += [rng.integers(0, 256, (40, 40), dtype=np.uint8)] + list(to_uint8(sample(head_run, 3, seed=9)))
    for p in [det.prepare(im) for im in imgs]:  # one at a time: large images have the scale view's crops too
        x, crops = p.tensor[None], p.crops[None]
        ref = torch_outputs(model, x, model.output_names, crops=crops)
        got = det.run(x, crops)
        for name in model.output_names:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_small_images_feed_one_crop_and_score_as_with_all_of_them(head_run, head_model, mnist_path):
    det = Detector.load(head_model)
    small = list(to_uint8(sample(head_run, 4, seed=5)))  # 16x16: their 4 crops are copies
    big = _test_images(mnist_path)[1][:20, :20]  # 20x20: 4 different crops, too small for the scale view
    fed = []
    real_run = det.session.run
    det.session.run = lambda names, feed: fed.append(feed["crops"].shape[1]) or real_run(names, feed)
    for images in (small, small + [big]):
        prepared = [det.prepare(im) for im in images]
        x, crops = np.stack([p.tensor for p in prepared]), np.stack([p.crops for p in prepared])
        got = det.run(x, crops)["generated_logit"]
        every_crop = real_run(["generated_logit"], {"image": x, "crops": crops})[0]
        np.testing.assert_allclose(got, every_crop, rtol=1e-5, atol=1e-5)
    assert fed == [1, 4]  # one crop only when every image's crops are alike


def test_files_with_a_fixed_number_of_crops_still_get_all_of_them(head_run, head_model, tmp_path):
    proto = onnx.load(str(head_model))
    dim = proto.graph.input[1].type.tensor_type.shape.dim[1]
    dim.ClearField("dim_param")
    dim.dim_value = 4  # as files exported before the crops axis was dynamic (and before the scale view)
    fixed = tmp_path / "fixed-with-view.onnx"
    onnx.save(proto, str(fixed))
    with pytest.raises(ModelFormatError, match="scale_view needs a graph whose 'crops' input takes any number"):
        Detector.load(fixed)
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            spec = json.loads(p.value)
            del spec["preprocess"]["scale_view"]
            p.value = json.dumps(spec)
    old = tmp_path / "fixed.onnx"
    onnx.save(proto, str(old))
    det = Detector.load(old)
    assert not det.crops_axis_free
    small = list(to_uint8(sample(head_run, 3, seed=6)))
    got = [v.generated_score for v in det.detect(small)]
    assert got == pytest.approx([v.generated_score for v in Detector.load(head_model).detect(small)], rel=1e-5)


def test_detector_scores_large_images_on_their_native_crops(head_run, head_model, mnist_path):
    det = Detector.load(head_model)
    big = np.kron(_test_images(mnist_path)[0], np.ones((3, 3), np.uint8))  # 84x84, 16x16 model
    prepared = det.prepare(big)
    np.testing.assert_array_equal(prepared.crops, native_crops(big, det.spec.preprocess))
    # 4 native-scale crops, then 4 of the image downscaled to 16 px (the scale view)
    np.testing.assert_array_equal(prepared.crops[:4], regions_to_input(native_regions(big, det.spec.preprocess), det.spec.preprocess))
    view = cv2.resize(big, (16, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(prepared.crops[4:], np.repeat(preprocess(view, det.spec.preprocess)[None], 4, 0))
    v = det.detect(big)
    logit = det.run(prepared.tensor[None], prepared.crops[None])["generated_logit"]
    downscaled = det.run(prepared.tensor[None])["generated_logit"]  # the whole image shrunk to 16x16
    assert logit[0] != pytest.approx(downscaled[0], abs=1e-4)
    cal = det.spec.calibration["generated"]
    assert v.generated_score == pytest.approx(1 / (1 + np.exp(-(cal["a"] * float(logit[0]) + cal["b"]))), rel=1e-6)
    assert v.generated_flag == (v.generated_score > det.thresholds.generated)


def test_scale_view_adds_crops_of_large_images_downscaled_to_the_model_size():
    view16 = PreprocessSpec(size=16, channels=1, native_crops=4, scale_view=True)
    rng = np.random.default_rng(4)
    small = rng.integers(0, 256, (22, 30), dtype=np.uint8)  # short side below 1.41 x 16: native crops only
    np.testing.assert_array_equal(head_regions(small, view16), native_regions(small, view16))
    wide = rng.integers(0, 256, (24, 60), dtype=np.uint8)  # 1.5 x 16: downscaled to 16 x 40, aspect kept
    regions = head_regions(wide, view16)
    assert regions.shape == (8, 16, 16, 1)
    # stacked beside a large image, the small one repeats its crops (the same mean)
    padded = stack_head_regions([head_regions(small, view16), regions])[0]
    np.testing.assert_array_equal(padded, np.concatenate([native_regions(small, view16)] * 2))
    np.testing.assert_array_equal(regions[:4], native_regions(wide, view16))
    np.testing.assert_array_equal(regions[4:], native_regions(cv2.resize(wide, (40, 16), interpolation=cv2.INTER_AREA), view16))
    assert head_regions(wide, SPEC16).shape == (4, 16, 16, 1)  # off: native crops only
    with pytest.raises(ConfigError, match="scale_view needs native_crops"):
        PreprocessSpec(size=16, channels=1, native_crops=0, scale_view=True)


def test_data_sets_store_the_scale_view_padded_to_one_count(tmp_path):
    rng = np.random.default_rng(5)
    for i, side in enumerate((16, 16, 40)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (side, side), dtype=np.uint8))
    data = load_dataset(str(tmp_path), size=16, native_crops=4)
    assert data.native.shape == (3, 8, 16, 16, 1)
    small = [i for i, ident in enumerate(data.ids) if not ident.endswith("2.png")]
    for i in small:  # the 16 px images repeat their crops: the head's mean is the same
        np.testing.assert_array_equal(data.native[i, 4:], data.native[i, :4])
    assert load_dataset(str(tmp_path), size=16, native_crops=4, scale_view=False).native.shape[1] == 4
    (tmp_path / "2.png").unlink()
    small_only = load_dataset(str(tmp_path), size=16, native_crops=4)
    assert small_only.native.shape[1] == 4  # no image needs the view: nothing stored twice
    # crops cut another way than the config says are refused before training, even when their count fits
    cfg = TrainConfig(size=16, width=8, z_dim=8, steps=2, encoder_steps=1, generated_head=True, head_steps=1,
                      batch_size=2, native_crops=8)
    with pytest.raises(ConfigError, match="cut with native_crops=4, scale_view=True"):
        run_training(cfg, data, tmp_path / "run", progress=False)


def test_a_batch_of_small_and_enlarged_images_scores_as_each_alone(head_run, head_model, mnist_path):
    det = Detector.load(head_model)
    assert det.spec.preprocess.scale_view
    digit = _test_images(mnist_path)[2]
    images = [digit, np.kron(digit, np.ones((2, 2), np.uint8)), to_uint8(sample(head_run, 1, seed=8))[0], digit[:20, :20]]
    fed = []
    real_run = det.session.run
    det.session.run = lambda names, feed: fed.append(feed["crops"].shape[1]) or real_run(names, feed)
    together = det.detect(images)
    alone = [det.detect(im) for im in images]
    assert [v.generated_score for v in together] == pytest.approx([v.generated_score for v in alone], rel=1e-5)
    assert [v.anomaly_score for v in together] == pytest.approx([v.anomaly_score for v in alone], rel=1e-5)
    # together: one call per crop count (the 28 and 56 px digits have the view's 8; the others 4)
    assert fed[:2] == [4, 8] and fed[2:] == [8, 8, 1, 4]


def test_thin_images_are_cropped_without_enlarging_them_whole(head_model, mnist_path, monkeypatch):
    import ganaudit.core.imaging as imaging

    rng = np.random.default_rng(3)
    thin = rng.integers(0, 256, (4, 300), dtype=np.uint8)  # enlarged 4x: 16 x 1200
    whole = native_regions(thin, SPEC16)
    monkeypatch.setattr(imaging, "MAX_ENLARGED_PIXELS", 100)  # force the crop-by-crop path
    windowed = native_regions(thin, SPEC16)
    assert np.abs(whole.astype(int) - windowed.astype(int)).max() <= 1  # same pixels, up to rounding
    monkeypatch.undo()

    # 1 x 2,000,000 would be 32 GB enlarged whole; it must score quickly, next to a normal image.
    det = Detector.load(head_model)
    verdicts = det.detect([np.full((1, 2_000_000), 128, np.uint8), _test_images(mnist_path)[0]])
    assert [v.status for v in verdicts] == ["ok", "ok"]


def test_verdicts_flag_generated_images_and_pass_real_ones(head_run, head_model, mnist_path):
    det = Detector.load(head_model, domain_gate=False)  # the head itself (the gate: tests/test_verdicts.py)
    real = det.detect(_test_images(mnist_path))
    fake = det.detect(list(to_uint8(sample(head_run, 60, seed=77))))
    assert all(v.status == "ok" and 0 <= v.generated_score <= 1 for v in real + fake)
    assert _auroc([v.generated_score for v in real], [v.generated_score for v in fake]) > 0.9
    assert np.mean([v.generated_flag for v in fake]) > 0.5
    assert np.mean([v.generated_flag for v in real]) < 0.5
    strict = det.detect(list(to_uint8(sample(head_run, 10, seed=78))), generated_threshold=1.0)
    assert not any(v.generated_flag for v in strict)


def test_no_generated_head_run_exports_and_runs_as_before(tiny_run, tiny_model):
    assert not (tiny_run / "snapshots").exists() and not (tiny_run / "validation_native.npy").exists()
    assert "H" not in load_checkpoint(tiny_run)
    det = Detector.load(tiny_model)
    assert det.spec.inputs == ["image"] and det.spec.heads == ["anomaly"] and det.spec.preprocess.native_crops == 0
    assert [i.name for i in det.session.get_inputs()] == ["image"]
    v = det.detect(np.zeros((40, 40), np.uint8))
    assert v.generated_score is None and v.generated_flag is None


def test_a_spec_without_inputs_reads_as_image_only():
    spec = ModelSpec(name="old", preprocess=PreprocessSpec(16, 1), heads=["anomaly"], outputs=["anomaly_score"])
    d = json.loads(spec.to_json())
    d.pop("inputs")
    assert ModelSpec.from_json(json.dumps(d)).inputs == ["image"]


def test_hostile_snapshots_and_checkpoints_are_clear_errors_without_unsafe_advice(tmp_path):
    """A snapshot holding a pickle, garbage or another net's weights was an internal error (exit 5), and the
    messages relayed torch's advice to retry with weights_only=False, which would run the file's code."""
    import pickle
    import shutil

    args = ["sklearn:digits?label=3", "--size", "16", "--width", "8", "--z-dim", "8", "--batch-size", "16",
            "--steps", "12", "--encoder-steps", "4", "--head-steps", "4", "--sample-every", "6",
            "--checkpoint-every", "6", "--no-progress", "--no-audit"]  # fmt: skip
    base = tmp_path / "base"
    assert run_cli("train", *args, "--out", base).exit_code == 0

    class Payload:
        def __reduce__(self):
            return (print, ("PWNED",))

    cases = {
        "pickle": pickle.dumps({"w": Payload()}),
        "garbage": b"not a torch file at all",
        "other-net": None,  # a valid tensor file with the wrong keys
    }
    for name, content in cases.items():
        run = tmp_path / name
        shutil.copytree(base, run)
        snapshot = sorted((run / "snapshots").iterdir())[0]
        if content is None:
            torch.save({"unexpected.weight": torch.zeros(2)}, snapshot)
        else:
            snapshot.write_bytes(content)
        res = run_cli("train", *args, "--out", run, "--retrain-head")
        assert res.exit_code == 2 and "generator snapshot" in res.stderr, (name, res.output)
        assert "weights_only" not in res.output and "PWNED" not in res.output and "Traceback" not in res.output
    run = tmp_path / "checkpoint"
    shutil.copytree(base, run)
    (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps({"w": Payload()}))
    res = run_cli("export", run, "-o", tmp_path / "m.onnx")
    assert res.exit_code == 2 and "checkpoint" in res.stderr and "never unpickles" in res.stderr, res.output
    assert "weights_only" not in res.output and "PWNED" not in res.output
