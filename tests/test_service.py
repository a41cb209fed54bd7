"""The detection microservice (`ganaudit serve`): routes, limits, errors, batching, metrics, OpenAPI, CLI.

Everything runs against the real tiny detector and real MNIST digits, through the ASGI app in-process
(fastapi's TestClient, or httpx.ASGITransport where requests must overlap), plus one real uvicorn process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402

with warnings.catch_warnings():  # Starlette 1.x warns that its TestClient wants `httpx2`; it works as it is
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from ganaudit.runtime.detector import Detector  # noqa: E402
from ganaudit.service.app import ServiceSettings, create_app  # noqa: E402
from ganaudit.service.batcher import BatcherClosed, MicroBatcher  # noqa: E402

from .conftest import run_cli  # noqa: E402



# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def detector(tiny_model) -> Detector:
    return Detector.load(tiny_model)


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def digits(mnist_test_images) -> dict[str, Any]:
    """Encoded real MNIST digits: zeros (normal for the tiny model) and other digits (anomalies)."""
    images, labels = mnist_test_images
    zeros = [png(im) for im in images[labels == 0][:8]]
    others = [png(im) for im in images[labels != 0][:8]]
    return {"zeros": zeros, "others": others, "all": zeros + others}


class WrappedDetector:
    """A detector that can sleep or block inside score_prepared (to provoke timeouts and backpressure)."""

    def __init__(self, inner: Detector, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score_prepared(self, items, **kwargs):  # type: ignore[no-untyped-def]
        self.calls.append(len(items))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(20), "test gate never opened"
        if self.delay:
            time.sleep(self.delay)
        return self.inner.score_prepared(items, **kwargs)


def wait_ready_sync(client: TestClient) -> None:
    deadline = time.monotonic() + 10
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "service never became ready"
        time.sleep(0.01)


@contextmanager
def served(det: Any, **settings: Any):
    """A TestClient on a fresh app (lifespan run: batcher started, warm-up done; drained on exit)."""
    app = create_app(det, ServiceSettings(**settings))
    with TestClient(app) as client:
        wait_ready_sync(client)
        yield client


@asynccontextmanager
async def served_async(det: Any, **settings: Any):
    """The same for overlapping requests: httpx.AsyncClient over ASGITransport on this event loop."""
    app = create_app(det, ServiceSettings(**settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            deadline = time.monotonic() + 10
            while (await client.get("/v2/health/ready")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            yield app, client


def multipart(blobs: list[bytes], names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    names = names or [f"img{i}.png" for i in range(len(blobs))]
    return [("files", (n, b, "image/png")) for n, b in zip(names, blobs)]


def scrape(client: Any) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def metric(text: str, name: str, /, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels must match exactly, order-free)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return 0.0


# --------------------------------------------------------------------------- /v1/detect


def test_detect_multipart_scores_real_digits_like_the_library(detector, digits):
    blobs = digits["zeros"][:3] + digits["others"][:3]
    names = [f"zero{i}.png" for i in range(3)] + [f"other{i}.png" for i in range(3)]
    with served(detector) as client:
        r = client.post("/v1/detect", files=multipart(blobs, names))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "tiny-zeros", "spec_hash": detector.spec_hash}
    generated = detector.thresholds.generated
    assert body["thresholds"] == {
        "anomaly": pytest.approx(detector.thresholds.anomaly), "generated": None if generated is None else pytest.approx(generated)
    }  # fmt: skip
    results = body["results"]
    assert [res["filename"] for res in results] == names
    expected = detector.detect([bytearray(b) for b in blobs])
    for res, ref in zip(results, expected):
        assert res["status"] == "ok" and res["error"] is None
        assert (res["width"], res["height"]) == (28, 28)
        assert res["anomaly_score"] == pytest.approx(ref.anomaly_score, rel=1e-5)
        assert res["anomaly_flag"] == (res["anomaly_score"] > detector.thresholds.anomaly)
        assert 0 <= res["anomaly_percentile"] <= 100
        assert set(res["components"]) == set(ref.components)
        if detector.has_generated_head:
            assert res["generated_score"] == pytest.approx(ref.generated_score, rel=1e-5, abs=1e-9)
            assert res["generated_flag"] == (res["generated_score"] > generated)
            assert res["flagged"] == (res["anomaly_flag"] or res["generated_flag"])
        else:  # the fields are present and null
            assert res["generated_score"] is None and res["generated_flag"] is None
            assert res["flagged"] == res["anomaly_flag"]
        assert res["anomaly_map"] is None
    # The model was trained on zeros: other digits score higher on average.
    zero_mean = np.mean([res["anomaly_score"] for res in results[:3]])
    other_mean = np.mean([res["anomaly_score"] for res in results[3:]])
    assert other_mean > zero_mean


def test_undecodable_files_become_error_results_without_failing_the_batch(detector, digits):
    good = digits["zeros"][0]
    truncated = good[: len(good) // 2]
    blobs = [good, b"this is not an image", truncated, b"", digits["others"][0]]
    with served(detector) as client:
        r = client.post("/v1/detect", files=multipart(blobs))
        text = scrape(client)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [res["status"] for res in results] == ["ok", "error", "error", "error", "ok"]
    assert "not a recognised image" in results[1]["error"]
    assert "truncated PNG" in results[2]["error"]
    assert "empty" in results[3]["error"]
    for res in results[1:4]:
        assert res["anomaly_score"] is None and res["anomaly_flag"] is None and res["flagged"] is False
    assert [res["filename"] for res in results] == [f"img{i}.png" for i in range(5)]
    assert metric(text, "ganaudit_image_errors_total") == 3


def test_images_over_the_pixel_limit_are_per_image_errors(tiny_model, digits):
    small_limit = Detector.load(tiny_model, max_pixels=1000)  # 28x28 = 784 fits, 64x64 does not
    big = png(np.full((64, 64), 128, np.uint8))
    with served(small_limit) as client:
        r = client.post("/v1/detect", files=multipart([digits["zeros"][0], big]))
    assert r.status_code == 200
    ok, over = r.json()["results"]
    assert ok["status"] == "ok"
    assert over["status"] == "error" and "64x64" in over["error"] and "limit" in over["error"]


def test_raw_image_body_gives_one_result_and_422_when_undecodable(detector, digits):
    with served(detector) as client:
        r = client.post(
            "/v1/detect", content=digits["others"][1],
            headers={"content-type": "image/png", "content-disposition": 'inline; filename="seven.png"'},
        )  # fmt: skip
        bad = client.post("/v1/detect", content=b"\x89PNG\r\n\x1a\n garbage", headers={"content-type": "image/png"})
    assert r.status_code == 200
    (res,) = r.json()["results"]
    assert res["filename"] == "seven.png" and res["status"] == "ok"
    assert res["anomaly_score"] == pytest.approx(detector.detect(bytearray(digits["others"][1])).anomaly_score, rel=1e-5)
    assert bad.status_code == 422
    assert bad.json()["error"] == "undecodable_image" and "PNG" in bad.json()["detail"]


def test_bytes_naming_a_server_file_are_never_read_as_a_path(detector, tmp_path, digits):
    secret = tmp_path / "secret.png"
    secret.write_bytes(digits["zeros"][0])
    with served(detector) as client:
        r = client.post("/v1/detect", content=str(secret).encode(), headers={"content-type": "image/png"})
    assert r.status_code == 422  # the upload's bytes are the image, never a file name on the server


def test_unsupported_content_types_get_415(detector):
    with served(detector) as client:
        for headers in ({"content-type": "text/plain"}, {"content-type": "application/json"}, {}):
            r = client.post("/v1/detect", content=b"hello", headers=headers)
            assert r.status_code == 415, headers
            assert r.json()["error"] == "unsupported_media_type"
        r = client.post("/v2/models/tiny-zeros/infer", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"].startswith("unsupported_media_type")


def test_multipart_without_files_part_is_422(detector):
    with served(detector) as client:
        r = client.post("/v1/detect", data={"other": "x"}, files=[("notfiles", ("a.png", b"x", "image/png"))])
    assert r.status_code == 422 and r.json()["error"] == "invalid_request" and "files" in r.json()["detail"]


def test_a_files_part_without_a_file_name_gets_an_error_result_that_says_so(detector, digits):
    """Found by trying: a part with RFC 7578's filename* (or none) is a text field to the form parser; its
    bytes were re-encoded as UTF-8 and failed decoding with a misleading message."""
    png = digits["all"][0]
    body = (b'--BB\r\nContent-Disposition: form-data; name="files"; filename*=UTF-8\'\'%ff.png\r\n\r\n' + png
            + b'\r\n--BB\r\nContent-Disposition: form-data; name="files"; filename="ok.png"\r\n\r\n' + png
            + b"\r\n--BB--\r\n")  # fmt: skip
    with served(detector) as client:
        r = client.post("/v1/detect", content=body, headers={"content-type": "multipart/form-data; boundary=BB"})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["status"] == "error" and "text field, not a file" in first["error"]
    assert second["status"] == "ok" and second["filename"] == "ok.png"


def test_threshold_query_parameters_override_the_model(detector, digits):
    blobs = digits["all"][:6]
    with served(detector) as client:
        low = client.post("/v1/detect", params={"anomaly_threshold": -1}, files=multipart(blobs)).json()
        gen = {"generated_threshold": 1.0} if detector.has_generated_head else {}  # a probability is never above 1
        high = client.post("/v1/detect", params={"anomaly_threshold": 1e9, **gen}, files=multipart(blobs)).json()
        bad = client.post("/v1/detect", params={"anomaly_threshold": "abc"}, files=multipart(blobs))
        nan = client.post("/v1/detect", params={"anomaly_threshold": "nan"}, files=multipart(blobs))
    assert low["thresholds"]["anomaly"] == -1 and all(res["anomaly_flag"] for res in low["results"])
    assert high["thresholds"]["anomaly"] == 1e9 and not any(res["flagged"] for res in high["results"])
    assert high["thresholds"]["generated"] == (1.0 if detector.has_generated_head else None)
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request" and "anomaly_threshold" in bad.json()["detail"]
    assert nan.status_code == 422


def test_include_map_returns_a_png_heat_map_at_model_resolution(detector, digits):
    with served(detector) as client:
        r = client.post("/v1/detect", params={"include_map": "true"}, files=multipart(digits["others"][:2]))
    for res in r.json()["results"]:
        heat = cv2.imdecode(np.frombuffer(base64.b64decode(res["anomaly_map"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert heat.shape == (16, 16, 3) and heat.dtype == np.uint8
        assert heat.std() > 0  # not a flat image


# --------------------------------------------------------------------------- limits: 413, 401, 504, 503


def test_413_from_content_length_before_the_app_reads_anything(detector):
    with served(detector, max_upload_mb=0.01) as client:  # 10 KiB
        r = client.post("/v1/detect", content=b"\0" * 20_000, headers={"content-type": "image/png"})
        text = scrape(client)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large" and "--max-upload-mb" in r.json()["detail"]
    assert metric(text, "ganaudit_http_requests_total", route="/v1/detect", method="POST", status="413") == 1
    assert metric(text, "ganaudit_image_errors_total") == 0  # nothing was decoded


def test_413_is_enforced_while_a_chunked_body_streams_in(detector, digits):
    """No Content-Length (chunked): the limit trips on the chunk that crosses it; the rest is never read."""
    chunk = 1024
    total_chunks = 2000  # 2 MB offered against a 10 KiB limit
    pulled = {"multipart": 0, "raw": 0}

    def body(kind: str):
        async def gen():
            boundary = b"--b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
            if kind == "multipart":
                yield boundary
            for _ in range(total_chunks):
                pulled[kind] += 1
                yield b"\0" * chunk

        return gen()

    async def main() -> list[httpx.Response]:
        async with served_async(detector, max_upload_mb=0.01) as (_, client):
            r1 = await client.post(
                "/v1/detect", content=body("multipart"), headers={"content-type": "multipart/form-data; boundary=b0undary"}
            )
            r2 = await client.post("/v1/detect", content=body("raw"), headers={"content-type": "image/png"})
            ok = await client.post("/v1/detect", files=multipart(digits["zeros"][:1]))  # small bodies still pass
            return [r1, r2, ok]

    r1, r2, ok = asyncio.run(main())
    for r, kind in ((r1, "multipart"), (r2, "raw")):
        assert r.status_code == 413, (kind, r.text)
        assert r.json()["error"] == "payload_too_large"
        # 10 KiB limit / 1 KiB chunks: the server stopped pulling right after the limit.
        assert pulled[kind] <= 12, (kind, pulled[kind])
    assert r1.request.headers.get("transfer-encoding") == "chunked"
    assert ok.status_code == 200


def test_api_key_required_when_configured_and_compared_for_both_headers(detector, digits):
    key = "s3cret-key"
    files = multipart(digits["zeros"][:1])
    with served(detector, api_key=key) as client:
        missing = client.post("/v1/detect", files=files)
        wrong = client.post("/v1/detect", files=files, headers={"Authorization": "Bearer nope"})
        wrong_x = client.post("/v1/detect", files=files, headers={"X-API-Key": key + "x"})
        bearer = client.post("/v1/detect", files=files, headers={"Authorization": f"Bearer {key}"})
        xkey = client.post("/v1/detect", files=files, headers={"X-API-Key": key})
        metrics_closed = client.get("/metrics")
        metrics_open = client.get("/metrics", headers={"X-API-Key": key})
        infer_closed = client.post("/v2/models/tiny-zeros/infer", json={"inputs": []})
        meta_closed = client.get("/v2/models/tiny-zeros")
        # Per-model readiness would confirm or reveal the served model's name: closed too (issue 13).
        ready_closed = [client.get(f"/v2/models/{n}/ready") for n in ("tiny-zeros", "zzz")]
        # Health, readiness, server metadata and the API docs stay open for probes and browsers.
        open_paths = ["/v2/health/live", "/v2/health/ready", "/v2", "/openapi.json", "/docs"]
        opened = {p: client.get(p).status_code for p in open_paths}
        heads = {p: client.head(p) for p in open_paths}
        meta_head_closed = client.head("/v2/models/tiny-zeros")
        meta_head = client.head("/v2/models/tiny-zeros", headers={"X-API-Key": key})
        detect_head = client.head("/v1/detect", headers={"X-API-Key": key})
        schema = client.get("/openapi.json").json()
    # HEAD answers every GET route as GET would, without the body, behind the same key (it was a 405).
    assert {p: r.status_code for p, r in heads.items()} == opened
    assert all(r.content == b"" and int(r.headers["content-length"]) > 0 for r in heads.values())
    assert meta_head.status_code == 200 and meta_head.content == b""
    assert meta_head_closed.status_code == 401 and meta_head_closed.content == b""
    assert detect_head.status_code == 405  # POST only
    assert detect_head.headers["allow"] == "POST"
    for r in (missing, wrong, wrong_x, metrics_closed, infer_closed, meta_closed, *ready_closed):
        assert r.status_code == 401 and "tiny-zeros" not in r.text
        assert r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert bearer.status_code == 200 and xkey.status_code == 200
    assert metrics_open.status_code == 200
    assert opened == {p: 200 for p in open_paths}
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert schema["paths"]["/v1/detect"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "security" not in schema["paths"]["/v2/health/ready"]["get"]


def test_head_answers_carry_no_body_from_any_layer(detector):
    """At the ASGI level, not only after uvicorn: HEAD gets no body bytes, also from the 401 and 413 that the
    limits answer before any route (they used to carry their JSON body)."""
    app = create_app(detector, ServiceSettings(api_key="k" * 32, max_upload_mb=0.001))

    async def head(path: str, headers: list[tuple[bytes, bytes]], pathsend: bool = False) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "HEAD",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 1), "server": ("service", 80),
                 "extensions": {"http.response.pathsend": {}} if pathsend else {}}  # fmt: skip
        await app(scope, receive, send)
        return sent

    async def probes() -> dict[str, list[dict[str, Any]]]:
        return {
            "unauthorised": await head("/v2/models/tiny-zeros", []),
            "too large": await head("/v2/health/live", [(b"content-length", b"5000")]),
            "open": await head("/v2/health/live", []),
            # a server that sends files by path (ASGI pathsend): the docs' script would go out whole
            "file": await head("/docs/assets/swagger-ui-bundle.js", [], pathsend=True),
        }

    for name, sent in asyncio.run(probes()).items():
        start = next(m for m in sent if m["type"] == "http.response.start")
        headers = dict(start["headers"])
        assert start["status"] == {"unauthorised": 401, "too large": 413, "open": 200, "file": 200}[name], name
        assert not any(m["type"] == "http.response.pathsend" for m in sent), name
        assert int(headers[b"content-length"]) > 0, name  # the GET's length, as RFC 9110 allows
        assert b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body") == b"", name


def test_head_on_a_docs_asset_does_not_read_the_file(detector, monkeypatch):
    """HEAD on a static file answers from its size: the file is never opened (a HEAD turned into GET read the
    whole 1.4 MB script, chunk by chunk, for a body that was then dropped)."""
    import starlette.responses

    opened: list[str] = []
    real_open = starlette.responses.anyio.open_file

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(starlette.responses.anyio, "open_file", counting_open)
    with served(detector) as client:
        head = client.head("/docs/assets/swagger-ui-bundle.js")
        assert opened == []
        get = client.get("/docs/assets/swagger-ui-bundle.js")
    assert opened and opened[0].endswith("swagger-ui-bundle.js")  # the GET reads it: the probe sees reads
    assert head.status_code == get.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))


def test_no_api_key_configured_means_no_auth(detector, digits):
    with served(detector) as client:
        assert client.post("/v1/detect", files=multipart(digits["zeros"][:1])).status_code == 200
        assert client.get("/metrics").status_code == 200
        assert "securitySchemes" not in client.get("/openapi.json").json()["components"]


def test_401_comes_before_the_body_is_read(detector):
    pulled = {"n": 0}

    async def gen():
        for _ in range(100):
            pulled["n"] += 1
            yield b"\0" * 1024

    async def main() -> httpx.Response:
        async with served_async(detector, api_key="k") as (_, client):
            return await client.post("/v1/detect", content=gen(), headers={"content-type": "image/png"})

    r = asyncio.run(main())
    assert r.status_code == 401 and pulled["n"] == 0


def test_slow_requests_get_504_and_the_service_recovers(detector, digits):
    slow = WrappedDetector(detector, delay=0.6)
    with served(slow, timeout_s=0.15, warmup=False) as client:
        t0 = time.monotonic()
        r = client.post("/v1/detect", files=multipart(digits["zeros"][:1]))
        elapsed = time.monotonic() - t0
        assert r.status_code == 504
        assert r.json() == {"error": "timeout", "detail": "the request took longer than 0.15 s (--timeout-s) and was cancelled"}
        assert elapsed < 0.5  # answered at the deadline, not after the slow model call
        slow.delay = 0
        time.sleep(0.6)  # let the abandoned model call finish
        assert client.post("/v1/detect", files=multipart(digits["zeros"][:1])).status_code == 200
        text = scrape(client)
    assert metric(text, "ganaudit_http_requests_total", route="/v1/detect", method="POST", status="504") == 1


def test_full_queue_gets_503_with_retry_after(detector, digits):
    blocked = WrappedDetector(detector)

    async def main() -> tuple[list[httpx.Response], str]:
        async with served_async(blocked, max_queue=2, max_batch_size=1, max_wait_ms=0) as (app, client):
            batcher = app.state.service.batcher
            blocked.gate = threading.Event()
            blocked.entered.clear()
            files = multipart(digits["zeros"][:1])
            first = asyncio.create_task(client.post("/v1/detect", files=files))  # taken into the blocked batch
            while not blocked.entered.is_set():
                await asyncio.sleep(0.005)
            queued = [asyncio.create_task(client.post("/v1/detect", files=files)) for _ in range(2)]  # fill the queue
            while batcher.pending < 2:
                await asyncio.sleep(0.005)
            refused = await client.post("/v1/detect", files=files)
            too_many = await client.post("/v1/detect", files=multipart(digits["zeros"][:3]))
            blocked.gate.set()
            done = [await first] + [await t for t in queued]
            return [refused, too_many, *done], (await client.get("/metrics")).text

    (refused, too_many, *done), text = asyncio.run(main())
    assert refused.status_code == 503
    assert refused.json()["error"] == "overloaded" and "queue is full" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert too_many.status_code == 413 and too_many.json()["error"] == "too_many_images"
    assert [r.status_code for r in done] == [200, 200, 200]
    assert metric(text, "ganaudit_http_requests_total", route="/v1/detect", method="POST", status="503") == 1


# --------------------------------------------------------------------------- batching, readiness, shutdown


def test_concurrent_requests_are_micro_batched(detector, digits):
    counting = WrappedDetector(detector)
    blobs = digits["all"]

    async def main() -> tuple[list[httpx.Response], str]:
        async with served_async(counting, max_batch_size=16, max_wait_ms=50, warmup=False) as (_, client):
            rs = await asyncio.gather(*(client.post("/v1/detect", files=multipart([b])) for b in blobs))
            return list(rs), (await client.get("/metrics")).text

    responses, text = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    expected = detector.detect([bytearray(b) for b in blobs])
    got = [r.json()["results"][0]["anomaly_score"] for r in responses]
    assert got == pytest.approx([v.anomaly_score for v in expected], rel=1e-5)  # each answer is its own image's
    assert max(counting.calls) > 1 and len(counting.calls) < len(blobs)
    assert metric(text, "ganaudit_batch_size_count") == len(counting.calls)
    assert metric(text, "ganaudit_batch_size_bucket", le="1") < metric(text, "ganaudit_batch_size_count")


def test_ready_only_after_the_warm_up_batch(detector, digits):
    gated = WrappedDetector(detector)
    gated.gate = threading.Event()
    app = create_app(gated, ServiceSettings())
    with TestClient(app) as client:
        assert gated.entered.wait(5)  # warm-up is running and blocked
        assert client.get("/v2/health/live").json() == {"live": True}
        r = client.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        assert client.head("/v2/health/ready").status_code == 503  # probes that send HEAD (was a 405)
        assert client.post("/v2/health/live").headers["allow"] == "GET, HEAD"  # what a 405 says is allowed
        assert client.head("/v2/health/live").status_code == 200
        assert client.get("/v2/models/tiny-zeros/ready").json() == {"name": "tiny-zeros", "ready": False}
        assert "ganaudit_ready 0" in scrape(client)
        gated.gate.set()
        wait_ready_sync(client)
        assert client.get("/v2/models/tiny-zeros/ready").json() == {"name": "tiny-zeros", "ready": True}
        assert "ganaudit_ready 1" in scrape(client)
        assert gated.calls == [1, 32]  # warm-up: batch 1, then the max batch size


def test_batcher_drains_on_close_and_fails_what_cannot_finish(detector, digits):
    prepared = [detector.prepare(bytearray(b)) for b in digits["all"][:4]]

    async def drained() -> list[Any]:
        b = MicroBatcher(WrappedDetector(detector, delay=0.05), max_batch_size=1, max_wait_s=0)
        await b.start()
        jobs = [asyncio.create_task(b.submit([p], detector.thresholds)) for p in prepared]
        await asyncio.sleep(0)
        await b.close(drain_timeout_s=5)
        assert not b.running
        with pytest.raises(BatcherClosed):
            await b.submit(prepared[:1], detector.thresholds)
        return await asyncio.gather(*jobs)

    results = asyncio.run(drained())
    assert [len(v) for v, _ in results] == [1, 1, 1, 1]  # every queued job finished before the worker stopped

    async def cancelled() -> list[Any]:
        blocked = WrappedDetector(detector)
        blocked.gate = threading.Event()
        b = MicroBatcher(blocked, max_batch_size=1, max_wait_s=0)
        await b.start()
        jobs = [asyncio.create_task(b.submit([p], detector.thresholds)) for p in prepared]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await b.close(drain_timeout_s=0.1)
        assert time.monotonic() - t0 < 2
        blocked.gate.set()
        return await asyncio.gather(*jobs, return_exceptions=True)

    outcomes = asyncio.run(cancelled())
    assert all(isinstance(o, BatcherClosed) for o in outcomes)


def test_requests_during_shutdown_get_503(detector, digits):
    async def main() -> httpx.Response:
        app = create_app(detector, ServiceSettings(warmup=False))
        async with app.router.lifespan_context(app):
            pass  # started and shut down
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            return await client.post("/v1/detect", files=multipart(digits["zeros"][:1]))

    r = asyncio.run(main())
    assert r.status_code == 503 and r.json()["error"] in ("shutting_down", "not_ready") and "retry-after" in r.headers


# --------------------------------------------------------------------------- Open Inference Protocol


def test_kserve_v2_routes_and_infer_round_trip(detector, digits):
    blobs = digits["zeros"][:2] + digits["others"][:2]
    b64 = [base64.b64encode(b).decode() for b in blobs]
    with served(detector) as client:
        assert client.get("/v2").json() == {"name": "ganaudit", "version": __import__("ganaudit").__version__, "extensions": ["binary_tensor_data"]}
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        meta = client.get("/v2/models/tiny-zeros").json()
        assert meta["name"] == "tiny-zeros" and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        heads = ["anomaly_score", "anomaly_flag"] + (["generated_score", "generated_flag"] if detector.has_generated_head else [])
        heads += (["in_domain"] if detector.gate_active else []) + ["reasons"]
        assert [o["name"] for o in meta["outputs"]] == heads
        assert client.get("/v2/models/tiny-zeros/ready").json() == {"name": "tiny-zeros", "ready": True}
        request = {"id": "req-42", "inputs": [{"name": "image", "shape": [4], "datatype": "BYTES", "data": b64}]}
        r = client.post("/v2/models/tiny-zeros/infer", json=request)
        v1 = client.post("/v1/detect", files=multipart(blobs)).json()["results"]
        nested = client.post(
            "/v2/models/tiny-zeros/infer",
            json={"inputs": [{"name": "x", "shape": [4, 1], "datatype": "BYTES", "data": [[s] for s in b64]}],
                  "outputs": [{"name": "anomaly_flag"}], "parameters": {"anomaly_threshold": -1.0}},
        )  # fmt: skip
        for path in ("/v2/models/nope", "/v2/models/nope/ready"):
            assert client.get(path).status_code == 404 and client.get(path).json()["error"].startswith("model_not_found: ")
        missing = client.post("/v2/models/nope/infer", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-42" and body["model_name"] == "tiny-zeros"
    outs = {o["name"]: o for o in body["outputs"]}
    assert list(outs) == heads
    assert outs["anomaly_score"]["datatype"] == "FP32" and outs["anomaly_score"]["shape"] == [4]
    assert outs["anomaly_flag"]["datatype"] == "BOOL"
    assert outs["anomaly_score"]["data"] == pytest.approx([res["anomaly_score"] for res in v1], rel=1e-6)
    assert outs["anomaly_flag"]["data"] == [res["anomaly_flag"] for res in v1]
    assert outs["reasons"]["datatype"] == "BYTES" and [json.loads(x) for x in outs["reasons"]["data"]] == [
        res["reasons"] for res in v1
    ]
    if detector.has_generated_head:
        assert outs["generated_score"]["datatype"] == "FP32" and outs["generated_flag"]["datatype"] == "BOOL"
        assert outs["generated_score"]["data"] == pytest.approx([res["generated_score"] for res in v1], rel=1e-6)
        assert outs["generated_flag"]["data"] == [res["generated_flag"] for res in v1]
    assert nested.status_code == 200
    assert [o["name"] for o in nested.json()["outputs"]] == ["anomaly_flag"]
    assert nested.json()["outputs"][0]["data"] == [True] * 4 and "id" not in nested.json()
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "request_body, fragment",
    [
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "BYTES"),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]}, "shape"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, "base64"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}, "element 0"),
        ({"inputs": []}, "exactly one input"),
        ({"nothing": 1}, "inputs"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], "outputs": [{"name": "zzz"}]}, "zzz"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], "parameters": {"anomaly_threshold": "hi"}}, "anomaly_threshold"),
        # an integer too large for a float: was a 500 (OverflowError in math.isfinite)
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], "parameters": {"anomaly_threshold": 10**400}}, "anomaly_threshold"),
    ],
)  # fmt: skip
def test_kserve_infer_rejects_malformed_requests_with_400(detector, request_body, fragment):
    with served(detector, warmup=False) as client:
        r = client.post("/v2/models/tiny-zeros/infer", json=request_body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == f"invalid_request: {r.json()['detail']}" and fragment in r.json()["detail"]


def test_kserve_infer_bad_json_is_400(detector):
    with served(detector, warmup=False) as client:
        r = client.post("/v2/models/tiny-zeros/infer", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("invalid_request: ")


def test_generated_head_outputs_appear_when_the_model_has_one(detector, digits):
    """A stand-in for the coming generated-image head: the service passes its fields through."""

    class WithGeneratedHead(WrappedDetector):
        has_generated_head = True

        def score_prepared(self, items, **kwargs):  # type: ignore[no-untyped-def]
            verdicts = self.inner.score_prepared(items, **kwargs)
            for v in verdicts:
                v.generated_score, v.generated_flag = 0.9, True
                v.flagged = True
            return verdicts

    with served(WithGeneratedHead(detector), warmup=False) as client:
        meta = client.get("/v2/models/tiny-zeros").json()
        b64 = base64.b64encode(digits["zeros"][0]).decode()
        r = client.post("/v2/models/tiny-zeros/infer", json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]})
        v1 = client.post("/v1/detect", files=multipart(digits["zeros"][:1])).json()["results"][0]
        text = scrape(client)
    assert [o["name"] for o in meta["outputs"]] == ["anomaly_score", "anomaly_flag", "generated_score", "generated_flag", "reasons"]
    outs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert outs["generated_score"] == [0.9] and outs["generated_flag"] == [True]
    assert v1["generated_score"] == 0.9 and v1["generated_flag"] is True
    assert metric(text, "ganaudit_images_scored_total", anomaly_flag="false", generated_flag="true") == 2


def test_model_without_a_generated_head_has_null_generated_fields(no_head_model, digits):
    det = Detector.load(no_head_model)
    name = det.name
    b64 = base64.b64encode(digits["others"][0]).decode()
    with served(det) as client:
        meta = client.get(f"/v2/models/{name}").json()
        v1 = client.post("/v1/detect", files=multipart(digits["all"][:3])).json()
        oip = client.post(f"/v2/models/{name}/infer", json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]})
        wrong = client.post(f"/v2/models/{name}/infer", json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}], "outputs": [{"name": "generated_score"}]})  # fmt: skip
        gen_v1 = client.post("/v1/detect", params={"generated_threshold": 0.5}, files=multipart(digits["all"][:1]))
        gen_oip = client.post(f"/v2/models/{name}/infer", json={"parameters": {"generated_threshold": 0.5}, "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]})  # fmt: skip
        text = scrape(client)
    assert [o["name"] for o in meta["outputs"]] == ["anomaly_score", "anomaly_flag", "reasons"]
    assert v1["thresholds"]["generated"] is None
    for res in v1["results"]:
        assert res["status"] == "ok" and res["generated_score"] is None and res["generated_flag"] is None
        assert res["flagged"] == res["anomaly_flag"]
    assert [o["name"] for o in oip.json()["outputs"]] == ["anomaly_score", "anomaly_flag", "reasons"]
    assert wrong.status_code == 400 and "generated_score" in wrong.json()["detail"]
    # A generated threshold would silently flag nothing here: refused, with the reason.
    assert gen_v1.status_code == 422 and "no generated-image head" in gen_v1.json()["detail"]
    assert gen_oip.status_code == 400 and "no generated-image head" in gen_oip.json()["detail"]
    total = sum(metric(text, "ganaudit_images_scored_total", anomaly_flag=a, generated_flag="none") for a in ("true", "false"))
    assert total == 4


def test_generated_thresholds_outside_0_1_are_refused_by_both_apis(head_model, digits):
    b64 = base64.b64encode(digits["zeros"][0]).decode()
    with served(Detector.load(head_model)) as client:
        v1 = [client.post("/v1/detect", params={"generated_threshold": v}, files=multipart(digits["zeros"][:1]))
              for v in (-5, 2.0)]  # fmt: skip
        oip = [client.post("/v2/models/tiny-head/infer", json={
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}],
            "parameters": {"generated_threshold": v}}) for v in (-5, 2.0)]  # fmt: skip
    for r in v1:  # the query parameter's schema says 0-1 (FastAPI checks it)
        assert r.status_code == 422 and "generated_threshold" in r.text and "equal to" in r.text, r.text
    for r in oip:
        assert r.status_code == 400 and "from 0 to 1" in r.text, r.text


def test_model_with_a_generated_head_serves_its_scores_flags_and_threshold(head_model, digits):
    det = Detector.load(head_model)
    noise = png((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8))
    blobs = digits["zeros"][:2] + digits["others"][:2] + [noise]
    b64 = [base64.b64encode(b).decode() for b in blobs]
    with served(det) as client:
        meta = client.get("/v2/models/tiny-head").json()
        v1 = client.post("/v1/detect", files=multipart(blobs)).json()
        low = client.post("/v1/detect", params={"generated_threshold": 0.0}, files=multipart(blobs)).json()
        oip = client.post("/v2/models/tiny-head/infer", json={"id": "g", "inputs": [{"name": "image", "shape": [5], "datatype": "BYTES", "data": b64}]})  # fmt: skip
        text = scrape(client)
    assert [o["name"] for o in meta["outputs"]] == [
        "anomaly_score", "anomaly_flag", "generated_score", "generated_flag", "in_domain", "reasons"
    ]  # fmt: skip
    assert v1["thresholds"]["generated"] == pytest.approx(det.thresholds.generated)
    expected = det.detect([bytearray(b) for b in blobs])
    for res, ref in zip(v1["results"], expected):
        assert res["status"] == "ok"
        assert res["generated_score"] == pytest.approx(ref.generated_score, rel=1e-5, abs=1e-9)
        assert 0.0 <= res["generated_score"] <= 1.0
        assert res["generated_flag"] == (res["generated_score"] > det.thresholds.generated) == ref.generated_flag
        assert res["flagged"] == (res["anomaly_flag"] or res["generated_flag"])
    assert low["thresholds"]["generated"] == 0.0
    assert [r["generated_flag"] for r in low["results"]] == [r["generated_score"] > 0 for r in low["results"]]
    outs = {o["name"]: o for o in oip.json()["outputs"]}
    assert outs["generated_score"]["datatype"] == "FP32" and outs["generated_flag"]["datatype"] == "BOOL"
    assert outs["generated_score"]["data"] == pytest.approx([r["generated_score"] for r in v1["results"]], rel=1e-6)
    assert outs["generated_flag"]["data"] == [r["generated_flag"] for r in v1["results"]]
    counted = sum(metric(text, "ganaudit_images_scored_total", anomaly_flag=a, generated_flag=g)
                  for a in ("true", "false") for g in ("true", "false"))  # fmt: skip
    assert counted == 3 * len(blobs) and "generated_flag=\"none\"" not in text


# --------------------------------------------------------------------------- metrics and OpenAPI


def test_metrics_after_traffic(detector, digits):
    with served(detector) as client:
        client.post("/v1/detect", files=multipart(digits["zeros"][:3] + [b"junk"]))
        client.post("/v1/detect", files=multipart(digits["others"][:2]), params={"anomaly_threshold": -1})
        client.post("/v1/detect", content=b"x", headers={"content-type": "text/plain"})
        client.get("/v2/models/nope")
        client.get("/no/such/path")
        for i in range(20):  # found by trying: each made-up method was a new label series, before any API key check
            client.request(f"X{i:03d}" * 50, "/v1/detect")
        text = scrape(client)
    assert metric(text, "ganaudit_http_requests_total", route="/v1/detect", method="POST", status="200") == 2
    assert metric(text, "ganaudit_http_requests_total", route="/v1/detect", method="other", status="405") == 20
    assert "X000" not in text
    assert metric(text, "ganaudit_http_requests_total", route="/v1/detect", method="POST", status="415") == 1
    assert metric(text, "ganaudit_http_requests_total", route="/v2/models/{name}", method="GET", status="404") == 1
    assert metric(text, "ganaudit_http_requests_total", route="other", method="GET", status="404") == 1
    for phase in ("decode", "queue", "compute"):
        assert metric(text, "ganaudit_inference_latency_seconds_count", phase=phase) >= 2
        assert metric(text, "ganaudit_inference_latency_seconds_bucket", phase=phase, le="+Inf") >= 2
    assert metric(text, "ganaudit_batch_size_count") >= 2
    assert metric(text, "ganaudit_batch_size_sum") >= 5  # the images of the two scoring requests (+ none for warm-up)
    labels = ("true", "false") if detector.has_generated_head else ("none",)
    flagged = sum(metric(text, "ganaudit_images_scored_total", anomaly_flag="true", generated_flag=g) for g in labels)
    clean = sum(metric(text, "ganaudit_images_scored_total", anomaly_flag="false", generated_flag=g) for g in labels)
    assert flagged + clean == 5 and flagged >= 2  # the two with threshold -1 are flagged
    assert metric(text, "ganaudit_image_errors_total") == 1
    assert metric(text, "ganaudit_ready") == 1
    assert metric(text, "ganaudit_model_info", name="tiny-zeros", spec_hash=detector.spec_hash) == 1
    assert "# TYPE ganaudit_inference_latency_seconds histogram" in text
    assert metric(text, "ganaudit_queue_images") == 0


def test_openapi_documents_every_route_with_models_examples_and_errors(detector):
    with served(detector, warmup=False) as client:
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    paths = schema["paths"]
    expected = {
        ("/v1/detect", "post"), ("/v2", "get"), ("/v2/health/live", "get"), ("/v2/health/ready", "get"),
        ("/v2/models/{name}", "get"), ("/v2/models/{name}/ready", "get"), ("/v2/models/{name}/infer", "post"),
        ("/metrics", "get"),
    }  # fmt: skip
    assert {(p, m) for p, ops in paths.items() for m in ops} == expected
    comps = schema["components"]["schemas"]
    for path, method in expected:
        op = paths[path][method]
        ok = op["responses"]["200"]["content"]
        media = next(iter(ok.values()))
        assert "schema" in media or "example" in media, (path, method)
        if "schema" in media and "$ref" in media["schema"]:
            name = media["schema"]["$ref"].rsplit("/", 1)[1]
            assert "example" in comps[name], name
        for code, resp in op["responses"].items():
            if code.startswith(("4", "5")) and not path.endswith("ready"):  # readiness 503 is {"ready": false}
                content = resp["content"]["application/json"]
                assert content["schema"]["$ref"].endswith("/ErrorResponse"), (path, code)
                assert "example" in content, (path, code)
    detect = paths["/v1/detect"]["post"]
    assert {"401", "413", "415", "422", "503", "504"} <= set(detect["responses"])
    assert detect["responses"]["503"]["headers"]["Retry-After"]
    assert set(detect["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    assert {p["name"] for p in detect["parameters"]} == {"anomaly_threshold", "generated_threshold", "include_map"}
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/InferRequest"
    assert {"inputs", "id", "outputs", "parameters"} <= set(comps["InferRequest"]["properties"])
    assert "HTTPValidationError" not in comps  # every 422 uses the service's own error shape


# --------------------------------------------------------------------------- layering, CLI, a real server


def test_service_imports_and_serves_without_torch(tiny_model, digits, tmp_path):
    image = tmp_path / "zero.png"
    image.write_bytes(digits["zeros"][0])
    code = textwrap.dedent(
        f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        sys.modules["torch"] = None  # any `import torch` now fails
        from fastapi.testclient import TestClient
        from ganaudit.runtime.detector import Detector
        from ganaudit.service.app import create_app, ServiceSettings
        from ganaudit.cli import app as cli_app  # the CLI (with serve registered) imports without torch too
        app = create_app(Detector.load({str(tiny_model)!r}), ServiceSettings(warmup=False))
        with TestClient(app) as client:
            r = client.post("/v1/detect", files=[("files", ("z.png", open({str(image)!r}, "rb").read(), "image/png"))])
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["status"] == "ok"
        assert sys.modules["torch"] is None
        print("served without torch")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "served without torch" in out.stdout


def test_serve_cli_options_and_errors(tiny_model, monkeypatch):
    res = run_cli("serve", "--help")
    assert res.exit_code == 0
    for option in ("--model", "--host", "--port", "--max-upload-mb", "--max-batch-size", "--max-wait-ms",
                   "--max-queue", "--timeout-s", "--api-key-env"):  # fmt: skip
        assert option in res.output
    monkeypatch.delenv("GANAUDIT_TEST_KEY", raising=False)
    res = run_cli("serve", "--model", tiny_model, "--api-key-env", "GANAUDIT_TEST_KEY")
    assert res.exit_code == 2 and "GANAUDIT_TEST_KEY" in res.stderr
    res = run_cli("serve", "--model", "/no/such/model.onnx")
    assert res.exit_code == 2 and "not found" in res.stderr
    res = run_cli("serve", "--model", tiny_model, "--max-batch-size", "0")
    assert res.exit_code == 2 and "--max-batch-size" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_server_serves_limits_and_shuts_down_gracefully(tiny_model, digits):
    port = _free_port()
    env = {**os.environ, "GANAUDIT_TEST_KEY": "k3y"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganaudit.cli", "serve", "--model", str(tiny_model), "--port", str(port),
         "--max-upload-mb", "0.05", "--api-key-env", "GANAUDIT_TEST_KEY", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.1)
        auth = {"X-API-Key": "k3y"}
        r = httpx.post(f"{base}/v1/detect", files=multipart(digits["zeros"][:2]), headers=auth, timeout=10)
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        assert httpx.post(f"{base}/v1/detect", files=multipart(digits["zeros"][:1]), timeout=10).status_code == 401
        # A chunked body on a real socket: 413 arrives while we are still able to send, long before 2 MB.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nX-API-Key: k3y\r\nContent-Type: image/png\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            sent = 0
            s.settimeout(0.05)
            reply = b""
            while sent < 2_000_000 and not reply:
                try:
                    s.sendall(b"1000\r\n" + b"\0" * 0x1000 + b"\r\n")
                    sent += 0x1000
                    reply = s.recv(4096)
                except socket.timeout:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            s.settimeout(5)
            while b"\r\n\r\n" not in reply:
                more = s.recv(4096)
                if not more:
                    break
                reply += more
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert sent < 1_000_000
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err.decode()
    text = err.decode()
    assert "serving model 'tiny-zeros'" in text and "Finished server process" in text  # logs go to stderr
    assert "1 onnxruntime thread(s)" in text  # --threads reached the session (Detector.threads)


def test_kserve_binary_requests_that_do_not_add_up_get_400(detector, digits):
    import struct

    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 10}}]}).encode()  # fmt: skip
    png0 = digits["zeros"][0]
    good = struct.pack("<I", len(png0)) + png0
    good_head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                        "parameters": {"binary_data_size": len(good)}}],
                            "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
    url = "/v2/models/tiny-zeros/infer"
    octet = {"content-type": "application/octet-stream"}
    with served(detector, warmup=False) as client:
        past = client.post(url, content=head + b"x" * 4, headers={**octet, "Inference-Header-Content-Length": str(len(head))})
        huge = client.post(url, content=head, headers={**octet, "Inference-Header-Content-Length": "999999"})
        cut = client.post(url, content=head + b"\xff\xff\x00\x00" + b"x" * 6,
                          headers={**octet, "Inference-Header-Content-Length": str(len(head))})  # fmt: skip
        ok = client.post(url, content=good_head + good, headers={**octet, "Inference-Header-Content-Length": str(len(good_head))})
    assert past.status_code == 400 and "binary_data_size 10 runs past" in past.json()["detail"]
    assert huge.status_code == 400 and "Inference-Header-Content-Length is 999999" in huge.json()["detail"]
    assert cut.status_code == 400 and "BYTES element 0" in cut.json()["detail"]
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/octet-stream"
    n = int(ok.headers["Inference-Header-Content-Length"])
    body = json.loads(ok.content[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in body["outputs"]]
    assert all("data" not in o for o in body["outputs"]) and sum(sizes) == len(ok.content) - n
    score = struct.unpack("<f", ok.content[n : n + 4])[0]
    assert score == pytest.approx(detector.detect(png0).anomaly_score, rel=1e-5)


def test_kserve_requests_with_millions_of_values_are_refused_before_parsing(detector, digits):
    """Parsing runs on the event loop: 6.6 million empty lists in a 20 MB JSON body stalled every request
    (health probes included) for 4.6 s, and 5 million empty binary elements would loop as long. Both are
    refused from a count (413) before any parsing; a request of --max-queue images still passes."""
    import struct

    url = "/v2/models/tiny-zeros/infer"
    b64 = base64.b64encode(digits["zeros"][0]).decode()

    def infer_json(data: list, shape: list[int]) -> dict:
        return {"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": data}]}

    n = 200_000
    empties = struct.pack("<I", 0) * n
    bin_head = json.dumps({"inputs": [{"name": "image", "shape": [n], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(empties)}}]}).encode()  # fmt: skip
    with served(detector, warmup=False, max_queue=8) as client:
        lists = client.post(url, json=infer_json([[]] * n, [n]))
        zeros = client.post(url, json=infer_json([0] * n, [n]))
        binary_many = client.post(url, content=bin_head + empties, headers={
            "content-type": "application/octet-stream", "Inference-Header-Content-Length": str(len(bin_head))})
        full = client.post(url, json=infer_json([b64] * 8, [8]))
    for r in (lists, zeros):
        assert r.status_code == 413 and r.json()["error"].startswith("too_many_values"), r.text
        assert "--max-queue" in r.json()["detail"]
    assert binary_many.status_code == 413 and binary_many.json()["error"].startswith("too_many_images"), binary_many.text
    assert full.status_code == 200 and len(full.json()["outputs"][0]["data"]) == 8


def test_kserve_shapes_must_be_one_or_two_integers_and_data_comes_one_way(detector, digits):
    import struct

    url = "/v2/models/tiny-zeros/infer"
    b64 = base64.b64encode(digits["zeros"][0]).decode()
    with served(detector, warmup=False) as client:
        bad_shapes = [client.post(url, json={"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                                                         "data": [b64]}]}) for shape in (["1"], [True], [], [1, 1, 1])]  # fmt: skip
        png0 = digits["zeros"][0]
        blob = struct.pack("<I", len(png0)) + png0
        head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64],
                                       "parameters": {"binary_data_size": len(blob)}}]}).encode()  # fmt: skip
        both = client.post(url, content=head + blob, headers={
            "content-type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})
        ok = client.post(url, json={"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [[b64]]}]})
    for r in bad_shapes:
        assert r.status_code == 400 and "shape" in r.json()["detail"], r.text
    assert both.status_code == 400 and "both data and binary_data_size" in both.json()["detail"]
    assert ok.status_code == 200
