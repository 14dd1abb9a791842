"""The HTTP layer under every client: auth, timeouts, retries, error mapping.

One :class:`HTTPCore` per :class:`~tg_tinker.ServiceClient`, shared by its training
clients and futures. It owns a sync ``httpx.Client`` and, lazily, one
``httpx.AsyncClient`` per event loop (an async client cannot outlive its loop, and
users do call ``asyncio.run`` more than once).

Retry policy (the server relies on it; see ``docs/sdk.md``):

* a request that provably never reached the server (connect error/timeout, no
  free connection) is retried whatever its method;
* ``GET`` is idempotent: also retried on any network error and on 502/503/504;
* ``429`` means "refused, nothing applied": retried for every method, honouring
  ``Retry-After``;
* any other failure of a ``POST`` is *not* retried, because it may have been
  applied. Every ``POST`` carries an ``Idempotency-Key`` header (one UUID per
  logical call, the same on each retry) so the server can recognise a repeat.

Backoff is exponential with jitter: 0.25-0.5 s, 0.5-1 s, 1-2 s, ...,
never more than 8 s (``Retry-After`` wins when the server sends it, capped at 60 s).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Generic, TypeVar

import httpx
import pydantic

from tg_tinker._version import __version__
from tg_tinker.errors import (
    APIConnectionError,
    AuthenticationError,
    ServerError,
    TGTinkerError,
    error_class,
    error_from_body,
)
from tg_tinker.types import ErrorBody

M = TypeVar("M", bound=pydantic.BaseModel)

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 8.0
_RETRY_AFTER_CAP = 60.0

# Failures that happen before a single byte of the request left this machine.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures after which an idempotent request may simply be sent again.
_NETWORK = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_IDEMPOTENT = frozenset({"GET", "HEAD"})


def should_retry_exception(method: str, exc: httpx.TransportError) -> bool:
    """Whether a transport failure may be retried without risking a double apply."""
    if isinstance(exc, _NEVER_SENT):
        return True
    return method in _IDEMPOTENT and isinstance(exc, _NETWORK)


def should_retry_status(method: str, status_code: int) -> bool:
    """Whether an error status may be retried without risking a double apply."""
    if status_code == 429:
        return True
    return method in _IDEMPOTENT and status_code in (502, 503, 504)


def retry_after_seconds(response: httpx.Response | None) -> float | None:
    """The ``Retry-After`` header in seconds (delta or HTTP date), if present and sane."""
    if response is None:
        return None
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, response: httpx.Response | None = None) -> float:
    """Seconds to wait before retry number ``attempt + 1``."""
    hinted = retry_after_seconds(response)
    if hinted is not None:
        return min(hinted, _RETRY_AFTER_CAP)
    return min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)


def error_from_response(response: httpx.Response) -> TGTinkerError:
    """The typed exception for a non-2xx response (``ErrorBody`` if the server sent one)."""
    status = response.status_code
    retry_after = retry_after_seconds(response)
    try:
        body = ErrorBody.model_validate_json(response.content)
    except pydantic.ValidationError:
        body = _fallback_body(response)
    error = error_from_body(body, status_code=status, retry_after=retry_after)
    if isinstance(error, AuthenticationError) and status == 401:
        error.message += " (check the API key: api_key= or TG_TINKER_API_KEY)"
    return error


def _fallback_body(response: httpx.Response) -> ErrorBody:
    """An ErrorBody for a response that is not one (a proxy page, FastAPI's default)."""
    status = response.status_code
    detail: str = response.reason_phrase or f"HTTP {status}"
    try:
        payload = json.loads(response.content)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("detail"), str):
        detail = payload["detail"]
    elif response.text.strip():
        detail = f"HTTP {status}: {response.text.strip()[:300]}"
    return ErrorBody(
        error=error_class(None, status).__name__,
        category="server" if status >= 500 else "user",
        detail=detail,
    )


def parse_model(response: httpx.Response, model: type[M]) -> M:
    """Validate a response body into a wire model; a malformed body is a ServerError."""
    try:
        return model.model_validate_json(response.content)
    except pydantic.ValidationError as exc:
        raise ServerError(
            f"unexpected response to {response.request.method} {response.request.url.path}: "
            f"not a valid {model.__name__} ({exc.error_count()} errors)"
        ) from exc


@dataclass(frozen=True)
class RawRequest:
    """One API call described once, for both its sync and its async twin; the
    caller reads the answer itself (:meth:`HTTPCore.send` / :meth:`HTTPCore.asend`).

    The retry policy above follows from ``method``: a ``POST`` gets an
    ``Idempotency-Key`` and is not retried once it may have been applied.
    """

    method: str
    path: str
    body: pydantic.BaseModel | None = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    read_extra: float | None = None  # lengthens the read timeout (long polls)


@dataclass(frozen=True)
class Request(RawRequest, Generic[M]):
    """A :class:`RawRequest` whose answer is validated into ``response``
    (:meth:`HTTPCore.call` / :meth:`HTTPCore.acall`)."""

    response: type[M] = field(kw_only=True)


@dataclass(frozen=True)
class _Outgoing:
    """What goes on the wire for one logical call; every attempt sends the same."""

    method: str
    path: str
    content: bytes | None
    params: Mapping[str, str] | None
    headers: Mapping[str, str]
    timeout: httpx.Timeout


