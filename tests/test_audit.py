"""ganaudit audit gan: the metrics against reference implementations, the verdicts on built-to-fail generators, and
the CLI (exit codes, audit.json, self-contained audit.html)."""

from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest

from ganaudit.audit.copying import c_t
from ganaudit.audit.ndb import ndb
from ganaudit.audit.kmeans import assign, kmeans
from ganaudit.audit.prdc import prdc
from ganaudit.audit.stats import holm, mann_whitney_z

from .conftest import run_cli


def test_prdc_matches_the_prdc_package_to_1e_6():
    compute_prdc = pytest.importorskip("prdc").compute_prdc
    rng = np.random.default_rng(1)
    real = rng.normal(size=(900, 32)).astype(np.float32)
    fake = (rng.normal(size=(700, 32)) * 0.9 + 0.2).astype(np.float32)
    for k in (3, 5):
        with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
            want = compute_prdc(real, fake, k)
        got = prdc(real, fake, k, chunk=128)  # several chunks: no full N x M matrix
        for name in ("precision", "recall", "density", "coverage"):
            assert abs(got[name] - want[name]) <= 1e-6, (name, got[name], want[name])


def test_swapping_the_arguments_flips_precision_and_recall_on_a_collapsed_set():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(600, 8))
    collapsed = real[:3].repeat(200, axis=0) + rng.normal(scale=0.01, size=(600, 8))
    right, swapped = prdc(real, collapsed), prdc(collapsed, real)
    assert right["precision"] > 0.9 and right["recall"] < 0.05
    assert swapped["precision"] < 0.05 and swapped["recall"] > 0.9


def test_holm_and_mann_whitney_match_scipy_and_statsmodels_conventions():
    stats = pytest.importorskip("scipy.stats")
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=40), rng.normal(0.5, size=55).round(1)  # ties in y
    u = stats.mannwhitneyu(x, y).statistic  # U of x: pairs with x > y, ties half
    z = (u - 40 * 55 / 2) / np.sqrt(40 * 55 * (40 + 55 + 1) / 12)
    assert mann_whitney_z(x, y) == pytest.approx(z)


def test_ndb_is_zero_for_the_same_distribution_and_counts_dropped_modes():
    rng = np.random.default_rng(0)
    centers_true = rng.normal(scale=10, size=(6, 4))
    ref = centers_true[rng.integers(0, 6, 3000)] + rng.normal(size=(3000, 4))
    same = centers_true[rng.integers(0, 6, 3000)] + rng.normal(size=(3000, 4))
    half = centers_true[rng.integers(0, 3, 3000)] + rng.normal(size=(3000, 4))
    centers = kmeans(ref, 6, seed=0)
    bins = assign(ref, centers)
    assert ndb(bins, same, centers)["ndb"] == 0
    dropped = ndb(bins, half, centers)
    assert dropped["ndb"] == 6 and dropped["missing_mass"] == pytest.approx(0.5, abs=0.05)
    assert dropped["jsd"] > ndb(bins, same, centers)["jsd"]


def test_c_t_handles_cells_without_generated_or_held_out_samples():
    rng = np.random.default_rng(0)
    d_hold, d_gen = rng.uniform(1, 2, 200), rng.uniform(0, 1, 300)  # generated closer than held-out: copying
    hold_cells, gen_cells = rng.integers(0, 3, 200), np.zeros(300, int)  # cells 1, 2 and 3: no generated sample
    r = c_t(d_hold, hold_cells, d_gen, gen_cells, k=4)
    assert r["c_t"] < -3 and r["cells_used"] == 1
    assert r["cells_without_generated"] == 3 and r["cells_without_holdout"] == 1
    assert c_t(d_hold, hold_cells, d_gen, np.full(300, 3), k=4)["c_t"] is None  # no cell usable: None, no crash


# --------------------------------------------------------------------------- CLI on MNIST


def _mnist(mnist_path, lo: int, hi: int) -> str:
    return f"{mnist_path}?range={lo}:{hi}"


def _npy(path, images: np.ndarray) -> str:
    np.save(path, images.astype(np.float32))
    return str(path)


@pytest.fixture(scope="module")
def mnist_arrays(mnist_path):
    from ganaudit.audit.sources import load_images

    return load_images(_mnist(mnist_path, 0, 1200), 16)


