"""The service's errors: ``ServiceError`` and the handlers that answer every error as JSON
``{"error": <code>, "detail": <message>}`` (on /v2 routes the code carries the detail too: KServe clients show
only ``error``)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .limits import error_body


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


def _kserve_error(request: Request, code: str, detail: str) -> str:
    """The ``error`` field: the code, and on /v2 routes the code then the detail, since the Open Inference
    Protocol's clients (tritonclient) show only ``error`` (e.g. "invalid_request: input 'image' element 1: ...")."""
    path = request.url.path
    return f"{code}: {detail}" if path == "/v2" or path.startswith("/v2/") else code


def add_error_handlers(app: FastAPI) -> None:
    """Answer ServiceError, HTTP errors, validation errors and anything unexpected as JSON error bodies."""
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return _error_response(exc.status, _kserve_error(request, exc.error, exc.detail), exc.detail, exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    code = _kserve_error(request, code, str(exc.detail))
    return _error_response(exc.status_code, code, str(exc.detail), _with_head_allowed(dict(exc.headers or {})))


def _with_head_allowed(headers: dict[str, str]) -> dict[str, str]:
    """A 405's ``Allow``: every GET route also answers HEAD (limits.HeadAsGet), so say so."""
    allow = headers.get("Allow") or headers.get("allow")
    if allow is None:
        return headers
    methods = [m.strip() for m in allow.split(",") if m.strip()]
    if "GET" in methods and "HEAD" not in methods:
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = ", ".join([*methods, "HEAD"])
    return headers


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
    return _error_response(422, "invalid_request", "; ".join(parts) or "invalid request")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(500, "internal_error", f"{type(exc).__name__}: the server failed to handle the request")
