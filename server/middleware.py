"""ASGI middleware: request ids and the request log, and the request body size limit.

Both are plain ASGI (no body buffering). The size limit answers 413 from the
``Content-Length`` header before anything is read; a body sent without one
(chunked) is counted as it streams and cut off at the limit.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
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
    """Raised while reading a body past the limit (becomes a 413 ``ErrorBody``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {limit} bytes")
        self.limit = limit


def _error_response(limit: int) -> tuple[dict[str, Any], bytes]:
    body = json.dumps(
        {
            "error": "PayloadTooLargeError",
            "category": "user",
            "detail": f"request body exceeds the server limit of {limit} bytes",
            "field": "body",
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, body


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with 413, before parsing."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            start, body = _error_response(self.max_bytes)
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            start, body = _error_response(self.max_bytes)
            await send(start)
            await send({"type": "http.response.body", "body": body})


__all__ = ["BodySizeLimitMiddleware", "BodyTooLarge", "RequestLogMiddleware"]