def _audit(tmp_path, generated: str, reference: str, holdout: str, *extra: str):
    out = tmp_path / "audit"
    res = run_cli("audit", "gan", generated, "--reference", reference, "--holdout", holdout, "--out", out,
                  "--size", "16", "--bins", "8", "--no-progress", *extra)  # fmt: skip
    report = json.loads((out / "audit.json").read_text()) if (out / "audit.json").exists() else None
    return res, report, out


def test_held_out_real_images_pass_every_rule(tmp_path, mnist_path):
    res, r, out = _audit(tmp_path, _mnist(mnist_path, 600, 1200), _mnist(mnist_path, 0, 600),
                         _mnist(mnist_path, 1200, 1800), "--fail-on", "collapse,memorisation,imbalance,underfit")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert {n: v["tripped"] for n, v in r["verdicts"].items()} == dict.fromkeys(r["verdicts"], False)
    assert r["balance"]["classifier_accuracy"] > 0.6 and len(r["balance"]["classes"]) == 10
    assert "no flags" in res.stdout and str(out / "audit.html") in res.stdout


def test_copies_of_training_images_trip_memorisation_and_exit_1(tmp_path, mnist_path, mnist_arrays):
    copies = mnist_arrays.images[:600] + np.random.default_rng(0).normal(0, 0.02, (600, 1, 16, 16))
    res, r, out = _audit(tmp_path, _npy(tmp_path / "g.npy", copies), _mnist(mnist_path, 0, 600),
                         _mnist(mnist_path, 1200, 1800), "--fail-on", "memorisation")  # fmt: skip
    assert res.exit_code == 1, res.output
    m = r["memorisation"]
    assert r["verdicts"]["memorisation"]["tripped"] and m["copy_share"]["share"] > 0.5 and m["c_t"]["c_t"] < -3
    page = (out / "audit.html").read_text()
    assert "Closest generated / training pairs" in page and "data:image/png;base64," in page
    assert "src=\"http" not in page and "<script src" not in page  # self-contained


def test_a_few_repeated_images_trip_collapse_and_explain_the_class_imbalance(tmp_path, mnist_path, mnist_arrays):
    few = np.repeat(mnist_arrays.images[700:704], 150, axis=0)  # 4 held-out images, never trained on
    res, r, _ = _audit(tmp_path, _npy(tmp_path / "g.npy", few), _mnist(mnist_path, 0, 600),
                       _mnist(mnist_path, 1200, 1800), "--fail-on", "imbalance")  # fmt: skip
    assert r["verdicts"]["collapse"]["tripped"] and r["fidelity"]["recall"] < 0.2
    assert r["verdicts"]["imbalance"]["superseded_by"] == "collapse"
    assert res.exit_code == 1  # an imbalance gate fails on a collapsed generator too


def test_missing_classes_trip_imbalance_and_count_as_zero(tmp_path, mnist_path, mnist_arrays):
    from ganaudit.training.datasets import read_idx

    labels = read_idx(mnist_path.with_name("t10k-labels-idx1-ubyte.gz"))[600:1200]
    keep = np.flatnonzero(labels >= 3)  # classes 0, 1, 2 missing
    res, r, _ = _audit(tmp_path, _npy(tmp_path / "g.npy", mnist_arrays.images[600:1200][keep]),
                       _mnist(mnist_path, 0, 600), _mnist(mnist_path, 1200, 1800))  # fmt: skip
    assert res.exit_code == 0  # no --fail-on: report only
    shares = {c["class"]: c["generated_share"] for c in r["balance"]["classes"]}
    assert set(shares) == {str(i) for i in range(10)} and shares["0"] < 0.05 and shares["1"] < 0.05
    assert r["verdicts"]["imbalance"]["tripped"] and not r["verdicts"]["collapse"]["tripped"]


def test_blurred_images_trip_underfit(tmp_path, mnist_path, mnist_arrays):
    blurry = np.stack([cv2.GaussianBlur(x[0], (0, 0), 1.5)[None] for x in mnist_arrays.images[600:1200]])
    _, r, _ = _audit(tmp_path, _npy(tmp_path / "g.npy", blurry), _mnist(mnist_path, 0, 600), _mnist(mnist_path, 1200, 1800))
    assert r["verdicts"]["underfit"]["tripped"] and r["fidelity"]["precision"] < 0.3
    assert r["detail"]["ratio"] < 0.5 and r["verdicts"]["underfit"]["values"]["detail_ratio"] == r["detail"]["ratio"]


