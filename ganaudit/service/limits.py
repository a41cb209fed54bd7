"""Pure ASGI middleware for the service's hard limits: body size, API key, request timeout, and metrics; and
HEAD answered as GET without its body.

Each one wraps the next application and answers with the service's JSON error body
``{"error": <code>, "detail": <message>}`` itself, before (or instead of) the application.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Methods counted under their own name in the request metric; any other (free text from a client, counted before
# any authentication) is counted as "other", so a stranger cannot add label series without end.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def error_body(error: str, detail: str) -> dict[str, str]:
    """The one error shape every route uses."""
    return {"error": error, "detail": detail}


async def send_json_error(
    send: Send, status: int, error: str, detail: str, headers: Iterable[tuple[str, str]] = ()
) -> None:
    body = json.dumps(error_body(error, detail), separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    raw = _raw_header(scope, name)
    return None if raw is None else raw.decode("latin-1")


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies above ``max_bytes`` with 413, while they stream in.

    A declared ``Content-Length`` above the limit is refused before the application runs and before any
    byte of the body is read. Otherwise (including chunked bodies, which have no Content-Length) every body
    message is counted as it arrives; the message that crosses the limit raises inside the application's
    ``receive``, whatever the application then sends is dropped, and 413 is answered instead. The rest of
    the body is never read (the server closes the connection).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _detail(self, size: str) -> str:
        return f"request body is {size}, above the {_mb(self.max_bytes)} limit (--max-upload-mb); send fewer or smaller files"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await send_json_error(send, 413, "payload_too_large", self._detail(_mb(int(declared))))
            return

        received = 0
        overflow = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflow = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow:  # the application turned our exception into its own error: drop it
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not overflow:
                raise
        if overflow and not started:
            await send_json_error(send, 413, "payload_too_large", self._detail(f"more than {_mb(self.max_bytes)}"))


class ApiKeyAuth:
    """Require ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` on every path but ``open_paths``.

    Keys are compared with :func:`hmac.compare_digest` (constant time); both headers are always checked, so
    the time taken does not tell which one was sent. Runs before the body is read: an unauthenticated
    client cannot make the service parse an upload.
    """

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Callable[[str], bool]) -> None:
        self.app = app
        self._digest = hashlib.sha256(api_key.encode("utf-8")).digest()
        self._open = open_paths

    def _matches(self, candidate: bytes) -> bool:
        # Hash first so both sides have the same length: compare_digest then leaks nothing, not even the length.
        return hmac.compare_digest(hashlib.sha256(candidate).digest(), self._digest)

    def _ok(self, scope: Scope) -> bool:
        auth = _raw_header(scope, b"authorization") or b""
        scheme, _, token = auth.strip().partition(b" ")
        bearer = token.strip() if scheme.lower() == b"bearer" and token.strip() else None
        header = (_raw_header(scope, b"x-api-key") or b"").strip() or None
        ok_bearer = self._matches(bearer if bearer is not None else b"\0missing")
        ok_header = self._matches(header if header is not None else b"\0missing")
        return (ok_bearer and bearer is not None) or (ok_header and header is not None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or self._open(scope["path"]) or self._ok(scope):
            await self.app(scope, receive, send)
            return
        await send_json_error(
            send, 401, "unauthorized",
            "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            [("www-authenticate", 'Bearer realm="ganaudit"')],
        )  # fmt: skip


class RequestTimeout:
    """Answer 504 when the application has not started its response within ``timeout_s`` seconds.

    The application is cancelled at the deadline; a request waiting in the batcher queue is dropped from it.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = float(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.timeout_s)
        except asyncio.TimeoutError:
            if started:  # the response was under way: nothing sensible left to send
                return
            await send_json_error(
                send, 504, "timeout",
                f"the request took longer than {self.timeout_s:g} s (--timeout-s) and was cancelled",
            )  # fmt: skip


class HeadAsGet:
    """Answer HEAD on every GET route (RFC 9110: the GET's status and headers). FastAPI routes answer GET only,
    so probes and `curl -I` got 405. Innermost, so that the key, the limits and the metrics see HEAD;
    :class:`NoBodyForHead`, outermost, drops the body.

    Paths under ``native_head`` (mounted static files) keep HEAD: they answer it themselves without reading
    the file, where a GET would read all of it for a body that is then dropped."""

    def __init__(self, app: ASGIApp, native_head: tuple[str, ...] = ()) -> None:
        self.app = app
        self.native_head = native_head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD" and not scope["path"].startswith(self.native_head):
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


class NoBodyForHead:
    """No response body for HEAD, whichever layer answered (a route, or a 401 or 413 from the limits), also when
    the server offers the ``http.response.pathsend`` extension for files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            elif message["type"] == "http.response.pathsend":  # a server that sends files itself (ASGI extension)
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app(scope, receive, send_without_body)


class RequestMetrics:
    """Count requests by route template, method and status; time them by route template."""

    def __init__(self, app: ASGIApp, metrics: Any, routes: Callable[[], list[Any]]) -> None:
        self.app = app
        self.metrics = metrics
        self._routes = routes

    def _route(self, scope: Scope) -> str:
        partial = None
        for route in self._routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
            if match == Match.PARTIAL and partial is None:
                partial = getattr(route, "path", None)
        return partial or "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            route = self._route(scope)
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"  # a client's method is free text
            self.metrics.requests.inc(route=route, method=method, status=str(status))
            self.metrics.request_seconds.observe(time.perf_counter() - t0, route=route)
