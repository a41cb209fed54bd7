"""Issue 13: one request cannot starve the others (pixel limit, decode budget, dropped work) and bombs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from ganaudit.core.imaging import image_size  # noqa: E402
from ganaudit.service.app import ServiceSettings, create_app  # noqa: E402

from ._bombs import BOMBS, tiff_twice_width  # noqa: E402
from .conftest import run_cli  # noqa: E402
from .test_service import multipart, png, served, served_async  # noqa: E402


class GatedDecoder:
    """A detector whose decoding of images above 1 MP blocks on a gate and is counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.started = 0
        self.running = 0
        self.most_running = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prepare(self, source: Any) -> Any:
        size = image_size(bytes(source))
        if size and size[0] * size[1] > 1_000_000:
            with self.lock:
                self.started += 1
                self.running += 1
                self.most_running = max(self.most_running, self.running)
            try:
                assert self.gate.wait(20), "test gate never opened"
            finally:
                with self.lock:
                    self.running -= 1
        return self.inner.prepare(source)


BIG = png(np.zeros((1100, 1100), np.uint8))  # 1.21 MP: above the small-image lane


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def test_big_images_wait_for_the_pixel_budget_while_small_ones_pass(detector, digits):
    det = GatedDecoder(detector)

    async def main():
        settings = dict(max_pixels=2_000_000, decode_budget_pixels=1_500_000, decode_threads=4, warmup=False)
        async with served_async(det, **settings) as (app, client):
            big = [asyncio.create_task(client.post("/v1/detect", files=multipart([BIG]))) for _ in range(2)]
            await _until(lambda: det.started == 1)
            await asyncio.sleep(0.3)
            assert det.started == 1  # the second big image waits: 2 x 1.21 MP is over the 1.5 MP budget
            t0 = time.monotonic()
            small = await client.post("/v1/detect", files=multipart(digits["zeros"][:1]))
            small_s = time.monotonic() - t0
            det.gate.set()
            done = await asyncio.gather(*big)
            await _until(lambda: app.state.service.budget.used == 0)
            return small, small_s, done

    small, small_s, done = asyncio.run(main())
    assert small.status_code == 200 and small_s < 2.0
    assert [r.status_code for r in done] == [200, 200]
    assert all(r.json()["results"][0]["status"] == "ok" for r in done)
    assert det.most_running == 1 and det.started == 2


def test_work_of_a_timed_out_request_is_dropped_before_it_starts(detector):
    det = GatedDecoder(detector)

    async def main():
        settings = dict(decode_budget_pixels=1_500_000, decode_threads=4, warmup=False, timeout_s=0.5)
        async with served_async(det, **settings) as (app, client):
            first = asyncio.create_task(client.post("/v1/detect", files=multipart([BIG])))
            await _until(lambda: det.started == 1)
            second = await client.post("/v1/detect", files=multipart([BIG, BIG]))
            assert (await first).status_code == 504
            det.gate.set()
            await _until(lambda: app.state.service.budget.used == 0)
            await asyncio.sleep(0.3)
            return second

    second = asyncio.run(main())
    assert second.status_code == 504
    assert det.started == 1  # the timed-out request's images never started decoding


def test_work_of_a_disconnected_client_is_dropped_before_it_starts(detector):
    det = GatedDecoder(detector)
    body = b"".join(
        [b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
         b"Content-Type: image/png\r\n\r\n", BIG, b"\r\n--b--\r\n"]
    )  # fmt: skip

    async def main():
        settings = dict(decode_budget_pixels=1_500_000, decode_threads=4, warmup=False)
        async with served_async(det, **settings) as (app, client):
            first = asyncio.create_task(client.post("/v1/detect", files=multipart([BIG])))
            await _until(lambda: det.started == 1)
            sent: list[dict] = []
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive():
                if messages:
                    return messages.pop(0)
                return {"type": "http.disconnect"}  # the client has gone once its body is sent

            async def send(message):
                sent.append(message)

            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                "path": "/v1/detect", "raw_path": b"/v1/detect", "query_string": b"", "root_path": "",
                "headers": [(b"content-type", b"multipart/form-data; boundary=b"),
                            (b"content-length", str(len(body)).encode()), (b"host", b"service")],
                "client": ("127.0.0.1", 1), "server": ("service", 80),
            }  # fmt: skip
            gone = asyncio.create_task(app(scope, receive, send))
            await asyncio.sleep(0.3)
            det.gate.set()
            await gone
            await first
            await _until(lambda: app.state.service.budget.used == 0)
            return sent

    sent = asyncio.run(main())
    assert sent[0]["status"] == 499
    assert det.started == 1


