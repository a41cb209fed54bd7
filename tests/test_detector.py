"""Export and the torch-free runtime: parity, thresholds, the Python API, bad model files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import ganaudit
from ganaudit import Detector, ModelFormatError, Verdict
from ganaudit.training.export_graph import scoring_model, torch_outputs
from ganaudit.core.layout import STATIONARY_BELOW, alignment
from ganaudit.core.imaging import preprocess, preprocess_batch
from ganaudit.training.scoring import KNN_DIMS, components_of, k_center, nearest_sq_distance
from ganaudit.core.spec import METADATA_KEY
from ganaudit.training.train import load_networks

from .conftest import run_cli


@pytest.fixture(scope="module")
def detector(tiny_model) -> Detector:
    return Detector.load(tiny_model)


def test_torch_and_onnxruntime_agree_on_real_mnist_including_maps(tiny_run, tiny_model, mnist_test_images):
    images, _ = mnist_test_images
    det = Detector.load(tiny_model)
    x = np.stack([preprocess(im, det.spec.preprocess) for im in images[:200]])
    cfg, nets, _ = load_networks(tiny_run)
    model = scoring_model(Path(tiny_run), cfg, nets, head=None).use_scoring(det.spec.scoring)
    ref = torch_outputs(model, x, model.output_names)
    got = det.run(x)
    assert set(ref) == set(det.spec.outputs)
    for name in ref:
        tol = 1e-4 * (1 + np.abs(ref[name]))
        assert np.all(np.abs(ref[name] - got[name]) <= tol), name
    assert got["anomaly_map"].shape == (200, 1, 16, 16)


def test_the_model_file_carries_a_complete_spec(tiny_model):
    proto = onnx.load(str(tiny_model))
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = json.loads(meta[METADATA_KEY])
    assert spec["format_version"] == 1
    assert spec["preprocess"]["size"] == 16 and spec["preprocess"]["channels"] == 1
    assert spec["heads"] == ["anomaly"]
    thr = spec["thresholds"]["anomaly"]
    assert thr["fpr"] == 0.01 and thr["n_val"] > 10
    q = spec["quantiles"]["anomaly"]
    assert len(q) >= 101 and q == sorted(q)
    prov = spec["provenance"]
    assert prov["fingerprint"] and prov["n_train"] > 0 and prov["config"]["steps"] == 150
    assert prov["export_ganaudit_version"] == ganaudit.__version__
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_the_zeros_model_separates_zeros_from_other_digits(detector, mnist_test_images):
    images, labels = mnist_test_images
    verdicts = detector.detect(list(images))
    scores = np.array([v.anomaly_score for v in verdicts])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels != 0, scores) > 0.8
    zeros = scores[labels == 0]
    assert np.mean(zeros > detector.thresholds.anomaly) < 0.2


def test_detect_accepts_paths_bytes_arrays_and_lists(detector, mnist_test_images, tmp_path):
    image = mnist_test_images[0][0]
    path = tmp_path / "digit.png"
    cv2.imwrite(str(path), image)
    by_array = detector.detect(image)
    by_path = detector.detect(str(path))
    by_bytes = detector.detect(path.read_bytes())
    assert isinstance(by_array, Verdict) and by_array.status == "ok"
    assert by_path.source == str(path) and by_path.width == 28 and by_path.height == 28
    assert by_array.anomaly_score == pytest.approx(by_path.anomaly_score, rel=1e-6)
    assert by_bytes.anomaly_score == pytest.approx(by_path.anomaly_score, rel=1e-6)
    many = detector.detect([image, path, b"garbage"])
    assert [v.status for v in many] == ["ok", "ok", "error"]
    assert "not a recognised image" in many[2].error
    assert many[2].anomaly_score is None and not many[2].flagged


def test_verdict_fields(detector, mnist_test_images):
    v = detector.detect(mnist_test_images[0][0], include_map=True)
    assert 0 <= v.anomaly_percentile <= 100
    assert v.anomaly_flag == (v.anomaly_score > detector.thresholds.anomaly)
    assert v.flagged == v.anomaly_flag
    assert v.generated_score is None and v.generated_flag is None  # no generated head in this model
    assert v.anomaly_map.shape == (16, 16) and v.anomaly_map.min() >= 0
    assert set(v.components) == {
        "disc_logit", "pixel_residual", "feature_residual", "izif_score", "knn_distance", "patch_distance",
    }  # fmt: skip
    d = v.to_dict()
    assert "anomaly_map" not in d and json.dumps(d)


def test_thresholds_can_be_overridden_at_load_and_per_call(tiny_model, mnist_test_images):
    image = mnist_test_images[0][0]
    base = Detector.load(tiny_model)
    score = base.detect(image).anomaly_score
    assert Detector.load(tiny_model, anomaly_threshold=score - 1e-6).detect(image).anomaly_flag is True
    assert Detector.load(tiny_model, anomaly_threshold=score + 1e-6).detect(image).anomaly_flag is False
    assert base.detect(image, anomaly_threshold=-1.0).anomaly_flag is True
    loose, strict = Detector.load(tiny_model, fpr=0.5), Detector.load(tiny_model, fpr=0.001)
    assert loose.thresholds.anomaly < base.thresholds.anomaly <= strict.thresholds.anomaly
    with pytest.raises(ganaudit.ConfigError, match="fpr"):
        Detector.load(tiny_model, fpr=1.5)


def test_percentile_matches_the_validation_scores(tiny_run, detector):
    val = np.load(tiny_run / "validation.npy")
    scores = detector.run(val)["anomaly_score"]
    median = float(np.median(scores))
    v = detector.score_prepared([ganaudit.runtime.detector.Prepared(val[0], 16, 16)])[0]
    expected = 100 * np.mean(scores < v.anomaly_score)
    assert abs(v.anomaly_percentile - expected) <= 100 / len(scores) + 1
    assert detector.resolve_thresholds(fpr=0.5).anomaly == pytest.approx(median, rel=0.05)


def test_batch_results_do_not_depend_on_batch_composition(tiny_model, mnist_test_images):
    images = list(mnist_test_images[0][:70])
    one_by_one = [Detector.load(tiny_model, batch_size=1).detect(im).anomaly_score for im in images[:5]]
    batched = [v.anomaly_score for v in Detector.load(tiny_model, batch_size=64).detect(images)][:5]
    np.testing.assert_allclose(one_by_one, batched, rtol=1e-5)


def test_eight_threads_share_one_detector(detector, mnist_test_images):
    images = list(mnist_test_images[0][:64])
    serial = [v.anomaly_score for v in detector.detect(images)]
    chunks = [images[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda c: [v.anomaly_score for v in detector.detect(c)], chunks))
    for i in range(8):
        np.testing.assert_allclose(parallel[i], serial[i::8], rtol=1e-5)  # float32 kernels differ by batch shape, as above


def test_runtime_works_without_torch(tiny_model, mnist_test_images, tmp_path):
    cv2.imwrite(str(tmp_path / "d.png"), mnist_test_images[0][0])
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now fails
        from ganaudit import Detector
        v = Detector.load({str(tiny_model)!r}).detect({str(tmp_path / "d.png")!r})
        assert v.status == "ok", v
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print(v.anomaly_score)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) > 0


# --- bad model files -------------------------------------------------------------------------
def _plain_onnx(path):
    torch.onnx.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),), str(path), dynamo=False)
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _with_spec(tiny_model, path, mutate):
    proto = onnx.load(str(tiny_model))
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            p.value = mutate(p.value)
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m, p: p / "missing.onnx", "not found"),
        (lambda m, p: _write(p / "t.onnx", m.read_bytes()[:5000]), "not a loadable ONNX model"),
        (lambda m, p: _write(p / "e.onnx", b""), "not a loadable ONNX model"),
        (lambda m, p: _plain_onnx(p / "plain.onnx"), "not a ganaudit detector"),
        (lambda m, p: _with_spec(m, p / "v.onnx", lambda s: s.replace('"format_version":1', '"format_version":99')),
         "unsupported model format_version 99"),
        (lambda m, p: _with_spec(m, p / "j.onnx", lambda s: s[:20]), "not valid JSON"),
        (lambda m, p: _with_spec(m, p / "d.onnx", lambda s: s[:-1] + ',"x":' + "[" * 100_000 + "]" * 100_000 + "}"),
         "nested too deeply"),  # was a RecursionError (exit 5)
    ],
    ids=["missing", "truncated", "empty", "no-spec", "future-version", "bad-json", "deep-json"],
)
def test_bad_model_files_raise_model_format_error_and_exit_2(tiny_model, tmp_path, make, message):
    path = make(tiny_model, tmp_path)
    with pytest.raises(ModelFormatError, match=message):
        Detector.load(path)
    res = run_cli("info", path)
    assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output


def test_info_prints_the_spec(tiny_model):
    res = run_cli("info", tiny_model)
    assert res.exit_code == 0
    assert "tiny-zeros" in res.stdout and "threshold:" in res.stdout and "1 x 16 x 16" in res.stdout
    assert "anomaly score: fused, aligned layout" in res.stdout and "4 z(log knn_distance)" in res.stdout
    assert "domain gate:" in res.stdout
    js = json.loads(run_cli("info", tiny_model, "--json").stdout)
    assert js["name"] == "tiny-zeros" and len(js["spec_hash"]) == 16


def test_info_escapes_control_characters_from_the_model(tiny_model, tmp_path):
    """A model comes from strangers too: an escape sequence in its name must not retitle or rewrite the
    terminal that `ganaudit info` prints to."""
    onnx = pytest.importorskip("onnx")
    from ganaudit.core.spec import METADATA_KEY

    model = onnx.load(str(tiny_model))
    prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    prop.value = json.dumps({**json.loads(prop.value), "name": "evil\x1b]0;pwned\x07\rfine\x9b2J"})
    onnx.save(model, str(tmp_path / "evil.onnx"))
    res = run_cli("info", tmp_path / "evil.onnx")
    assert res.exit_code == 0, res.stderr
    assert not any(c in res.stdout for c in "\x1b\x07\r\x9b")
    assert "evil\\x1b]0;pwned\\x07\\x0dfine\\x9b2J" in res.stdout


def test_info_prints_the_shipped_models_domain_gate():
    res = run_cli("info", "digits")
    assert res.exit_code == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("domain gate:"))
    gate = Detector.load("digits").spec.domain
    assert f"without D's realness term <= {gate['limit']:.4g} (the 0.99 quantile)" in line
    assert f"{gate['fake_inside']:.1%} of {gate['n_fake']} own-generator fakes" in line and gate["n_fake"] == 800


def test_spec_hash_is_that_of_the_stored_text_so_new_spec_fields_do_not_change_it():
    from ganaudit.core.spec import ModelSpec

    stored = json.dumps({"format_version": 1, "name": "old", "preprocess": {"size": 16, "channels": 1},
                         "heads": ["anomaly"], "outputs": ["anomaly_score"]})  # fmt: skip
    spec = ModelSpec.from_json(stored)
    assert spec.inputs == ["image"]  # a field this file predates, filled with its default
    assert spec.to_json() != stored
    assert spec.spec_hash == ModelSpec.from_json(stored).spec_hash == hashlib.sha256(stored.encode()).hexdigest()[:16]


def test_export_refuses_an_incomplete_run(tmp_path):
    res = run_cli("export", tmp_path, "-o", tmp_path / "x.onnx")
    assert res.exit_code == 2 and "not a ganaudit run directory" in res.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_export_refuses_to_write_when_parity_fails(tiny_run, tmp_path, monkeypatch):
    import ganaudit.training.export as ex

    real = ex.torch_outputs
    monkeypatch.setattr(ex, "torch_outputs", lambda *a, **k: {k_: v + 1e-2 for k_, v in real(*a, **k).items()})
    with pytest.raises(ModelFormatError, match="disagree"):
        ex.export(tiny_run, tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()


def test_int8_export_reports_drift_and_still_loads(tiny_run, tmp_path, mnist_test_images):
    res = run_cli("export", tiny_run, "-o", tmp_path / "q.onnx", "--quantize", "int8", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["quantize"] == "int8" and report["int8_drift"]["anomaly_score_max_rel"] >= 0
    v = Detector.load(tmp_path / "q.onnx").detect(mnist_test_images[0][0])
    assert v.status == "ok" and np.isfinite(v.anomaly_score)


def test_fused_score_sums_robust_z_scores_and_izif_stays_selectable(tiny_run, tiny_model, tmp_path, mnist_test_images):
    images = list(mnist_test_images[0][:50])
    det = Detector.load(tiny_model)
    sc = det.spec.scoring
    plain = components_of(has_rotation=False)  # the default D learns no rotation task
    assert sc["components"] == [c.name for c in plain] and sc["transforms"] == [c.transform for c in plain]
    assert sc["method"] == "fused" and sc["n_val"] > 0 and all(s > 0 for s in sc["scale"])
    for v in det.detect(images):
        c = v.components
        t = np.array([np.log(c[n] + 1e-8) if f == "log" else -c[n] for n, f in zip(sc["components"], sc["transforms"])])
        expected = float(np.sum(np.array(sc["weight"]) * (t - sc["center"]) / sc["scale"]))
        assert v.anomaly_score == pytest.approx(expected, rel=1e-3, abs=1e-3)

    res = run_cli("export", tiny_run, "-o", tmp_path / "izif.onnx", "--score", "izif")
    assert res.exit_code == 0, res.output
    izif = Detector.load(tmp_path / "izif.onnx")
    assert izif.spec.scoring["method"] == "izif"
    assert izif.spec.scoring["patch_bank_size"] == sc["patch_bank_size"] > 0  # the runtime sizes its calls from it
    for v in izif.detect(images):
        assert v.anomaly_score == pytest.approx(v.components["izif_score"], rel=1e-6)
    bad = run_cli("export", tiny_run, "-o", tmp_path / "x.onnx", "--score", "median")
    assert bad.exit_code == 2 and "--score" in bad.stderr


def _unit_features(run, images):
    _, nets, _ = load_networks(run)
    D = nets.D.without_spectral_norm()
    with torch.no_grad():
        return torch.nn.functional.normalize(D(torch.from_numpy(images))[1], dim=1).numpy().astype(np.float64)


def test_knn_distance_is_the_mean_of_the_k_nearest_memory_bank_distances(tiny_run, tiny_model, mnist_test_images):
    bank_images = np.load(Path(tiny_run) / "memory_bank.npy").astype(np.float32)
    det = Detector.load(tiny_model)
    sc = det.spec.scoring
    assert sc["memory_bank_size"] == len(bank_images) and sc["knn_k"] == 5
    assert sc["knn_dims"] == min(len(bank_images), KNN_DIMS)  # a bank this small spans its own subspace
    queries = np.concatenate([bank_images[:3], np.stack([preprocess(im, det.spec.preprocess) for im in mnist_test_images[0][:5]])])
    got = det.run(queries)["knn_distance"]
    bank, q = _unit_features(tiny_run, bank_images), _unit_features(tiny_run, queries)
    d2 = np.sort(np.maximum(2 - 2 * q @ bank.T, 0), axis=1)[:, :5].mean(1)  # exact: the subspace holds the bank
    np.testing.assert_allclose(got, d2, rtol=2e-3, atol=2e-4)
    assert np.all(got[:3] < np.median(got[3:]))  # a bank image is its own nearest neighbour


def test_knn_distance_in_a_principal_subspace_adds_the_distance_from_it(tiny_run, monkeypatch, mnist_test_images):
    import ganaudit.training.scoring as scoring

    monkeypatch.setattr(scoring, "KNN_DIMS", 6)  # fewer directions than the bank spans
    cfg, nets, _ = load_networks(tiny_run)
    bank_images = np.load(Path(tiny_run) / "memory_bank.npy").astype(np.float32)
    model = scoring_model(Path(tiny_run), cfg, nets, head=None)
    queries = np.stack([preprocess(im, cfg.preprocess) for im in mnist_test_images[0][:6]])
    with torch.no_grad():
        got = model.knn_distance(model.D(torch.from_numpy(queries))[1]).numpy()
    bank, q = _unit_features(tiny_run, bank_images), _unit_features(tiny_run, queries)
    mean = bank.mean(0)
    basis = np.linalg.svd(bank - mean, full_matrices=False)[2][:6].T  # signs differ from torch's: distances do not
    pb, pq = (bank - mean) @ basis, (q - mean) @ basis
    pb = pb.astype(np.float16).astype(np.float64)  # the bank is stored as float16
    off = ((q - mean) ** 2).sum(1) - (pq**2).sum(1)
    d2 = np.sort(((pq[:, None] - pb[None]) ** 2).sum(2), axis=1)[:, :5].mean(1) + off
    assert model.bank.shape == (len(bank_images), 6) and model.bank.dtype == torch.float16
    np.testing.assert_allclose(got, d2, rtol=2e-3, atol=2e-4)
    assert np.all(off > 0)


def test_patch_search_is_the_exact_nearest_distance_up_to_its_floor():
    rng = np.random.default_rng(0)
    bank = torch.from_numpy(rng.normal(3.0, 1.0, (300, 32)).astype(np.float32))  # far from 0, as D's features are
    q = torch.cat([bank[:5], torch.from_numpy(rng.normal(3.0, 1.0, (40, 32)).astype(np.float32))])
    exact = torch.cdist(q.double(), bank.double()).min(1).values.pow(2)
    got = nearest_sq_distance(q - bank.mean(0), bank - bank.mean(0)).double()
    np.testing.assert_allclose(got.numpy(), exact.numpy(), atol=1e-4 * float((bank - bank.mean(0)).pow(2).sum(1).mean()))
    assert torch.all(got >= 0)


def test_exported_patch_search_takes_the_bank_in_chunks_and_stays_exact():
    """The exported search splits the bank (a Gemm and a ReduceMin per chunk, a partial last chunk too); the
    least of the chunks' minima must be the nearest distance over the whole bank, in onnxruntime."""
    import io

    import onnxruntime as ort

    rng = np.random.default_rng(1)
    bank = torch.from_numpy(rng.normal(0.0, 1.0, (300, 32)).astype(np.float32))  # 4 chunks of 64, then 44

    class Search(torch.nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return nearest_sq_distance(q, bank)

    buf = io.BytesIO()
    q = torch.from_numpy(rng.normal(0.0, 1.0, (50, 32)).astype(np.float32))
    torch.onnx.export(Search(), (q,), buf, dynamo=False, input_names=["q"], output_names=["d"],
                      dynamic_axes={"q": {0: "n"}, "d": {0: "n"}})  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    assert sum(n.op_type == "Gemm" for n in proto.graph.node) == 5
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    queries = np.concatenate([bank[250:260].numpy(), rng.normal(0.0, 1.0, (70, 32)).astype(np.float32)])
    got = session.run(None, {"q": queries})[0]
    exact = torch.cdist(torch.from_numpy(queries).double(), bank.double()).min(1).values.pow(2).numpy()
    np.testing.assert_allclose(got, exact, atol=1e-4)  # matches in the last chunk are found too (distance 0)


def test_export_patch_bank_sets_the_maps_bank_and_rejects_nonsense(tiny_run, tiny_model, tmp_path, mnist_test_images):
    res = run_cli("export", tiny_run, "-o", tmp_path / "small.onnx", "--patch-bank", "64")
    assert res.exit_code == 0, res.output
    small = Detector.load(tmp_path / "small.onnx")
    assert small.spec.scoring["patch_bank_size"] == 64 < Detector.load(tiny_model).spec.scoring["patch_bank_size"]
    assert small.detect(mnist_test_images[0][0]).anomaly_score is not None
    for value in ("0", "-3", "1000000"):
        bad = run_cli("export", tiny_run, "-o", tmp_path / "x.onnx", "--patch-bank", value)
        assert bad.exit_code == 2 and "--patch-bank" in bad.stderr and not (tmp_path / "x.onnx").exists()


def test_anomaly_map_locates_a_pasted_square_and_patch_distance_is_its_unscaled_peak(tiny_model, mnist_test_images):
    det = Detector.load(tiny_model)
    sc = det.spec.scoring
    assert sc["patch_bank_size"] > 0 and sc["map_scale"] > 0
    digits = [im.copy() for im in mnist_test_images[0][:8]]
    for im in digits[4:]:
        im[1:9, 1:9] = 255  # a bright square in the top-left corner, where digits never have ink
    out = det.run(preprocess_batch(digits, det.spec.preprocess))
    maps = out["anomaly_map"][:, 0]
    np.testing.assert_allclose(out["patch_distance"], maps.reshape(8, -1).max(1) * sc["map_scale"], rtol=1e-4)
    assert out["patch_distance"][4:].min() > out["patch_distance"][:4].max()
    size = det.spec.preprocess.size
    for m in maps[4:]:
        y, x = np.unravel_index(m.argmax(), m.shape)
        assert y < size // 2 and x < size // 2  # the peak is in the square's quarter


def test_export_picks_the_fusion_weights_by_layout_and_layout_can_be_forced(tiny_run, tiny_model, tmp_path, mnist_test_images):
    sc = Detector.load(tiny_model).spec.scoring
    assert sc["layout"] == "aligned" and sc["alignment"] > STATIONARY_BELOW  # digits share a layout
    assert sc["weight"] == [c.weights["aligned"] for c in components_of(has_rotation=False)]

    res = run_cli("export", tiny_run, "--out", tmp_path / "s.onnx", "--layout", "stationary")  # --out as in train and scan
    assert res.exit_code == 0, res.output
    det = Detector.load(tmp_path / "s.onnx")
    st = det.spec.scoring
    assert st["layout"] == "stationary" and st["weight"] == [c.weights["stationary"] for c in components_of(False)]
    for v in det.detect(list(mnist_test_images[0][:10])):  # the patch distance alone, as a robust z-score
        i = st["components"].index("patch_distance")
        z = (np.log(v.components["patch_distance"] + 1e-8) - st["center"][i]) / st["scale"][i]
        assert v.anomaly_score == pytest.approx(z, rel=1e-3, abs=1e-3)

    bad = run_cli("export", tiny_run, "-o", tmp_path / "x.onnx", "--layout", "diagonal")
    assert bad.exit_code == 2 and "--layout" in bad.stderr and not (tmp_path / "x.onnx").exists()
    bad = run_cli("export", tiny_run, "-o", tmp_path / "x.onnx", "--layout", "aligned", "--score", "izif")
    assert bad.exit_code == 2 and "--layout" in bad.stderr and not (tmp_path / "x.onnx").exists()


def test_alignment_separates_centred_shapes_from_texture_crops():
    rng = np.random.default_rng(0)
    surface = cv2.GaussianBlur(rng.uniform(-1, 1, (256, 256)).astype(np.float32), (0, 0), 2)
    crops = np.stack([surface[y : y + 16, x : x + 16] for y, x in rng.integers(0, 240, (300, 2))])
    yy, xx = np.mgrid[:16, :16]
    blobs = np.stack([np.exp(-((yy - 8 + dy) ** 2 + (xx - 8 + dx) ** 2) / 12.0) for dy, dx in rng.normal(0, 1, (300, 2))])
    assert alignment(crops[:, None]) < STATIONARY_BELOW < alignment(blobs[:, None])
    tinted = np.stack([crops * 0.3 - 0.5, crops * 0.3, crops * 0.3 + 0.5], axis=1)  # a colour texture
    assert alignment(tinted) < STATIONARY_BELOW  # colour differences between channels are not layout
    assert alignment(crops[:20, None]) < STATIONARY_BELOW  # nor is the chance spread of a small mean image


def test_k_center_picks_the_farthest_point_each_time():
    points = torch.tensor([[0.0], [1.0], [10.0], [4.0], [9.0]])
    assert k_center(points, 3).tolist() == [0, 2, 3]
    assert k_center(points, 99).tolist() == [0, 2, 3, 1, 4]
    copies = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    assert k_center(copies, 4).tolist() == [0, 1]  # no pick repeats a row already covered


def test_known_anomalies_calibrate_anomaly_probability(tiny_run, tiny_model, tmp_path, mnist_path, mnist_test_images):
    out = tmp_path / "cal.onnx"
    # Known anomalies from the training part of MNIST (index < 8000), never from the test images.
    res = run_cli("export", tiny_run, "-o", out, "--anomalies", f"{mnist_path}?label=7&range=0:2000", "--json")
    assert res.exit_code == 0, res.output
    cal = json.loads(res.stdout)["anomaly_calibration"]
    assert cal["method"] == "platt" and cal["n_positive"] > 100 and cal["a"] > 0

    images, labels = mnist_test_images
    calibrated = Detector.load(out).detect(list(images))
    p = np.array([v.anomaly_probability for v in calibrated])
    assert np.all((p >= 0) & (p <= 1))
    assert p[labels == 0].mean() < 0.5 < p[labels == 7].mean()
    # Same graph and threshold; only the probability is new.
    plain = Detector.load(tiny_model).detect(list(images[:20]))
    assert all(v.anomaly_probability is None for v in plain)
    assert [v.anomaly_flag for v in plain] == [v.anomaly_flag for v in calibrated[:20]]

    bad = run_cli("export", tiny_run, "-o", tmp_path / "x.onnx", "--anomalies", tmp_path / "missing")
    assert bad.exit_code == 2 and "not found" in bad.stderr and not (tmp_path / "x.onnx").exists()


def test_export_refuses_an_unfinished_run_unless_partial(tmp_path):
    from ganaudit.training.datasets import load_dataset
    from ganaudit.training.train import TrainConfig, train

    cfg = TrainConfig(size=16, width=8, z_dim=8, batch_size=16, steps=10, encoder_steps=10)
    run = train(cfg, load_dataset("sklearn:digits?label=1", size=16), tmp_path / "r", progress=False, stop_at=12)
    res = run_cli("export", run, "-o", tmp_path / "m.onnx")
    assert res.exit_code == 2 and "not finished (step 12 of 20)" in res.stderr
    assert not (tmp_path / "m.onnx").exists()
    assert run_cli("export", run, "-o", tmp_path / "m.onnx", "--partial").exit_code == 0
    assert oct((tmp_path / "m.onnx").stat().st_mode & 0o777) == "0o644"


def test_an_image_that_fails_preprocessing_is_an_error_verdict_not_a_failed_batch(detector, mnist_test_images, monkeypatch):
    import ganaudit.runtime.detector as runtime

    real = runtime.preprocess

    def fragile(image, spec):
        if image.shape[1] == 13:
            raise cv2.error("OpenCV(4.x) resize.cpp: error: (-215:Assertion failed) simulated")
        return real(image, spec)

    monkeypatch.setattr(runtime, "preprocess", fragile)
    odd, good = np.zeros((20, 13), np.uint8), mnist_test_images[0][0]
    verdicts = detector.detect([odd, good])
    assert verdicts[0].status == "error" and "cannot preprocess this 13x20 image" in verdicts[0].error
    assert verdicts[1].status == "ok"


def test_a_model_declaring_a_huge_tensor_is_called_corrupt_not_external(tmp_path):
    """onnxruntime advises "Use external data for large initializers" for a 1 TB embedded tensor: that is a
    corrupt (or hostile) file, not one that refers to external data."""
    weight = onnx.TensorProto(name="w", data_type=onnx.TensorProto.UINT8, dims=[2**40])
    weight.raw_data = b"\0" * 8
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [2**40])], [weight])  # fmt: skip
    path = tmp_path / "huge.onnx"
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(ModelFormatError, match="is not a loadable ONNX model .*exceeds") as e:
        Detector.load(path)
    assert "refers to external data" not in str(e.value)


def test_a_model_cannot_read_files_through_external_data(tiny_model, tmp_path, monkeypatch):
    """From bytes, onnxruntime resolved external data against the current folder: a hostile model read a
    secret next to the user into its weights and leaked it through a component output."""
    (tmp_path / "secret.txt").write_bytes(b"KEY=hunter2")
    monkeypatch.chdir(tmp_path)
    proto = onnx.load(str(tiny_model))
    weight = onnx.TensorProto(name="leak_w", data_type=onnx.TensorProto.UINT8, dims=[8])
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "secret.txt"), ("offset", "0"), ("length", "8")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    proto.graph.initializer.append(weight)
    proto.graph.node.append(onnx.helper.make_node("Identity", ["leak_w"], ["leak"]))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("leak", onnx.TensorProto.UINT8, [8]))
    path = tmp_path / "leaky.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelFormatError, match="external data"):
        Detector.load(path)
    res = run_cli("scan", tmp_path / "secret.txt", "--model", path, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "external data" in res.stderr and "Traceback" not in res.output
