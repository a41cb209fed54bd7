"""The detection microservice: ``create_app(detector, settings)`` builds the FastAPI application.

Routes
------
- ``POST /v1/detect``: multipart ``files`` (one or more) or a raw ``image/*`` body -> one result per image.
- Open Inference Protocol (KServe v2): ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``.
- ``GET /metrics``: Prometheus text format.

Layering: this module imports the runtime (``ganaudit.runtime``) and never torch. Decoding runs on a small
thread pool, scoring on the micro-batcher's inference thread; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Awaitable, Callable, Optional

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, evidence
from ..errors import ConfigError, GanauditError
from ..grid import encode_png
from ..imaging import check_header
from ..runtime import RECORD_FIELDS, Detector, Prepared, Thresholds, Verdict, error_verdict, finite_or_none, verdict_record
from . import binary
from . import schemas as S
from .admission import SMALL_PIXELS, ClientGone, PixelBudget, run_admitted
from .batcher import BatcherClosed, MicroBatcher, QueueFull
from .docs_assets import ASSETS_PATH, add_docs_routes
from .limits import ApiKeyAuth, BodySizeLimit, RequestMetrics, RequestTimeout, error_body
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServiceMetrics

log = logging.getLogger("ganaudit.service")

# Paths that stay open when an API key is configured: health probes and the API description. None of them
# names the served model (the per-model routes, readiness included, would confirm or reveal it).
OPEN_PATHS = frozenset({"/v2", "/v2/health/live", "/v2/health/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PLATFORM = "onnxruntime_onnx"
INPUT_NAME = "image"


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


class ServiceError(Exception):
    """An error answered as ``{"error": code, "detail": message}`` with ``status``."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


_STATUS_CODES = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_request", 503: "overloaded", 504: "timeout",
}  # fmt: skip


def _error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(error, detail), status_code=status, headers=headers)


def _prepare_all(detector: Detector, blobs: list[bytes]) -> list[Prepared | Exception]:
    out: list[Prepared | Exception] = []
    for blob in blobs:
        try:
            # bytearray: always treated as encoded image data, never as a server-side file path.
            out.append(detector.prepare(bytearray(blob)))
        except GanauditError as e:
            out.append(e)
    return out


def heatmap_png(anomaly_map: np.ndarray) -> bytes:
    """The anomaly map as a color PNG: inferno colormap, 0 -> black, >= 1 -> yellow."""
    u8 = np.clip(np.nan_to_num(np.asarray(anomaly_map, np.float32)) * 255.0, 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO)
    return encode_png(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


# Verdict fields a result carries, in order: components last, before the maps.
_RESULT_FIELDS = tuple(f for f in RECORD_FIELDS if f not in ("source", "components")) + ("components",)


def _result(filename: str | None, v: Verdict) -> dict[str, Any]:
    d: dict[str, Any] = {"filename": filename, **verdict_record(v, _RESULT_FIELDS)}
    d["anomaly_map"] = base64.b64encode(heatmap_png(v.anomaly_map)).decode() if v.anomaly_map is not None else None
    gm = v.generated_map
    d["generated_map"] = None if gm is None else base64.b64encode(heatmap_png(evidence.for_display(gm))).decode()
    return d


def _disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    m = re.search(r'filename="?([^";]+)"?', header)
    return m.group(1) if m else None


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
                out[i] = e
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
        return self.detector.resolve_thresholds(
            anomaly_threshold=anomaly, generated_threshold=generated, base=self.detector.thresholds
        )

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


# --------------------------------------------------------------------------- request bodies in OpenAPI

_DETECT_BODY = {
    "requestBody": {
        "required": True,
        "description": "Either multipart/form-data with one or more parts named `files`, or one raw image with "
        "Content-Type image/* (image/png, image/jpeg, ...).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "minItems": 1,  # a body without a files part is answered 422: the schema says so too
                            "items": {"type": "string", "format": "binary"},
                            "description": "Image files (PNG, JPEG, BMP, WEBP, TIFF, GIF).",
                        }
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}},
    }
}


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for x in data:
            out.extend(_flatten(x))
        return out
    return [data]


