"""One service instance's state: its settings (the ``ganaudit serve`` options) and the ``Service`` that holds the
detector, the micro-batcher, the decode pools, the metrics and readiness. Routes reach it with the
``get_service`` dependency."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

import numpy as np
from fastapi import Request

from ..core.errors import ConfigError, GanauditError
from ..core.grid import encode_png
from ..core.imaging import check_header
from ..runtime.detector import Detector, Prepared, Thresholds, Verdict, error_verdict
from .admission import SMALL_PIXELS, ClientGone, PixelBudget, run_admitted
from .batcher import BatcherClosed, MicroBatcher, QueueFull
from .docs_assets import ASSETS_PATH
from .errors import ServiceError
from .metrics import ServiceMetrics

log = logging.getLogger("ganaudit.service")

# Paths that stay open when an API key is configured: health probes and the API description. None of them
# names the served model (the per-model routes, readiness included, would confirm or reveal it).
OPEN_PATHS = frozenset({"/v2", "/v2/health/live", "/v2/health/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def is_open_path(path: str) -> bool:
    """True for paths served without an API key (health, server readiness, OpenAPI docs)."""
    return path in OPEN_PATHS or path.startswith(ASSETS_PATH + "/")


@dataclass
class ServiceSettings:
    """Limits and batching of one service instance (the `ganaudit serve` options)."""

    max_upload_mb: float = 20.0
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    api_key: Optional[str] = None
    decode_threads: int = 0  # 0 = min(4, CPU count)
    max_files: int = 1000
    warmup: bool = True
    drain_timeout_s: float = 10.0
    # Service default: 16 MP (e.g. 4000x4000), a quarter of scan's; a 16-bit RGBA image this size is 128 MB decoded.
    max_pixels: int = 16_000_000
    decode_budget_pixels: int = 0  # 0 = 2 x max_pixels: most pixels of big images decoding at once

    def __post_init__(self) -> None:
        self.decode_budget_pixels = self.decode_budget_pixels or 2 * self.max_pixels
        checks = [
            (self.max_upload_mb > 0, f"--max-upload-mb must be > 0, got {self.max_upload_mb}"),
            (self.max_batch_size >= 1, f"--max-batch-size must be >= 1, got {self.max_batch_size}"),
            (self.max_wait_ms >= 0, f"--max-wait-ms must be >= 0, got {self.max_wait_ms}"),
            (self.max_queue >= 1, f"--max-queue must be >= 1, got {self.max_queue}"),
            (self.timeout_s > 0, f"--timeout-s must be > 0, got {self.timeout_s}"),
            (self.api_key is None or self.api_key != "", "the API key must not be empty"),
            (self.max_files >= 1, f"max_files must be >= 1, got {self.max_files}"),
            (self.max_pixels >= 1, f"--max-pixels must be >= 1, got {self.max_pixels}"),
            (self.decode_budget_pixels >= 1, f"--decode-budget-pixels must be >= 1, got {self.decode_budget_pixels}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def _prepare_all(detector: Detector, blobs: list[bytes]) -> list[Prepared | Exception]:
    out: list[Prepared | Exception] = []
    for blob in blobs:
        try:
            out.append(detector.prepare(blob))  # bytes are always image data, never a path
        except GanauditError as e:
            out.append(_detached(e))
    return out


def _detached(error: GanauditError) -> GanauditError:
    """The error without its traceback or the exception it replaced: their frames hold the decoded pixels and
    the list the error is kept in, a cycle that only a full garbage collection frees (hundreds of MB for one
    refused image)."""
    error.__traceback__, error.__context__, error.__cause__ = None, None, None
    return error


class Service:
    """Everything one app instance holds: detector, batcher, decode pool, metrics, readiness."""

    def __init__(self, detector: Detector, settings: ServiceSettings) -> None:
        self.detector = detector
        self.settings = settings
        self.metrics = ServiceMetrics(queue_depth=lambda: self.batcher.pending)
        self.batcher = MicroBatcher(
            detector, max_batch_size=settings.max_batch_size, max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue, metrics=self.metrics,
        )  # fmt: skip
        self.decode_pool: ThreadPoolExecutor | None = None
        # Images above admission.SMALL_PIXELS: their own pool, admitted by pixel budget (a memory ceiling).
        self.large_pool: ThreadPoolExecutor | None = None
        self.budget = PixelBudget(settings.decode_budget_pixels)
        self.ready = False
        self._warmup_task: asyncio.Task | None = None
        # ModelSpec.spec_hash re-serialises the whole spec on every access: read it once.
        self.name, self.spec_hash = detector.name, detector.spec_hash
        self.metrics.model_info.set(1, name=self.name, spec_hash=self.spec_hash)

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        threads = self.settings.decode_threads or min(4, os.cpu_count() or 1)
        self.decode_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ganaudit-decode")
        self.large_pool = ThreadPoolExecutor(max_workers=max(1, threads // 2), thread_name_prefix="ganaudit-decode-big")
        await self.batcher.start()
        if self.settings.warmup:
            self._warmup_task = asyncio.get_running_loop().create_task(self._warm_up(), name="ganaudit-warmup")
        else:
            self._set_ready(True)

    async def _warm_up(self) -> None:
        """Decode, preprocess and score a blank image at batch 1 and at the max batch size."""
        p = self.detector.spec.preprocess
        blank = encode_png(np.zeros((p.size, p.size, p.channels), np.uint8))
        try:
            prepared = await self._run_decode([blank])
            item = prepared[0]
            if isinstance(item, Exception):
                raise item
            await self.batcher.run_direct([item])
            if self.settings.max_batch_size > 1:
                await self.batcher.run_direct([item] * self.settings.max_batch_size)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - stay alive but never report ready
            log.exception("warm-up batch failed: the service stays not ready")
            return
        self._set_ready(True)

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set(1 if ready else 0)

    async def stop(self) -> None:
        self._set_ready(False)
        if self._warmup_task is not None and not self._warmup_task.done():
            self._warmup_task.cancel()
        await self.batcher.close(self.settings.drain_timeout_s)
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
            self.decode_pool = None
        if self.large_pool is not None:
            self.large_pool.shutdown(wait=False, cancel_futures=True)
            self.large_pool = None

    # -------------------------------------------------------------- scoring
    async def _run_decode(
        self, blobs: list[bytes], gone: Callable[[], Awaitable[bool]] | None = None
    ) -> list[Prepared | Exception]:
        """Small images in one pool call; big ones one by one, each admitted by the pixel budget (dropped
        unstarted when the request is cancelled or ``gone()`` says the client left)."""
        if self.decode_pool is None or self.large_pool is None:
            raise ServiceError(503, "not_ready", "the service is not running", {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        out: list[Prepared | Exception | None] = [None] * len(blobs)
        pixels: list[int | None] = []
        for i, blob in enumerate(blobs):
            try:
                pixels.append(check_header(blob, self.settings.max_pixels))
            except GanauditError as e:  # refused from the header (format or --max-pixels): nothing decoded
                out[i] = _detached(e)
                pixels.append(None)
        small = [i for i, px in enumerate(pixels) if px is not None and px <= SMALL_PIXELS]
        if small:
            done = await loop.run_in_executor(self.decode_pool, _prepare_all, self.detector, [blobs[i] for i in small])
            for i, item in zip(small, done):
                out[i] = item
        for i, px in enumerate(pixels):
            if px is None or px <= SMALL_PIXELS:
                continue
            try:
                out[i] = (await run_admitted(self.budget, self.large_pool, px, gone, _prepare_all, self.detector, [blobs[i]]))[0]
            except ClientGone:
                raise ServiceError(499, "client_closed_request", "the client disconnected; its work was dropped") from None
        return out  # type: ignore[return-value]

    def check_capacity(self, n: int) -> None:
        if n > self.settings.max_queue:
            raise ServiceError(
                413, "too_many_images",
                f"the request holds {n} images, more than the queue takes at once (--max-queue "
                f"{self.settings.max_queue}); split it into smaller requests",
            )  # fmt: skip

    async def decode(
        self, blobs: list[bytes], gone: Callable[[], Awaitable[bool]] | None = None
    ) -> list[Prepared | Exception]:
        t0 = time.perf_counter()
        out = await self._run_decode(blobs, gone)
        self.metrics.latency.observe(time.perf_counter() - t0, phase="decode")
        return out

    async def score(
        self, prepared: list[Prepared | Exception], thresholds: Thresholds, include_map: bool
    ) -> list[Verdict]:
        """Verdicts in input order; decode failures become error verdicts."""
        ok = [p for p in prepared if isinstance(p, Prepared)]
        verdicts: list[Verdict] = []
        if ok:
            try:
                verdicts, timing = await self.batcher.submit(ok, thresholds, include_map=include_map)
            except QueueFull as e:
                raise ServiceError(503, "overloaded", str(e), {"Retry-After": str(e.retry_after)}) from None
            except BatcherClosed as e:
                raise ServiceError(503, "shutting_down", str(e), {"Retry-After": "1"}) from None
            self.metrics.latency.observe(timing.queue, phase="queue")
            self.metrics.latency.observe(timing.compute, phase="compute")
        it = iter(verdicts)
        out = [next(it) if isinstance(p, Prepared) else error_verdict(None, p) for p in prepared]
        self.metrics.count_verdicts(out)
        return out

    def thresholds(self, anomaly: float | None, generated: float | None, status: int = 422) -> Thresholds:
        """The thresholds in force for one request; ``status`` answers a generated threshold for a model
        without a generated-image head (it would silently flag nothing)."""
        if generated is not None and not self.detector.has_generated_head:
            raise ServiceError(
                status, "invalid_request",
                f"generated_threshold: model {self.name!r} has no generated-image head; leave the parameter out",
            )  # fmt: skip
        try:
            return self.detector.resolve_thresholds(
                anomaly_threshold=anomaly, generated_threshold=generated, base=self.detector.thresholds
            )
        except ConfigError as e:  # e.g. a generated threshold outside 0-1
            raise ServiceError(status, "invalid_request", str(e)) from None

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise ServiceError(404, "model_not_found", f"model {name!r} is not served here; it serves {self.name!r}")

    def output_specs(self) -> list[tuple[str, str]]:
        outs = [("anomaly_score", "FP32"), ("anomaly_flag", "BOOL")]
        if self.detector.has_generated_head:
            outs += [("generated_score", "FP32"), ("generated_flag", "BOOL")]
        if self.detector.gate_active:
            outs.append(("in_domain", "BOOL"))
        return outs + [("reasons", "BYTES")]

    def model_ref(self) -> dict[str, str]:
        return {"name": self.name, "spec_hash": self.spec_hash}


def get_service(request: Request) -> Service:
    """The dependency that gives a route its app's Service."""
    return request.app.state.service


def media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