class HTTPCore:
    """Authenticated requests against one server, with the retry policy above."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: float,
        max_retries: int,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": f"tg-tinker/{__version__}",
            "Accept": "application/json",
        }
        self._client = httpx.Client(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )
        if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
            async_transport = transport  # e.g. httpx.MockTransport serves both
        self._async_transport = async_transport
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._async_clients = weakref.WeakKeyDictionary()
        self._closed = False
        # Swappable so tests can observe backoff without waiting.
        self.sleep: Callable[[float], None] = time.sleep
        self.async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # ------------------------------------------------------------------ plumbing
    def _timeout(self, read_extra: float | None) -> httpx.Timeout:
        if read_extra is None:
            return httpx.Timeout(self.timeout)
        return httpx.Timeout(self.timeout, read=self.timeout + read_extra)

    def _outgoing(self, request: RawRequest) -> _Outgoing:
        headers = dict(request.headers or {})
        if request.method == "POST":  # one key per logical call, the same on each retry
            headers.setdefault("Idempotency-Key", uuid.uuid4().hex)
        content = None
        if request.body is not None:
            content = request.body.model_dump_json().encode()
            headers["Content-Type"] = "application/json"
        timeout = self._timeout(request.read_extra)
        return _Outgoing(request.method, request.path, content, request.params, headers, timeout)

    def _build(
        self, client: httpx.Client | httpx.AsyncClient, outgoing: _Outgoing
    ) -> httpx.Request:
        if self._closed:
            raise TGTinkerError("this ServiceClient is closed")
        return client.build_request(
            outgoing.method,
            outgoing.path,
            content=outgoing.content,
            params=outgoing.params,
            headers=outgoing.headers,
            timeout=outgoing.timeout,
        )

    def _delay_after_exception(
        self, outgoing: _Outgoing, attempt: int, exc: httpx.TransportError
    ) -> float:
        """Seconds to wait before retrying after ``exc``; raises if it may not be retried."""
        if attempt < self.max_retries and should_retry_exception(outgoing.method, exc):
            return backoff_delay(attempt)
        raise _connection_error(outgoing.method, outgoing.path, exc) from exc

    def _delay_after_status(
        self, outgoing: _Outgoing, attempt: int, response: httpx.Response
    ) -> float:
        """Seconds to wait before retrying a non-2xx answer; raises if it may not be retried."""
        retryable = should_retry_status(outgoing.method, response.status_code)
        if attempt < self.max_retries and retryable:
            return backoff_delay(attempt, response)
        raise error_from_response(response)

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers,
                timeout=self.timeout,
                transport=self._async_transport,
            )
            self._async_clients[loop] = client
        return client

    # ------------------------------------------------------------------ sync
    def send(self, request: RawRequest, *, stream: bool = False) -> httpx.Response:
        """Send with retries; returns a 2xx response or raises a TGTinkerError.

        With ``stream=True`` the caller must close the response.
        """
        outgoing = self._outgoing(request)
        attempt = 0
        while True:
            try:
                response = self._client.send(self._build(self._client, outgoing), stream=stream)
            except httpx.TransportError as exc:
                delay = self._delay_after_exception(outgoing, attempt, exc)
            else:
                if response.is_success:
                    return response
                try:
                    response.read()
                finally:
                    response.close()
                delay = self._delay_after_status(outgoing, attempt, response)
            self.sleep(delay)
            attempt += 1

    def call(self, request: Request[M]) -> M:
        """Send a described request and validate the answer into its response model."""
        return parse_model(self.send(request), request.response)

    @contextmanager
    def stream(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A streamed ``GET`` whose body the caller reads; always closed afterwards."""
        response = self.send(RawRequest("GET", path, headers=headers), stream=True)
        try:
            yield response
        finally:
            response.close()

    def close(self) -> None:
        """Close the sync client. Async clients are closed by :meth:`aclose`."""
        self._closed = True
        self._client.close()

    # ------------------------------------------------------------------ async
    async def asend(self, request: RawRequest, *, stream: bool = False) -> httpx.Response:
        """Async twin of :meth:`send` (same retry policy)."""
        outgoing = self._outgoing(request)
        client = self._async_client()
        attempt = 0
        while True:
            try:
                response = await client.send(self._build(client, outgoing), stream=stream)
            except httpx.TransportError as exc:
                delay = self._delay_after_exception(outgoing, attempt, exc)
            else:
                if response.is_success:
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                delay = self._delay_after_status(outgoing, attempt, response)
            await self.async_sleep(delay)
            attempt += 1

    async def acall(self, request: Request[M]) -> M:
        """Async twin of :meth:`call`."""
        return parse_model(await self.asend(request), request.response)

    @asynccontextmanager
    async def astream(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        response = await self.asend(RawRequest("GET", path, headers=headers), stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the async client of the running loop and the sync client."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.pop(loop, None)
        if client is not None:
            await client.aclose()
        self.close()


def _connection_error(method: str, path: str, exc: httpx.TransportError) -> APIConnectionError:
    hint = ""
    if method not in _IDEMPOTENT and not isinstance(exc, _NEVER_SENT):
        hint = " (the request may have reached the server; check the run before resubmitting)"
    kind = type(exc).__name__
    return APIConnectionError(f"{method} {path} failed: {kind}: {exc}{hint}")