def _number_param(params: dict[str, Any] | None, key: str) -> float | None:
    if not params or key not in params:
        return None
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ServiceError(400, "invalid_request", f"parameter {key!r} must be a finite number, got {value!r}")
    return float(value)


def _binary_size(params: dict[str, Any] | None) -> int | None:
    """An input's ``binary_data_size`` (binary tensor data extension), or None when its data is in the JSON."""
    size = (params or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        raise binary.BinaryFormatError(f"binary_data_size must be an integer, got {size!r}")
    return size


def _binary_wanted(output_params: dict[str, Any] | None, request_params: dict[str, Any] | None) -> bool:
    """Whether an output goes back in binary form: its own ``binary_data``, else the request's ``binary_data_output``."""
    if output_params and "binary_data" in output_params:
        return output_params["binary_data"] is True
    return bool(request_params) and request_params.get("binary_data_output") is True  # type: ignore[union-attr]


def _kserve_error(request: Request, code: str, detail: str) -> str:
    """The ``error`` field: the code, and on /v2 routes the code then the detail, since the Open Inference
    Protocol's clients (tritonclient) show only ``error`` (e.g. "invalid_request: input 'image' element 1: ...")."""
    return f"{code}: {detail}" if request.url.path.startswith("/v2/") else code


def _media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


# --------------------------------------------------------------------------- the app


def create_app(detector: Detector, settings: ServiceSettings | None = None) -> FastAPI:
    """Build the service around a loaded detector. The app's lifespan starts and drains the batcher."""
    settings = settings or ServiceSettings()
    service = Service(detector, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="ganaudit",
        version=__version__,
        summary="Flag anomalous or generated images with a GAN-trained ONNX detector.",
        description=(
            "Scores images with one exported ganaudit detector. `POST /v1/detect` is the native API; "
            "`/v2/...` follows the Open Inference Protocol (KServe v2). Every error is JSON "
            '`{"error": <code>, "detail": <message>}`.'
            + ("\n\nAuthentication: `Authorization: Bearer <key>` or `X-API-Key: <key>` on every route but the "
               "health, readiness and docs routes." if settings.api_key else "")
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from docs_assets: served from installed files, not a CDN
        redoc_url=None,
    )  # fmt: skip
    app.state.service = service
    add_docs_routes(app, app.title)

    # ---------------------------------------------------------------- errors
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error_response(exc.status, _kserve_error(request, exc.error, exc.detail), exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
        code = _kserve_error(request, code, str(exc.detail))
        return _error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return _error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(500, "internal_error", f"{type(exc).__name__}: the server failed to handle the request")

    # ---------------------------------------------------------------- /v1/detect
    @app.post(
        "/v1/detect",
        response_model=S.DetectResponse,
        tags=["detect"],
        summary="Score one or more images",
        responses={
            400: S.ERR_400_DETECT,
            401: S.ERR_401, 413: S.ERR_413, 415: S.ERR_415, 422: S.ERR_422_DETECT, 503: S.ERR_503, 504: S.ERR_504,
        },  # fmt: skip
        openapi_extra=_DETECT_BODY,
    )
    async def detect(
        request: Request,
        anomaly_threshold: Annotated[
            Optional[float], Query(description="Override the anomaly threshold (raw score) for this request.", allow_inf_nan=False)
        ] = None,
        generated_threshold: Annotated[
            Optional[float],
            Query(description="Override the generated-probability threshold for this request.", allow_inf_nan=False),
        ] = None,
        include_map: Annotated[bool, Query(description="Add a base64 PNG heat map to each result.")] = False,
    ) -> Response:
        """Multipart `files` (one or more) give one result per file, in order; a file that cannot be decoded (or
        is over the pixel limit) gives a result with `status: "error"` and does not fail the request. A raw
        `image/*` body gives a single result, or 422 when the image cannot be decoded."""
        media = _media_type(request)
        thresholds = service.thresholds(anomaly_threshold, generated_threshold)
        if media == "multipart/form-data":
            names, blobs = await _read_multipart(request, settings.max_files)
            service.check_capacity(len(blobs))
            prepared = await service.decode(blobs, request.is_disconnected)
        elif media.startswith("image/"):
            names = [_disposition_filename(request.headers.get("content-disposition"))]
            prepared = await service.decode([await request.body()], request.is_disconnected)
            if isinstance(prepared[0], Exception):
                service.metrics.count_verdicts([error_verdict(None, prepared[0])])
                raise ServiceError(422, "undecodable_image", str(prepared[0]))
        else:
            shown = media or "(none)"
            raise ServiceError(
                415, "unsupported_media_type",
                f"Content-Type {shown!r} is not accepted: send multipart/form-data with one or more 'files' parts, "
                "or a raw image/* body",
            )  # fmt: skip
        verdicts = await service.score(prepared, thresholds, include_map)
        body = {
            "model": service.model_ref(),
            "thresholds": {"anomaly": finite_or_none(thresholds.anomaly), "generated": finite_or_none(thresholds.generated)},
            "results": [_result(n, v) for n, v in zip(names, verdicts)],
        }
        return JSONResponse(body)

    # ---------------------------------------------------------------- Open Inference Protocol
    @app.get("/v2", response_model=S.ServerMetadata, tags=["kserve-v2"], summary="Server metadata", responses={401: S.ERR_401})
    async def server_metadata() -> dict[str, Any]:
        return {"name": "ganaudit", "version": __version__, "extensions": [binary.EXTENSION]}

    @app.get("/v2/health/live", response_model=S.LiveResponse, tags=["kserve-v2"], summary="Liveness")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        response_model=S.ReadyResponse,
        tags=["kserve-v2"],
        summary="Readiness: model loaded and warm-up batch done",
        responses={503: {"model": S.ReadyResponse, "description": "Not ready yet (warming up) or shutting down.",
                         "content": {"application/json": {"example": {"ready": False}}}}},
    )  # fmt: skip
    async def ready() -> Response:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @app.get(
        "/v2/models/{name}",
        response_model=S.ModelMetadata,
        tags=["kserve-v2"],
        summary="Model metadata",
        responses={401: S.ERR_401, 404: S.ERR_404_MODEL},
    )
    async def model_metadata(name: str) -> dict[str, Any]:
        service.check_model(name)
        return {
            "name": service.name,
            "versions": [service.spec_hash],
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": n, "datatype": t, "shape": [-1]} for n, t in service.output_specs()],
        }

    @app.get(
        "/v2/models/{name}/ready",
        response_model=S.ModelReadyResponse,
        tags=["kserve-v2"],
        summary="Model readiness",
        responses={401: S.ERR_401, 404: S.ERR_404_MODEL, 503: {"model": S.ModelReadyResponse, "description": "Not ready yet.",
                   "content": {"application/json": {"example": {"name": "tiny-zeros", "ready": False}}}}},
    )  # fmt: skip
    async def model_ready(name: str) -> Response:
        service.check_model(name)
        return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 503)

    @app.post(
        "/v2/models/{name}/infer",
        response_model=S.InferResponse,
        tags=["kserve-v2"],
        summary="Inference (BYTES tensor of base64 encoded images)",
        responses={
            400: S.ERR_400_INFER, 401: S.ERR_401, 404: S.ERR_404_MODEL, 413: S.ERR_413, 415: S.ERR_415,
            503: S.ERR_503, 504: S.ERR_504,
        },  # fmt: skip
        openapi_extra=_INFER_BODY,
    )
    async def infer(name: str, request: Request) -> Response:
        """One BYTES input holding N encoded image files (base64 strings in JSON, raw bytes in binary form);
        outputs `anomaly_score`, `anomaly_flag`, `reasons` and, when the model has a generated-image head,
        `generated_score`, `generated_flag` (and `in_domain` with the domain gate on), each of shape [N]. An
        abstaining generated verdict gives `generated_score` null (NaN in binary form) and `generated_flag`
        false. The request `id` is echoed. Supports the binary tensor data extension (what
        `tritonclient.http` sends by default). An inference request is atomic: an image that cannot be decoded
        fails it with 400 (use `/v1/detect` for per-image errors)."""
        service.check_model(name)
        media = _media_type(request)
        header_length = request.headers.get(binary.HEADER)
        if media and media != "application/json" and not media.endswith("+json") and not (
            header_length is not None and media == "application/octet-stream"
        ):
            raise ServiceError(415, "unsupported_media_type", f"Content-Type {media!r} is not accepted: send application/json")
        try:
            head, rest = binary.split_body(await request.body(), header_length)
            payload = S.InferRequest.model_validate_json(head)
            raw = binary.take_inputs([_binary_size(i.parameters) for i in payload.inputs], rest)
        except binary.BinaryFormatError as e:
            raise ServiceError(400, "invalid_request", str(e)) from None
        except ValidationError as e:
            parts = [f"{'.'.join(str(x) for x in err.get('loc', ())) or 'body'}: {err.get('msg', '')}" for err in e.errors()]
            raise ServiceError(400, "invalid_request", "; ".join(parts)) from None
        if len(payload.inputs) != 1:
            raise ServiceError(400, "invalid_request", f"expected exactly one input tensor, got {len(payload.inputs)}")
        inp = payload.inputs[0]
        if inp.datatype.upper() != "BYTES":
            raise ServiceError(400, "invalid_request", f"input {inp.name!r} must have datatype BYTES, got {inp.datatype!r}")
        if inp.data is None and raw[0] is None:
            raise ServiceError(400, "invalid_request", f"input {inp.name!r} has no data and no binary_data_size")
        try:
            data = _flatten(inp.data) if raw[0] is None else binary.decode_bytes_elements(raw[0])
        except binary.BinaryFormatError as e:
            raise ServiceError(400, "invalid_request", f"input {inp.name!r}: {e}") from None
        if any(d < 0 for d in inp.shape) or math.prod(inp.shape) != len(data):
            raise ServiceError(
                400, "invalid_request", f"input {inp.name!r} has shape {inp.shape} but holds {len(data)} elements"
            )
        available = dict(service.output_specs())
        wanted = [o.name for o in payload.outputs] if payload.outputs else list(available)
        unknown = [n for n in wanted if n not in available]
        if unknown:
            raise ServiceError(
                400, "invalid_request", f"unknown output(s) {unknown}; this model has {list(available)}"
            )
        thresholds = service.thresholds(
            _number_param(payload.parameters, "anomaly_threshold"), _number_param(payload.parameters, "generated_threshold"),
            status=400,
        )
        blobs = []
        for i, item in enumerate(data):
            if isinstance(item, bytes):  # binary form: the raw file
                blobs.append(item)
                continue
            if not isinstance(item, str):
                raise ServiceError(400, "invalid_request", f"input {inp.name!r} element {i}: expected a base64 string")
            try:
                blobs.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise ServiceError(400, "invalid_request", f"input {inp.name!r} element {i}: not valid base64") from None
        service.check_capacity(len(blobs))
        prepared = await service.decode(blobs, request.is_disconnected)
        for i, p in enumerate(prepared):
            if isinstance(p, Exception):
                service.metrics.count_verdicts([error_verdict(None, e) for e in prepared if isinstance(e, Exception)])
                raise ServiceError(400, "invalid_request", f"input {inp.name!r} element {i}: {p}")
        verdicts = await service.score(prepared, thresholds, False)
        n = len(verdicts)
        values = {
            "anomaly_score": [v.anomaly_score for v in verdicts],
            "anomaly_flag": [bool(v.anomaly_flag) for v in verdicts],
            "generated_score": [v.generated_score for v in verdicts],
            "generated_flag": [bool(v.generated_flag) for v in verdicts],
            "in_domain": [v.in_domain is not False for v in verdicts],
            "reasons": [json.dumps(v.reasons) for v in verdicts],
        }
        as_binary = {o.name: _binary_wanted(o.parameters, payload.parameters) for o in payload.outputs or []}
        default_binary = _binary_wanted(None, payload.parameters)
        outputs, binaries = [], []
        for k in wanted:
            out: dict[str, Any] = {"name": k, "shape": [n], "datatype": available[k]}
            if as_binary.get(k, default_binary):
                binaries.append(binary.encode(available[k], values[k]))
                out["parameters"] = {"binary_data_size": len(binaries[-1])}
            else:
                out["data"] = [finite_or_none(x) for x in values[k]]
            outputs.append(out)
        body: dict[str, Any] = {"model_name": service.name, "model_version": service.spec_hash, "outputs": outputs}
        if payload.id is not None:
            body["id"] = payload.id
        if not binaries:
            return JSONResponse(body)
        content, json_length = binary.response_body(body, binaries)
        return Response(content, media_type="application/octet-stream", headers={binary.HEADER: str(json_length)})

    # ---------------------------------------------------------------- metrics
    @app.get(
        "/metrics",
        tags=["metrics"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {"content": {METRICS_CONTENT_TYPE: {"example": "ganaudit_http_requests_total{method=\"POST\",route=\"/v1/detect\",status=\"200\"} 12\n"}},
                  "description": "Prometheus text exposition format 0.0.4."},
            401: S.ERR_401,
        },
    )  # fmt: skip
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # ---------------------------------------------------------------- OpenAPI: InferRequest schema + security
    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        infer_schema = S.InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        for key, value in infer_schema.pop("$defs", {}).items():
            comps.setdefault(key, value)
        comps["InferRequest"] = infer_schema
        # FastAPI documents its own 422 body; this service answers 422 with ErrorResponse like every error.
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                resp = op.get("responses", {}).get("422")
                if resp and "HTTPValidationError" in json.dumps(resp):
                    op["responses"]["422"] = {
                        "description": "Invalid query or path parameter.",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                            "example": {"error": "invalid_request", "detail": "query.anomaly_threshold: Input should be a valid number"},
                        }},
                    }  # fmt: skip
        if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
            comps.pop("HTTPValidationError", None)
            comps.pop("ValidationError", None)
        if settings.api_key:
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            for path, ops in schema.get("paths", {}).items():
                concrete = path.replace("{name}", "x")
                if not is_open_path(concrete):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]

    # ---------------------------------------------------------------- middleware (last added = outermost)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyAuth, api_key=settings.api_key, open_paths=is_open_path)
    app.add_middleware(RequestTimeout, timeout_s=settings.timeout_s)
    app.add_middleware(RequestMetrics, metrics=service.metrics, routes=lambda: app.router.routes)
    return app


async def _read_multipart(request: Request, max_files: int) -> tuple[list[str | None], list[bytes]]:
    """The ``files`` parts of a multipart body: names and bytes (spooled uploads are closed here)."""
    form = await request.form(max_files=max_files, max_fields=max_files)
    try:
        names: list[str | None] = []
        blobs: list[bytes] = []
        for key, value in form.multi_items():
            if key != "files":
                continue
            if isinstance(value, UploadFile):
                names.append(value.filename)
                blobs.append(await value.read())
            else:  # a plain text field named files: keep its place, it will fail decoding with a clear message
                names.append(None)
                blobs.append(value.encode())
        if not blobs:
            raise ServiceError(
                422, "invalid_request", "the multipart body has no 'files' part: send images as files=@image.png"
            )
        return names, blobs
    finally:
        await form.close()
