"""Issue 13: finite thresholds (6), shipped names everywhere (8), Python API types (9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ganaudit.core.errors import ConfigError, ModelFormatError
from ganaudit.core.shipped import shipped_models
from ganaudit.runtime.detector import Detector

from .conftest import run_cli
from .test_files import posix_only

needs_digits = pytest.mark.skipif("digits" not in shipped_models(), reason="the shipped digits model is not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("few")
    for i in range(3):
        cv2.imwrite(str(root / f"{i}.png"), np.full((28, 28), 60 * i, np.uint8))
    return root


@pytest.mark.parametrize("value", ["-inf", "inf", "nan", "1e400", "-1e400"])
def test_scan_refuses_non_finite_thresholds(folder, tiny_model, tmp_path, value):
    res = run_cli("scan", folder, "--model", tiny_model, "--out", tmp_path / "r", f"--anomaly-threshold={value}")
    assert res.exit_code == 2 and "anomaly_threshold must be a finite number" in res.stderr
    assert not (tmp_path / "r" / "summary.json").exists()


def test_python_api_refuses_non_finite_and_non_number_thresholds(tiny_model):
    det = Detector.load(tiny_model)
    for bad in (float("-inf"), float("nan"), 10**400):  # the last: too large for a float
        with pytest.raises(ConfigError, match="finite"):
            det.detect(np.zeros((28, 28), np.uint8), anomaly_threshold=bad)
        with pytest.raises(ConfigError, match="finite"):
            Detector.load(tiny_model, generated_threshold=bad)
    with pytest.raises(ConfigError, match="must be a number, got str"):
        det.detect(np.zeros((28, 28), np.uint8), anomaly_threshold="3")
    assert det.detect(np.zeros((28, 28), np.uint8), anomaly_threshold=1e30).anomaly_flag is False


@pytest.mark.parametrize("value", [-1, -0.01, 1.5, 2])
def test_generated_thresholds_outside_0_1_are_refused(tiny_model, value):
    """The generated threshold is a probability: -1 flagged every image, 2 none."""
    with pytest.raises(ConfigError, match="generated_threshold is a probability: it must be from 0 to 1"):
        Detector.load(tiny_model).detect(np.zeros((28, 28), np.uint8), generated_threshold=value)
    with pytest.raises(ConfigError, match="from 0 to 1"):
        Detector.load(tiny_model, generated_threshold=value)


@needs_digits
def test_scan_refuses_a_generated_threshold_outside_0_1(folder, tmp_path):
    res = run_cli("scan", folder, "--model", "digits", "--out", tmp_path / "r", "--generated-threshold=-1")
    assert res.exit_code == 2 and "generated_threshold is a probability" in res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "r" / "summary.json").exists()


def test_train_refuses_a_run_folder_inside_its_training_folder(folder):
    """`train DIR --out DIR/run` made the run's sample grids training data, and every --resume then failed."""
    for out in (folder, folder / "run"):
        res = run_cli("train", folder, "--out", out, "--no-progress")
        assert res.exit_code == 2 and "is inside the training folder" in res.stderr, res.output
    assert not (folder / "run").exists() and not (folder / "config.json").exists()


def test_export_and_sample_never_write_over_the_runs_own_files(tiny_run, tmp_path):
    """`export -o RUN/checkpoints/last.pt` said "wrote ..." and the run was gone (the next export: unreadable)."""
    before = {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file()}
    for target in ("checkpoints/last.pt", "config.json", "run.json", "samples/new.png", "audit/x.onnx"):
        for cmd in (["export", tiny_run], ["sample", tiny_run, "-n", "4"]):
            res = run_cli(*cmd, "-o", tiny_run / target)
            assert res.exit_code == 2 and "own files: writing it would destroy the run" in res.stderr, res.output
    assert {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file()} == before
    res = run_cli("sample", tiny_run, "-n", "100000000", "-o", tmp_path / "g.png")
    assert res.exit_code == 2 and "-n must be from 1 to 10,000" in res.stderr
    res = run_cli("sample", tiny_run, "-n", "4", "-o", tmp_path / "g.png")  # beside the run: fine
    assert res.exit_code == 0 and (tmp_path / "g.png").is_file()


