"""ASGI middleware: request ids and the request log, the request body limits, and the
last-resort 500.

All are plain ASGI (no body buffering). The size limit answers 413 from the
``Content-Length`` header before anything is read; a body sent without one
(chunked) is counted as it streams and cut off at the limit. The limit depends on
the route (:class:`BodyLimits`): small for configuration, larger for batches. A body
that stalls (no bytes for ``idle_timeout_s``, or not complete within
``total_timeout_s``) is answered 408 and the connection closed.

:class:`UnhandledErrorMiddleware` turns an exception no handler took into the opaque
500 ``ErrorBody`` *without* re-raising it, so the server keeps the client's
keep-alive connection (Starlette's outermost handler re-raises, and the server then
drops the connection).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.json_logs import request_context

log = logging.getLogger("tensafe.server.request")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestLogMiddleware:
    """Gives every request an id (``X-Request-ID``, taken from the request when it is
    well formed), exposes it to log records, and logs one line per request:
    method, path (never the query string), status and duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        context = {"request_id": request_id}
        token = request_context.set(context)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            if path != "/healthz":
                log.info(
                    "%s %s %d",
                    scope.get("method"),
                    path,
                    status,
                    extra={
                        "method": scope.get("method"),
                        "path": path,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
            request_context.reset(token)


class BodyTooLarge(HTTPException):
    """Raised while reading a body past the limit (becomes a 413 ``ErrorBody``; the
    connection is closed, since the rest of the body is never read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413,
            detail=f"request body exceeds the server limit of {limit} bytes for this route",
            headers={"Connection": "close"},
        )
        self.limit = limit


class BodyTimeout(HTTPException):
    """Raised when the client stops sending its body (becomes a 408 ``ErrorBody``; the
    connection is closed)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            status_code=408,
            detail=f"the request body did not arrive in time (limit {seconds:g} s); resend it",
            headers={"Connection": "close"},
        )


def _error_response(
    status: int, error: str, detail: str, field: str | None
) -> tuple[dict[str, Any], bytes]:
    body = json.dumps(
        {"error": error, "category": "user", "detail": detail, "field": field}
    ).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, body


def _too_large(limit: int) -> tuple[dict[str, Any], bytes]:
    detail = f"request body exceeds the server limit of {limit} bytes for this route"
    return _error_response(413, "PayloadTooLargeError", detail, "body")


def _timed_out(seconds: float) -> tuple[dict[str, Any], bytes]:
    detail = f"the request body did not arrive in time (limit {seconds:g} s); resend it"
    return _error_response(408, "RequestTimeoutError", detail, "body")


@dataclass(frozen=True)
class BodyLimits:
    """Request body limits: ``max_bytes`` for every route, unless the longest matching
    prefix in ``per_route`` names a smaller (or larger) one; a body must keep arriving
    (a chunk at least every ``idle_timeout_s``) and be complete within
    ``total_timeout_s``."""

    max_bytes: int
    per_route: tuple[tuple[str, int], ...] = ()
    idle_timeout_s: float = 10.0
    total_timeout_s: float = 60.0

    def limit_for(self, method: str, path: str) -> int:
        """The body limit of ``method path`` in bytes."""
        best: tuple[int, int] | None = None
        for pattern, limit in self.per_route:
            want_method, _, prefix = pattern.partition(" ")
            if want_method != method or not _matches(prefix, path):
                continue
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), limit)
        return self.max_bytes if best is None else best[1]


def _matches(pattern: str, path: str) -> bool:
    """``/v1/training_runs/*/forward`` matches ``/v1/training_runs/run_1/forward``."""
    want, got = pattern.strip("/").split("/"), path.strip("/").split("/")
    return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got, strict=True))


class BodySizeLimitMiddleware:
    """Refuse request bodies above the route's limit with 413 (from ``Content-Length``
    before reading, else as the body streams in), and stalled bodies with 408."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: BodyLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limits = limits
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.limit_for(scope.get("method", ""), scope.get("path", ""))
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(send, *_too_large(limit))
            return
        received = 0
        complete = False
        deadline = self.clock() + self.limits.total_timeout_s

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body, only a disconnect can come: wait for it
                return await receive()
            wait = min(self.limits.idle_timeout_s, max(0.0, deadline - self.clock()))
            try:
                message = await asyncio.wait_for(receive(), timeout=wait)
            except TimeoutError:
                raise BodyTimeout(self.limits.total_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            return message

        tracked = _TrackedSend(send)
        try:
            await self.app(scope, guarded_receive, tracked)
        except BodyTooLarge:
            if tracked.started:
                raise
            await _answer(send, *_too_large(limit))
        except BodyTimeout:
            if tracked.started:
                raise
            await _answer(send, *_timed_out(self.limits.total_timeout_s))


class _TrackedSend:
    """``send``, remembering whether the response has started."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


async def _answer(send: Send, start: dict[str, Any], body: bytes) -> None:
    await send(start)
    await send({"type": "http.response.body", "body": body})


class UnhandledErrorMiddleware:
    """The last resort: an exception that reached here becomes ``render(exc)`` — the
    opaque 500 — and is logged with its traceback, but not re-raised, so the server
    keeps the connection open for the client's next request."""

    def __init__(self, app: ASGIApp, *, render: Callable[[BaseException], tuple[int, bytes]]):
        self.app = app
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = _TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if tracked.started:  # too late for an answer: let the server close the connection
                raise
            log.error("unhandled error", exc_info=exc)
            status, body = self.render(exc)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})


__all__ = [
    "BodyLimits",
    "BodySizeLimitMiddleware",
    "BodyTimeout",
    "BodyTooLarge",
    "RequestLogMiddleware",
    "UnhandledErrorMiddleware",
]
