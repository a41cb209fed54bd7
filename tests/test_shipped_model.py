"""The runtime end to end with the shipped digits model, without torch or training fixtures.

`.ci/floors` runs this file (with test_imaging.py and test_files.py) on the lowest dependency versions
pyproject.toml declares, so each floor is known to work.
"""

from __future__ import annotations

import base64
import json
import re
import warnings

import cv2
import numpy as np
import pytest

from ganaudit.core.shipped import shipped_models
from ganaudit.runtime.detector import Detector

from .conftest import run_cli

pytestmark = pytest.mark.skipif("digits" not in shipped_models(), reason="the shipped digits model is not installed")


def digit_png(value: int = 255) -> bytes:
    img = np.zeros((28, 28), np.uint8)
    cv2.line(img, (14, 5), (14, 22), value, 3)
    return cv2.imencode(".png", img)[1].tobytes()


def test_detector_scores_a_shipped_model(tmp_path):
    det = Detector.load("digits")
    v = det.detect(bytearray(digit_png()))
    assert v.status == "ok" and np.isfinite(v.anomaly_score)
    assert det.detect([bytearray(digit_png()), b"not an image"])[1].status == "error"


def test_scan_with_the_shipped_model(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"{i}.png").write_bytes(digit_png(80 * (i + 1)))
    res = run_cli("scan", tmp_path / "in", "--out", tmp_path / "out", "--json", "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["counts"]["ok"] == 3


def test_service_routes_with_the_shipped_model():
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from ganaudit.service.app import ServiceSettings, create_app

    app = create_app(Detector.load("digits"), ServiceSettings(warmup=False))
    with TestClient(app) as client:
        detect = client.post("/v1/detect", files=[("files", ("d.png", digit_png(), "image/png"))])
        infer = client.post(
            "/v2/models/digits/infer",
            json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(digit_png()).decode()]}]},
        )  # fmt: skip
        schema = client.get("/openapi.json")
        docs = client.get("/docs")
    assert detect.status_code == 200 and detect.json()["results"][0]["status"] == "ok"
    assert infer.status_code == 200 and infer.json()["outputs"][0]["name"] == "anomaly_score"
    assert schema.status_code == 200 and "/v1/detect" in schema.json()["paths"]
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_docs_pages_use_installed_assets_not_a_cdn():
    pytest.importorskip("fastapi")
    pytest.importorskip("fastapi_offline")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from ganaudit.service.app import ServiceSettings, create_app

    app = create_app(Detector.load("digits"), ServiceSettings(warmup=False, api_key="k"))  # assets stay open
    with TestClient(app) as client:
        pages = {p: client.get(p) for p in ("/docs", "/redoc")}
        assets = [client.get(f"/docs/assets/{f}") for f in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")]
    for page in pages.values():
        scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', page.text)
        assert page.status_code == 200 and scripts and all(src.startswith("/docs/assets/") for src in scripts)
        assert "cdn.jsdelivr" not in page.text
    assert all(a.status_code == 200 and len(a.content) > 10_000 for a in assets)