def test_serve_max_pixels_refuses_from_the_header(detector, digits):
    det = GatedDecoder(detector)
    big = png(np.zeros((1500, 1500), np.uint8))  # 2.25 MP
    with served(det, max_pixels=2_000_000, warmup=False) as client:
        r = client.post("/v1/detect", files=multipart([digits["zeros"][0], big]))
    ok, over = r.json()["results"]
    assert ok["status"] == "ok"
    assert over["status"] == "error" and "1500x1500" in over["error"] and "--max-pixels" in over["error"]
    assert det.started == 0  # refused unread
    assert ServiceSettings().max_pixels == 16_000_000
    res = run_cli("serve", "--help")
    assert "--max-pixels" in res.output and "--decode-budget-pixels" in res.output
    res = run_cli("serve", "--max-pixels", "0")
    assert res.exit_code == 2 and "--max-pixels" in res.stderr


@pytest.mark.parametrize("name", ["hdr", "jpeg2000", "pgm", "pfm"])
def test_bombs_in_unread_formats_are_refused_by_the_service(detector, name):
    data, fmt = BOMBS[name]
    with served(detector) as client:
        raw = client.post("/v1/detect", content=data, headers={"content-type": "image/png"})
        multi = client.post("/v1/detect", files=multipart([data]))
    assert raw.status_code == 422 and f"{fmt} images are not accepted" in raw.json()["detail"]
    assert multi.json()["results"][0]["status"] == "error"
    assert f"{fmt} images are not accepted" in multi.json()["results"][0]["error"]


def test_the_service_refuses_a_tiff_that_lists_its_width_twice_from_the_header(detector, monkeypatch):
    from ganaudit.core import imaging

    decoded: list[int] = []
    monkeypatch.setattr(imaging, "_cv_decode", lambda d, fmt: decoded.append(len(d)) or (None, None))
    with served(detector, warmup=False) as client:  # --max-pixels 16 MP; the file claims 8 wide after 7999
        r = client.post("/v1/detect", content=tiff_twice_width(), headers={"content-type": "image/tiff"})
    assert r.status_code == 422 and "7999x7999" in r.json()["detail"] and "MP limit" in r.json()["detail"]
    assert decoded == []  # refused from the header: OpenCV never saw it (it used to decode 512 MB)


def test_refused_images_keep_no_frames_alive(detector):
    """A kept error must not hold its traceback (or the error it replaced): their frames hold the decoded
    pixels and the result list, a cycle only a full garbage collection frees (hundreds of MB per image)."""
    import gc

    from ganaudit.service.state import _prepare_all

    cut_png = png(np.zeros((64, 64), np.uint8))[:60]
    gc.disable()
    try:
        errors = _prepare_all(detector, [b"\x89PNG\r\n\x1a\n" + b"\0" * 40, cut_png, b"not an image"])
    finally:
        gc.enable()
    assert all(isinstance(e, Exception) for e in errors)
    assert all(e.__traceback__ is None and e.__context__ is None and e.__cause__ is None for e in errors)


@pytest.fixture(scope="module")
def detector(tiny_model):
    from ganaudit.runtime.detector import Detector

    return Detector.load(tiny_model)


@pytest.fixture(scope="module")
def digits(mnist_test_images) -> dict[str, Any]:
    images, labels = mnist_test_images
    return {"zeros": [png(images[i]) for i in np.flatnonzero(labels == 0)[:4]]}