@needs_digits
def test_shipped_names_work_for_info_load_and_python_m(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file named "digits" here
    res = run_cli("info", "digits", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["name"]
    assert Detector.load("digits").spec_hash == Detector.load(shipped_models()["digits"]).spec_hash
    out = subprocess.run([sys.executable, "-m", "ganaudit", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("ganaudit ")


def test_unknown_model_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFormatError, match="model file not found: nope.*shipped model names"):
        Detector.load("nope")
    res = run_cli("info", "nope")
    assert res.exit_code == 2 and "shipped model names" in res.stderr


def test_python_api_type_errors_name_what_is_accepted(tiny_model):
    det = Detector.load(tiny_model)
    for bad in (None, 3, {"a.png": b"x"}, {"a.png"}):
        with pytest.raises(TypeError, match="path, encoded bytes or a numpy array"):
            det.detect(bad)
    with pytest.raises(TypeError, match="path, a shipped model's name or the model's bytes"):
        Detector.load(None)  # type: ignore[arg-type]
    # in a list, an item that is not an image (None from a failed download, say) fails alone
    img = np.zeros((28, 28), np.uint8)
    first, bad, last = det.detect([img, None, img])
    assert first.status == last.status == "ok" and first.anomaly_score == pytest.approx(last.anomaly_score, rel=1e-5)
    assert bad.status == "error" and "not an image: a NoneType; pass a path, encoded bytes" in bad.error
    assert det.detect([]) == []
    with pytest.raises(ValueError, match="batch is empty"):
        det.run(np.empty((0, 1, 32, 32), np.float32))


def test_long_values_are_cut_in_messages(tiny_model):
    det = Detector.load(tiny_model)
    v = det.detect("x" * 1_000_000)
    assert v.status == "error" and len(v.error) < 400 and "(1000000 characters)" in v.error
    with pytest.raises(ModelFormatError) as e:
        Detector.load("m" * 100_000)
    assert len(str(e.value)) < 400


FORMULAS = ["=cmd|' -C calc'!A0.png", "=HYPERLINK(x).png", "+1+1.png", "@SUM(1+1).png", "-2+3.png"]


def test_csv_cells_that_start_a_formula_are_neutralised_and_jsonl_stays_raw(tiny_model, tmp_path, monkeypatch):
    import csv

    monkeypatch.chdir(tmp_path)
    for name in FORMULAS:
        cv2.imwrite(name, np.full((28, 28), 50, np.uint8))
    res = run_cli("scan", "--model", tiny_model, "--out", "r", "--no-progress", "--", *FORMULAS)
    assert res.exit_code == 0, res.stderr
    with open("r/results.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["'" + n for n in FORMULAS]
    assert all(not r["anomaly_score"].startswith("'") for r in rows)  # numbers, even negative, untouched
    jsonl = [json.loads(line) for line in open("r/results.jsonl", encoding="utf-8")]
    assert [r["path"] for r in jsonl] == FORMULAS


def test_paths_are_reversible_to_their_bytes_and_never_collide(tiny_model, tmp_path):
    from ganaudit.core.files import path_bytes

    if sys.platform == "win32":
        pytest.skip("POSIX file names")
    root = os.fsencode(tmp_path / "imgs")
    os.mkdir(root)
    names = [b"bad\xffname.png", b"bad\\xffname.png", b"back\\\\slash.png", "caf\u00e9.png".encode()]
    for name in names:
        with open(os.path.join(root, name), "wb") as f:
            f.write(cv2.imencode(".png", np.full((28, 28), 50, np.uint8))[1].tobytes())
    res = run_cli("scan", tmp_path / "imgs", "--model", tiny_model, "--out", tmp_path / "r", "--no-progress")
    assert res.exit_code == 0, res.stderr
    shown = [json.loads(line)["path"] for line in open(tmp_path / "r" / "results.jsonl", encoding="utf-8")]
    assert len(set(shown)) == 4  # the real 0xFF byte and a literal "\xff" differ
    assert sorted(path_bytes(p) for p in shown) == sorted(os.path.join(root, n) for n in names)


@posix_only
def test_a_carriage_return_in_a_name_cannot_split_a_csv_row(tiny_model, tmp_path):
    """Found by trying: with "\n" as the line end, a field holding a bare "\r" went unquoted, and CSV readers
    read one file's row as two, its scores under a name the uploader chose."""
    import csv

    (tmp_path / "imgs").mkdir()
    names = ["upload_666\rsomeone_elses_upload_123.png", "plain.png"]
    for name in names:
        cv2.imwrite(str(tmp_path / "imgs" / name), np.full((28, 28), 50, np.uint8))
    res = run_cli("scan", tmp_path / "imgs", "--model", tiny_model, "--out", tmp_path / "r", "--no-progress")
    assert res.exit_code == 0, res.stderr
    with open(tmp_path / "r/results.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(os.path.basename(r["path"]) for r in rows) == sorted(names)
    assert all(r["status"] == "ok" for r in rows)


@posix_only
def test_links_planted_in_the_output_folder_are_refused_and_their_targets_kept(tiny_model, tmp_path):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs/a.png"), np.full((28, 28), 50, np.uint8))
    for name in ("results.csv", "results.jsonl", "summary.json"):
        out, victim = tmp_path / f"out-{name}", tmp_path / f"victim-{name}"
        out.mkdir()
        victim.write_text("precious\n")
        (out / name).symlink_to(victim)
        for extra in ((), ("--resume",)):
            res = run_cli("scan", tmp_path / "imgs", "--model", tiny_model, "--out", out, "--no-progress", *extra)
            assert res.exit_code == 2 and f"{name} is a link" in res.stderr, res.output
            assert victim.read_text() == "precious\n" and (out / name).is_symlink()


def test_serve_binds_before_it_says_it_serves(tiny_model):
    pytest.importorskip("uvicorn")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli("serve", "--model", tiny_model, "--port", port)
    assert res.exit_code == 2 and f"port {port} on 127.0.0.1 is already in use" in res.stderr
    assert "serving model" not in res.stderr + res.stdout
    res = run_cli("serve", "--model", tiny_model, "--host", "no.such.host.invalid")
    assert res.exit_code == 2 and "--host 'no.such.host.invalid'" in res.stderr and "serving" not in res.stderr


def test_counts_agree_and_every_file_is_scanned_once(tiny_model, tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    png = cv2.imencode(".png", np.full((28, 28), 50, np.uint8))[1].tobytes()
    for name in ("a.png", "..png", ".png", "sub/b.png"):
        (root / name).write_bytes(png)
    (root / "sub" / "bad.png").write_bytes(b"not an image")
    os.symlink(root / "sub", root / "link-to-sub")
    os.link(root / "a.png", root / "hard.png")
    out = tmp_path / "r"
    res = run_cli("scan", root, root / "sub", root / "a.png", root / "a.png", "--model", tiny_model, "--out", out,
                  "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in open(out / "results.jsonl", encoding="utf-8")]
    names = sorted(os.path.relpath(r["path"], root) for r in rows)
    # Walk order is by name: the folder is first reached through link-to-sub, and not walked again as sub.
    assert names == ["..png", ".png", "a.png", "link-to-sub/b.png", "link-to-sub/bad.png"]
    c = json.loads((out / "summary.json").read_text())["counts"]
    assert c["candidates"] == len(rows) == c["ok"] + c["error"] == c["processed"] == 5
    assert (c["ok"], c["error"]) == (4, 1)
    assert c["duplicates"] == 3  # hard.png and a.png given twice; folders already walked are not walked again
    assert "4 scored" in res.stdout and "1 unreadable" in res.stdout and "3 duplicates scanned once" in res.stdout


def _scan_stderr(folder, model, out, *flags: str, tty: bool) -> str:
    import pty

    cmd = [sys.executable, "-m", "ganaudit", *flags, "scan", str(folder), "--model", str(model), "--out", str(out)]
    if not tty:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stderr
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    try:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=slave, timeout=120)
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
def test_progress_bar_only_on_a_terminal_and_q_silences_it(folder, tiny_model, tmp_path):
    assert "scanning" in _scan_stderr(folder, tiny_model, tmp_path / "a", tty=True)
    piped = _scan_stderr(folder, tiny_model, tmp_path / "b", tty=False)
    assert "scanning" not in piped and "\r" not in piped
    assert "scanning" not in _scan_stderr(folder, tiny_model, tmp_path / "c", "-q", tty=True)


def test_error_lines_never_send_control_characters_to_the_terminal(tmp_path):
    """A name holding an escape sequence (here: set the terminal's title) is echoed escaped, not obeyed."""
    res = run_cli("scan", "x\x1b]0;pwned\x07y.png", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "path not found" in res.stderr
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr and "x\\x1b]0;pwned\\x07y.png" in res.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="names with escape characters")
def test_warnings_never_send_control_characters_to_the_terminal(tmp_path):
    """The warning that lists skipped files named a stranger's file raw (only error lines were escaped)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "evil\x1b]0;PWN\x07name.png").write_bytes(b"not an image")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    res = subprocess.run([sys.executable, "-m", "ganaudit", "train", str(data), "--out", str(tmp_path / "run")],
                         capture_output=True, timeout=120, env=env)  # fmt: skip
    err = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 2 and "WARNING: skipped 1 unreadable file(s)" in err, err
    assert "\x1b" not in err and "\x07" not in err and "evil\\x1b]0;PWN\\x07name.png" in err


def _tampered(run, tmp_path, name, change):
    import shutil

    copy = tmp_path / name
    shutil.copytree(run, copy)
    change(copy)
    return copy


def _edit_config(**fields):
    def change(run):
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, **fields}))

    return change


def _small_bank(name):
    def change(run):
        np.save(run / name, np.zeros((8, 1, 8, 8), np.float32))

    return change


def _resave(name, edit):
    def change(run):
        np.save(run / name, edit(np.load(run / name)))

    return change


def _lying_header(name):
    """A header that asks for 10 petabytes of images, over 64 bytes of data: must fail before any allocation."""

    def change(run):
        with open(run / name, "wb") as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (10**13, 1, 16, 16)}
            np.lib.format.write_array_header_1_0(f, header)
            f.write(bytes(64))

    return change


def _npz(name):
    def change(run):
        with open(run / name, "wb") as f:
            np.savez(f, images=np.zeros((2, 1, 16, 16), np.float32))

    return change


TAMPERED = {
    "validation-0-255": (_resave("validation.npy", lambda a: a * 127.5 + 127.5), "not [-1, 1]"),
    "bank-lying-header": (_lying_header("memory_bank.npy"), "not a readable .npy array"),
    "validation-npz": (_npz("validation.npy"), "an .npz archive"),
    "config-list": (lambda run: (run / "config.json").write_text("[]"), "not a JSON object"),
    "width-null": (_edit_config(width=None), "width must be a whole number"),
    "z-dim-huge": (_edit_config(z_dim=10**9), "z-dim must be between"),
    "head-pool-huge": (_edit_config(head_pool=10**7), "head-pool must be between"),
    "width-other": (_edit_config(width=16), "does not fit its config.json"),
    "bank-8px": (_small_bank("memory_bank.npy"), "memory_bank.npy"),
    "validation-8px": (_small_bank("validation.npy"), "validation.npy"),
    "run-json-list": (lambda run: (run / "run.json").write_text("[1]"), "run.json is damaged"),
    "size-null": (_edit_config(size=None), "size"),
    "size-missing": (lambda run: (run / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((run / "config.json").read_text()).items() if k != "size"})), "size"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_run_directory_is_a_clear_error_for_export_and_audit(tiny_run, tmp_path, case):
    """Found by trying: each of these was an internal error (exit 5), a 1 TB allocation or a false audit flag."""
    change, message = TAMPERED[case]
    run = _tampered(tiny_run, tmp_path, case, change)
    for args in (("export", run, "-o", tmp_path / "m.onnx"), ("audit", "gan", run, "-n", "64", "--out", tmp_path / "a")):
        res = run_cli(*args)
        if case == "run-json-list" and args[0] == "audit":
            continue  # the audit reads no provenance
        assert res.exit_code == 2 and message in res.stderr and "internal error" not in res.stderr, (args[0], res.output)


HEAD_CROPS_DAMAGE = {
    "five-rows": (lambda a: a[:5], "the crops of 5 images, not of the"),
    "float": (lambda a: a.astype(np.float32) * 1e30, "not uint8 crops"),
    "three-crops": (lambda a: a[:, :3], "not uint8 crops"),
    "wrong-size": (lambda a: a[:, :, :8, :8], "not uint8 crops"),
}


@pytest.mark.parametrize("case", sorted(HEAD_CROPS_DAMAGE))
def test_damaged_head_crops_are_a_clear_error_for_export(head_run, tmp_path, case):
    """Found by a review: a cut or rescaled validation_native.npy exported without a word, with another
    generated threshold; crops of the wrong shape crashed export (exit 5)."""
    run = _tampered(head_run, tmp_path, case, _resave("validation_native.npy", HEAD_CROPS_DAMAGE[case][0]))
    res = run_cli("export", run, "-o", tmp_path / "m.onnx")
    assert res.exit_code == 2 and HEAD_CROPS_DAMAGE[case][1] in res.stderr, res.output
    assert "validation_native.npy is damaged" in res.stderr and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [("--steps", "0", "steps must be between 1"), ("--lr-g", "-1", "lr-g must be between"),
     ("--seed", "-1", "seed must be between"), ("--kappa", "nan", "kappa must be a finite number"),
     ("--checkpoint-every", "0", "checkpoint-every must be between")],
)  # fmt: skip
def test_train_options_out_of_range_are_refused_before_any_work(tmp_path, option, value, message):
    """Found by trying: the last four ended in internal errors (exit 5); --steps 0 made an untrained 'complete' run."""
    res = run_cli("train", "sklearn:digits", "--out", tmp_path / "run", option, value)
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert not (tmp_path / "run").exists()