def test_fine_detail_ratio_sees_blur_in_pixels_and_not_noise(tmp_path, mnist_path, mnist_arrays):
    """The fine-detail figure is read in pixels, whatever the feature space: a blur halves it, noise does not."""
    from ganaudit.audit.detail import detail_figures

    real = mnist_arrays.images[600:1200].astype(np.float32)
    blurry = np.stack([cv2.GaussianBlur(x[0], (0, 0), 1.0)[None] for x in real])
    noisy = np.clip(real + np.random.default_rng(0).normal(0, 0.04, real.shape), -1, 1)
    ref = mnist_arrays.images[:600]
    assert 0.9 < detail_figures(real, ref)["ratio"] < 1.1
    assert detail_figures(blurry, ref)["ratio"] < 0.5 <= detail_figures(noisy, ref)["ratio"]
    assert detail_figures(np.zeros((5, 1, 8, 8)), ref)["ratio"] == 0.0  # flat images: no detail, no crash


def test_folder_labels_from_csv_and_unreadable_files_are_left_out(tmp_path, mnist_path):
    from ganaudit.training.datasets import read_idx

    images = read_idx(mnist_path)[:300]
    labels = read_idx(mnist_path.with_name("t10k-labels-idx1-ubyte.gz"))[:300]
    ref = tmp_path / "ref"
    ref.mkdir()
    rows = ["path,label"]
    for i, (img, lab) in enumerate(zip(images, labels)):
        cv2.imwrite(str(ref / f"{i:04d}.png"), img)
        rows.append(f"{i:04d}.png,{'even' if lab % 2 == 0 else 'odd'}")
    (ref / "broken.png").write_bytes(b"not an image")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    gen = tmp_path / "gen"
    gen.mkdir()
    for i, img in enumerate(read_idx(mnist_path)[300:500]):
        cv2.imwrite(str(gen / f"{i}.png"), img)
    out = tmp_path / "out"
    res = run_cli("audit", "gan", gen, "--reference", ref, "--labels", tmp_path / "labels.csv", "--out", out,
                  "--size", "16", "--bins", "5", "--no-progress", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert [c["class"] for c in r["balance"]["classes"]] == ["even", "odd"]
    assert r["unreadable"]["reference"] == 1 and r["counts"]["reference"] == 300
    assert r["verdicts"]["memorisation"]["tripped"] is None  # no held-out images: not judged


def _write_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _npz_file(path):
    with open(path, "wb") as f:
        np.savez(f, images=np.zeros((4, 1, 16, 16), np.float32))


def _huge_header(path):
    """A valid header for 10 petabytes of images over 64 bytes: must fail before any allocation."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**13, 1, 16, 16)})
        f.write(bytes(64))


def _save(array: np.ndarray, allow_pickle: bool = False):
    return lambda path: np.save(path, array, allow_pickle=allow_pickle)


@pytest.mark.parametrize(
    "write, message",
    [
        (_save(np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a readable .npy array"),
        (_write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f4', 'fortran_order': False, 'shape': (9"), "not a readable"),
        (_write_bytes(b"not an array"), "not a readable .npy array"),
        (_save(np.zeros((4, 16, 16), np.float32)), "not float images [N, 1 or 3, 16, 16]"),
        (_save(np.zeros((4, 2, 16, 16), np.float32)), "not float images"),
        (_save(np.zeros((4, 1, 16, 16), np.uint8)), "uint8"),
        (_save(np.zeros((4, 1, 28, 28), np.float32)), "this audit compares images at 16x16"),
        (_save(np.full((4, 1, 16, 16), np.nan, np.float32)), "NaN or infinite"),
        (_save(np.zeros((0, 1, 16, 16), np.float32)), "holds no images"),
        (_save(np.linspace(0, 255, 4 * 256, dtype=np.float32).reshape(4, 1, 16, 16)), "not [-1, 1]"),
        (_npz_file, "an .npz archive"),
        (_huge_header, "not a readable .npy array"),
    ],
    ids=["pickle", "lying-header", "not-npy", "3-d", "2-channels", "uint8", "28px", "nan", "empty", "0-255", "npz",
         "huge-header"],  # fmt: skip
)
def test_a_hostile_npy_image_set_is_a_clear_error(tmp_path, mnist_path, write, message):
    """A .npy set is read without pickles, and checked before any network sees it: one line, exit 2."""
    write(tmp_path / "g.npy")
    res = _audit(tmp_path, str(tmp_path / "g.npy"), _mnist(mnist_path, 0, 300), _mnist(mnist_path, 300, 600))[0]
    assert res.exit_code == 2 and message in res.stderr and str(tmp_path / "g.npy") in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_a_set_scaled_to_0_1_is_named_in_a_note(tmp_path, mnist_path, mnist_arrays):
    """Found by a review: a held-out set saved in [0, 1] gave a false memorisation flag without a word."""
    hold = _npy(tmp_path / "h.npy", (mnist_arrays.images[600:1200] + 1) / 2)
    res = _audit(tmp_path, _mnist(mnist_path, 1200, 1800), _mnist(mnist_path, 0, 600), hold)[0]
    assert "note: the held-out set has no value below 0" in res.stderr, res.output
    assert "note:" not in _audit(tmp_path, _mnist(mnist_path, 1200, 1800), _mnist(mnist_path, 0, 600),
                                 _npy(tmp_path / "h.npy", mnist_arrays.images[600:1200]))[0].stderr  # fmt: skip


def test_bad_input_is_one_line_exit_2(tmp_path, mnist_path):
    res = run_cli("audit", "gan", tmp_path / "nope", "--reference", _mnist(mnist_path, 0, 100), "--no-progress")
    assert res.exit_code == 2 and res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    res = run_cli("audit", "gan", _mnist(mnist_path, 0, 100), "--reference", _mnist(mnist_path, 0, 100), "--fail-on", "bias")
    assert res.exit_code == 2 and "unknown verdict bias" in res.stderr
    res = run_cli("audit", "gan", _mnist(mnist_path, 0, 100), "--no-progress")
    assert res.exit_code == 2 and "--reference is required" in res.stderr
    same = _mnist(mnist_path, 100, 200)  # every reference image is held out too: none is left (was a numpy error)
    res = run_cli("audit", "gan", _mnist(mnist_path, 0, 100), "--reference", same, "--holdout", same, "--no-progress")
    assert res.exit_code == 2 and "every reference image (100) is also in the held-out set" in res.stderr


def test_a_training_run_is_sampled_and_audited_against_its_own_images(tmp_path, tiny_run):
    out = tmp_path / "audit"
    res = run_cli("audit", "gan", tiny_run, "-n", "300", "--out", out, "--bins", "5", "--no-progress", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["counts"]["generated"] == 300 and r["counts"]["holdout"] > 0
    assert "memory_bank.npy" in r["reference"] and "validation" in r["holdout"]
    assert r["memorisation"]["c_t"]["c_t"] is not None


# --------------------------------------------------------------------------- audit detector


def test_detector_audit_per_group_rates_calibration_and_realised_fpr(tmp_path, tiny_model, mnist_test_images):
    from ganaudit.audit.detector import reliability

    images, labels = mnist_test_images
    rows = ["path,anomaly,stroke"]
    for i, (img, lab) in enumerate(zip(images[:160], labels[:160])):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), img)
        rows.append(f"{i:03d}.png,{int(lab != 0)},{'heavy' if img.mean() > 35 else 'light'}")
    (tmp_path / "truth.csv").write_text("\n".join(rows))
    out = tmp_path / "audit"
    res = run_cli("audit", "detector", tmp_path, "--model", tiny_model, "--truth", tmp_path / "truth.csv",
                  "--group", "stroke", "--out", out, "--no-progress", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)["heads"]["anomaly"]
    assert set(r["groups"]) == {"all", "heavy", "light"} and r["groups"]["all"]["n"] == 160
    tpr = [r["groups"][g]["tpr"]["value"] for g in ("heavy", "light")]
    assert r["between_groups"]["tpr"]["difference"] == pytest.approx(max(tpr) - min(tpr))
    lo, hi = r["groups"]["all"]["auroc"]["ci"]
    assert lo <= r["groups"]["all"]["auroc"]["value"] <= hi and r["groups"]["all"]["auroc"]["value"] > 0.8
    assert r["fpr_at_threshold"]["target"] is not None and r["fpr_at_threshold"]["n_normal"] == int((labels[:160] == 0).sum())
    assert "ganaudit detector audit" in (out / "audit.html").read_text()
    # ECE from the bin counts: a perfectly calibrated toy case gives 0, an over-confident one its gap
    y = np.array([0, 1] * 50)
    assert reliability(y, np.full(100, 0.5))["ece"] == pytest.approx(0.0)
    assert reliability(y, np.full(100, 0.9))["ece"] == pytest.approx(0.4)
    assert sum(b["count"] for b in reliability(y, np.linspace(0, 1, 100))["bins"]) == 100


def test_detector_audit_without_matching_truth_is_one_line_exit_2(tmp_path, tiny_model):
    (tmp_path / "truth.csv").write_text("path,anomaly\nnothing.png,1\n")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    res = run_cli("audit", "detector", tmp_path, "--model", tiny_model, "--truth", tmp_path / "truth.csv")
    assert res.exit_code == 2 and "has a row in" in res.stderr


@pytest.mark.parametrize(
    "truth, extra, message",
    [
        (b"path,anomaly,grp\na.png,1,x\nb.png,0\n", (), "line 3 has fewer cells than the header"),
        (b"path,anomaly\na.png,1\na.png,0\n", (), "has an earlier row that disagrees"),
        (b"path,anomaly\n\xe9.png,1\n", (), "is not UTF-8 text"),
        (b"path,anomaly,grp\na.png,1,all\nb.png,0,x\n", ("--group", "grp"), "rename the group called 'all'"),
        (b"path,anomaly\na.png," + b"1" * 200_000 + b"\n", (), "is not a readable CSV file (field larger"),
    ],
    ids=["short-row", "conflicting-rows", "latin-1", "group-named-all", "huge-cell"],
)
def test_a_hostile_truth_csv_is_a_clear_error(tmp_path, tiny_model, truth, extra, message):
    """Found by trying: the first three ended in exit 5; a group named 'all' vanished from the table."""
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.full((28, 28), 60, np.uint8))
    (tmp_path / "truth.csv").write_bytes(truth)
    res = run_cli("audit", "detector", tmp_path, "--model", tiny_model, "--truth", tmp_path / "truth.csv", *extra)
    assert res.exit_code == 2 and message in res.stderr, res.output


def test_a_hostile_labels_csv_is_a_clear_error_naming_it(tmp_path, mnist_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    for i in range(4):
        cv2.imwrite(str(gen / f"{i}.png"), np.full((28, 28), 60 * i, np.uint8))
    for name, content, message in (("latin.csv", b"path,label\n\xe9.png,a\n", "is not UTF-8 text"),
                                   ("huge.csv", b"path,label\n0.png," + b"a" * 200_000 + b"\n", "not a readable CSV")):  # fmt: skip
        (tmp_path / name).write_bytes(content)
        res = run_cli("audit", "gan", gen, "--reference", gen, "--labels", tmp_path / name, "--out", tmp_path / "o",
                      "--size", "16", "--no-progress")  # fmt: skip
        assert res.exit_code == 2 and f"--labels: {tmp_path / name}" in res.stderr and message in res.stderr, res.output
    res = run_cli("audit", "gan", gen, "--reference", gen, "--size", "0", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "size 0 is not supported" in res.stderr  # 0 silently meant the default


def test_a_truth_csv_saved_with_a_byte_order_mark_is_read(tmp_path, tiny_model):
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.full((28, 28), 60, np.uint8))
    (tmp_path / "truth.csv").write_bytes(b"\xef\xbb\xbfpath,anomaly\na.png,1\nb.png,0\n")  # as Excel saves "CSV UTF-8"
    res = run_cli("audit", "detector", tmp_path, "--model", tiny_model, "--truth", tmp_path / "truth.csv",
                  "--out", tmp_path / "o", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"]["with_truth"] == 2


def test_training_ends_with_an_audit_and_export_copies_its_headline(tiny_run, tiny_model):
    from ganaudit.runtime.detector import Detector

    saved = json.loads((tiny_run / "audit" / "audit.json").read_text())
    head = saved["headline"]
    assert head["n_generated"] == 1000 and head["n_holdout"] > 0 and 0 <= head["precision"] <= 1
    assert head["precision"] == saved["fidelity"]["precision"] and "random conv net" in head["features"]
    assert (tiny_run / "audit" / "audit.html").is_file()
    assert Detector.load(tiny_model).spec.provenance["audit"] == head


def test_an_onnx_feature_extractor_and_the_discriminator_view(tmp_path, mnist_path, tiny_run):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # features = 4x4 average-pooled pixels (16 numbers per image), any batch size, 1 x 16 x 16 input
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
         helper.make_node("Flatten", ["p"], ["f"])],
        "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 16, 16])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["n", 16])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "pool.onnx")
    res, r, _ = _audit(tmp_path, _mnist(mnist_path, 600, 900), _mnist(mnist_path, 0, 300), _mnist(mnist_path, 900, 1200),
                       "--features", str(tmp_path / "pool.onnx"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "pool.onnx" in r["features"] and r["fidelity"]["precision"] > 0.5
    res = run_cli("audit", "gan", tiny_run, "-n", "200", "--features", "discriminator", "--bins", "4", "--no-progress",
                  "--out", tmp_path / "d", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "discriminator" in json.loads(res.stdout)["features"]
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    res = run_cli("audit", "gan", _mnist(mnist_path, 0, 100), "--reference", _mnist(mnist_path, 0, 100),
                  "--features", tmp_path / "bad.onnx", "--no-progress")  # fmt: skip
    assert res.exit_code == 2 and "not a usable ONNX model" in res.stderr
    for name, shape, message in (("huge", ["n", 3, 60000, 60000], "takes 60000 px images"),
                                 ("five", ["n", 5, 16, 16], "takes 5 channels")):  # fmt: skip
        g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"])], name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["n", None])])  # fmt: skip
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / f"{name}.onnx")
        res = run_cli("audit", "gan", _mnist(mnist_path, 0, 100), "--reference", _mnist(mnist_path, 0, 100),
                      "--features", tmp_path / f"{name}.onnx", "--no-progress")  # fmt: skip
        assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output, res.output


def test_patch_features_are_fitted_on_the_reference_deterministic_and_see_blur(tmp_path, mnist_path, mnist_arrays):
    ref, hold = _mnist(mnist_path, 0, 600), _mnist(mnist_path, 1200, 1800)
    ideal = _mnist(mnist_path, 600, 1200)
    res, r, _ = _audit(tmp_path, ideal, ref, hold, "--features", "patches", "--fail-on", "collapse,memorisation,underfit")
    assert res.exit_code == 0, res.output
    assert "patch dictionary fitted on the reference" in r["features"]
    assert not any(v["tripped"] for v in r["verdicts"].values())
    assert r["balance"]["classifier"].startswith("logistic regression") and r["balance"]["classifier_accuracy"] > 0.6
    _, again, _ = _audit(tmp_path / "again", ideal, ref, hold, "--features", "patches")
    assert again["fidelity"] == r["fidelity"] and again["balance"]["classifier_accuracy"] == r["balance"]["classifier_accuracy"]
    blurry = np.stack([cv2.GaussianBlur(x[0], (0, 0), 1.5)[None] for x in mnist_arrays.images[600:1200]])
    _, b, _ = _audit(tmp_path / "blur", _npy(tmp_path / "g.npy", blurry), ref, hold, "--features", "patches")
    assert b["verdicts"]["underfit"]["tripped"] and b["fidelity"]["precision"] < 0.3


@pytest.mark.parametrize(("accuracy", "l2", "expected"), [(0.3, 0.2, True), (0.3, 0.02, None), (0.8, 0.02, False), (0.8, 0.2, True)])
def test_a_weak_class_classifier_can_trip_imbalance_but_not_clear_it(accuracy, l2, expected):
    from ganaudit.audit.rules import judge

    share = {"class": "a", "reference_share": 0.5, "generated_share": 0.5, "generated_ci": [0.45, 0.55]}
    result = {
        "fidelity": {"precision": 0.9, "recall": 0.9, "density": 1.0}, "ndb": {"missing_mass": 0.0},
        "balance": {"classifier_accuracy": accuracy, "fairness_discrepancy_reference": l2, "classes": [share]},
    }  # fmt: skip
    verdict = judge(result)["imbalance"]
    assert verdict["tripped"] is expected
    assert ("too weak" in verdict["values"].get("why", "")) == (expected is None)
