"""Every example runs: the demo images under the shipped default model, the moderation pipeline, the service
client against a real `ganaudit serve`, and the commands of examples/train_your_own.md."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_TRAIN_ARGS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
IMAGES = EXAMPLES / "images"
BIN = Path(sys.executable).parent
GROUPS = ("normal", "anomalies", "generated")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _group(name: str) -> str:
    return Path(name).parts[0]


@pytest.fixture(scope="module")
def default_detector():
    from ganaudit import Detector
    from ganaudit.core.shipped import resolve_model

    try:
        path = resolve_model(None)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"no shipped default model: {e}")
    return Detector.load(path)


def test_demo_folder_has_every_group():
    for group in GROUPS:
        files = sorted((IMAGES / group).glob("*.png"))
        assert len(files) >= 5, f"examples/images/{group} should hold at least 5 demo images"
    assert sum(f.stat().st_size for f in IMAGES.rglob("*")) < 500_000, "keep the demo folder small"


def _is_letter(path: str) -> bool:
    return Path(path).name.startswith("letter_")


@pytest.fixture(scope="module")
def demo_scan(tmp_path_factory):
    """The README's first command, in-process: `ganaudit scan examples/images` with no --model."""
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("demo") / "report"
    res = run_cli("scan", IMAGES, "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert f"report in {out}" in res.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == sum(1 for _ in IMAGES.rglob("*.png"))
    by_group: dict[str, list[dict]] = {g: [] for g in GROUPS}
    for row in rows:
        assert row["status"] == "ok", row
        rel = Path(row["path"]).resolve().relative_to(IMAGES.resolve())
        by_group[_group(str(rel))].append(row)
    return out, by_group


def test_default_scan_of_the_demo_flags_anomalies_and_generated_images(default_detector, demo_scan):
    out, by_group = demo_scan
    normal_flagged = [r["path"] for r in by_group["normal"] if r["flagged"]]
    assert not normal_flagged, f"normal digits flagged: {normal_flagged}"
    others = [r for r in by_group["anomalies"] if not _is_letter(r["path"])]
    assert len(others) >= 5
    missed = [r["path"] for r in others if not r["anomaly_flag"]]
    assert not missed, f"textures, photo or noise not flagged as anomalous: {missed}"
    if default_detector.has_generated_head:
        missed = [r["path"] for r in by_group["generated"] if not r["generated_flag"]]
        assert len(missed) <= 1, f"generated digits not flagged as generated: {missed}"  # recall 99.6 %: one thin 0 slips
    html = (out / "report.html").read_text()
    n_flagged = sum(r["flagged"] for rows in by_group.values() for r in rows)
    # every flagged image appears with its thumbnail and its heat map
    assert "Anomaly map" in html and html.count("data:image/png;base64,") >= 2 * n_flagged
    # the domain gate: no out-of-domain image of the demo is called generated
    called = [r["path"] for r in by_group["anomalies"] if r["generated_flag"]]
    assert not called, f"out-of-domain images called generated: {called}"


def test_default_scan_of_the_demo_flags_the_letters(demo_scan):
    _, by_group = demo_scan
    letters = [r for r in by_group["anomalies"] if _is_letter(r["path"])]
    assert len(letters) >= 5
    missed = [Path(r["path"]).name for r in letters if not r["flagged"]]
    assert not missed, f"letters not flagged: {missed}"


def test_moderation_pipeline_never_reads_a_server_file_an_upload_names(default_detector, tmp_path, monkeypatch):
    """An upload whose bytes are the text of a path on the server: it used to be read as that file, so naming
    a harmless demo image got the upload allowed, and naming /etc/passwd put its first bytes in the reasons."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("moderation_pipeline", EXAMPLES / "moderation_pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    normal = next((IMAGES / "normal").glob("*.png"))
    decisions: list = []
    stage = mod.ModerationStage(default_detector, decisions.append, workers=1)
    for i, path in enumerate((normal, secret)):
        stage.submit(mod.Item(str(i), os.fsencode(path)))
    stage.submit(mod.Item("real", normal.read_bytes()))
    stage.close()
    routes = {d.id: d for d in decisions}
    assert routes["real"].route == "allow"  # the image itself is normal
    for i in ("0", "1"):
        assert routes[i].route == "review" and routes[i].reasons[0].startswith("could not be scored"), routes[i]
        assert "root:" not in " ".join(routes[i].reasons)


def test_moderation_pipeline_routes_the_demo(default_detector):
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / "moderation_pipeline.py"), "--json", "--workers", "2"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    decisions = {d["id"]: d for d in map(json.loads, res.stdout.splitlines())}
    assert len(decisions) == sum(1 for _ in IMAGES.rglob("*.png"))
    for item, d in decisions.items():
        assert d["reasons"], d
        group = _group(item)
        if group == "normal":
            assert d["route"] == "allow", d
            assert "within the normal range" in d["reasons"][0]
        elif group == "anomalies":
            if not _is_letter(item):  # letters: see the xfail test above
                assert d["route"] in ("review", "block"), d
                assert any("anomaly score" in r for r in d["reasons"]), d
        elif default_detector.has_generated_head and d["route"] != "allow":
            assert d["route"] in ("review", "block"), d
            assert any("generated probability" in r for r in d["reasons"]), d
    allowed = [i for i, d in decisions.items() if _group(i) == "generated" and d["route"] == "allow"]
    assert len(allowed) <= 1, allowed  # the head's recall is 99.6 %: the demo's thin 0 slips (models/digits.md)
    # Noise is far outside anything a digit model has seen: past the stricter block line, not just review.
    assert decisions["anomalies/noise_uniform_rgb.png"]["route"] == "block"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server():
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "ganaudit"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"ganaudit serve exited: {proc.stderr.read() if proc.stderr else ''}"
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "ganaudit serve did not become ready in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_service_client_calls_detect_and_kserve_infer(server, default_detector):
    images = [
        IMAGES / "normal" / "digit3_mnist8010.png",
        IMAGES / "anomalies" / "texture_brick.png",
        IMAGES / "anomalies" / "noise_gaussian.png",
    ]
    cmd = [sys.executable, str(EXAMPLES / "service_client.py"), "--url", server]
    res = subprocess.run([*cmd, "--json", *map(str, images)], capture_output=True, text=True, env=_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    detect, infer = body["detect"], body["infer"]
    assert detect["model"]["spec_hash"] == default_detector.spec_hash
    assert [r["filename"] for r in detect["results"]] == [p.name for p in images]
    assert [r["flagged"] for r in detect["results"]] == [False, True, True]
    assert all(r["anomaly_map"] for r in detect["results"]), "include_map=true should return heat maps"
    outputs = {o["name"]: o["data"] for o in infer["outputs"]}
    assert infer["model_version"] == default_detector.spec_hash
    assert outputs["anomaly_flag"] == [False, True, True]
    assert outputs["anomaly_score"] == pytest.approx([r["anomaly_score"] for r in detect["results"]], rel=1e-5)
    assert all(r["reasons"] for r in detect["results"])
    if body["tritonclient"] is not None:  # the dev extra installs tritonclient: binary tensors both ways
        assert body["tritonclient"]["anomaly_score"] == pytest.approx(outputs["anomaly_score"], rel=1e-5)
        assert body["tritonclient"]["anomaly_flag"] == outputs["anomaly_flag"]
    # The readable form runs too, on its default demo images.
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "POST /v1/detect" in res.stdout and "/infer" in res.stdout and "FLAGGED" in res.stdout


def _blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", markdown, re.S)


def test_train_your_own_commands_run(tmp_path, mnist_path):
    """Runs every bash block of examples/train_your_own.md in order, training with tiny settings, then its
    Python block; checks what each step should leave behind."""
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    doc = (EXAMPLES / "train_your_own.md").read_text()
    blocks = _blocks(doc, "bash")
    assert len(blocks) >= 5
    tiny = " ".join(shlex.quote(a) for a in TINY_TRAIN_ARGS)
    # Later options win in click, so the tiny settings override the page's long ones.
    prelude = f'ganaudit() {{ if [ "$1" = train ]; then command ganaudit "$@" {tiny}; else command ganaudit "$@"; fi; }}\n'
    for block in blocks:
        res = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", prelude + block],
            cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, f"block failed:\n{block}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert len(list((tmp_path / "my_images").glob("*.png"))) == 400
    assert (tmp_path / "runs" / "bricks-samples.png").is_file()
    from ganaudit import Detector

    det = Detector.load(tmp_path / "bricks.onnx")
    assert det.name == "bricks"
    summary = json.loads((tmp_path / "bricks-report" / "summary.json").read_text())
    assert summary["counts"]["ok"] == 4
    assert (tmp_path / "bricks-report" / "report.html").is_file()
    (python_block,) = _blocks(doc, "python")
    res = subprocess.run([sys.executable, "-c", python_block], cwd=tmp_path, capture_output=True, text=True,
                         env=_env(), timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("to_check/clean_0.png") and lines[0].endswith("(16, 16)")
