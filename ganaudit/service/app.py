"""The detection microservice: ``create_app(detector, settings)`` builds the FastAPI application.

Routes
------
- ``POST /v1/detect``: multipart ``files`` (one or more) or a raw ``image/*`` body -> one result per image.
- Open Inference Protocol (KServe v2): ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``.
- ``GET /metrics``: Prometheus text format.

Modules: ``state`` (ServiceSettings, Service, the ``get_service`` dependency), ``routes_v1``, ``routes_kserve``
and ``routes_ops`` (one router per protocol), ``errors`` (ServiceError and the JSON error handlers), ``openapi``,
``limits`` (auth, body size, timeout, metrics and HEAD as ASGI middleware), ``batcher``, ``admission``, ``binary``.

Layering: the service imports the runtime (``ganaudit.runtime.detector``) and never torch. Decoding runs on a small
thread pool, scoring on the micro-batcher's inference thread; the event loop only moves bytes.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..runtime.detector import Detector
from . import routes_kserve, routes_ops, routes_v1
from .docs_assets import ASSETS_PATH, add_docs_routes
from .errors import ServiceError, add_error_handlers
from .limits import ApiKeyAuth, BodySizeLimit, HeadAsGet, NoBodyForHead, RequestMetrics, RequestTimeout
from .openapi import install_openapi
from .state import OPEN_PATHS, Service, ServiceSettings, is_open_path

__all__ = ["create_app", "ServiceSettings", "Service", "ServiceError", "OPEN_PATHS", "is_open_path"]


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

    add_error_handlers(app)
    for router in (routes_v1.router, routes_kserve.router, routes_ops.router):
        # The routes themselves, not the router (FastAPI 0.165 nests included routers): the docs, the OpenAPI
        # document and RequestMetrics' route labels see every route with its own path, in this order.
        app.router.routes.extend(router.routes)
    install_openapi(app, api_key=bool(settings.api_key))

    # ---------------------------------------------------------------- middleware (last added = outermost)
    app.add_middleware(HeadAsGet, native_head=(f"{ASSETS_PATH}/",))  # static files answer HEAD themselves
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyAuth, api_key=settings.api_key, open_paths=is_open_path)
    app.add_middleware(RequestTimeout, timeout_s=settings.timeout_s)
    app.add_middleware(RequestMetrics, metrics=service.metrics, routes=lambda: app.router.routes)
    app.add_middleware(NoBodyForHead)
    return app
