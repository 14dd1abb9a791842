"""The application factory: ``create_app(settings) -> FastAPI``.

Example::

    from server.app import create_app
    from server.settings import Settings
    app = create_app(Settings(data_dir="/srv/tensafe"))   # then: uvicorn, or TestClient(app)

Nothing starts until the app's lifespan begins (migrations, recovery of
interrupted operations, worker threads, expiry sweeper); it all stops when the
lifespan ends. ``create_app`` does not configure logging — ``tensafe serve`` does
(JSON lines).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from tg_tinker.types import ErrorBody

from server.api import artifacts, budgets, datasets, futures, keys, runs, samplers, tinker
from server.api.deps import ApiResources
from server.context import ServerContext, build_context
from server.errors import ServiceError, describe_error
from server.middleware import BodySizeLimitMiddleware, BodyTooLarge, RequestLogMiddleware
from server.settings import Settings
from tensafe.errors import TenSafeError

log = logging.getLogger("tensafe.server")

_HTTP_ERROR_NAMES = {
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "PayloadTooLargeError",
}


def _json(status: int, body: ErrorBody) -> JSONResponse:
    return JSONResponse(status_code=status, content=body.model_dump(mode="json"))


def field_from_loc(loc: tuple[int | str, ...]) -> str | None:
    """``("body", "data", 0, "model_input")`` → ``"data[0].model_input"``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or ("body" if loc and loc[0] == "body" else None)


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    return _json(*describe_error(exc))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    field = field_from_loc(tuple(errors[0].get("loc", ()))) if errors else None
    messages = []
    for error in errors[:5]:
        where = field_from_loc(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid value"))
        messages.append(f"{where}: {message}" if where else message)
    body = ErrorBody(
        error="RequestValidationError",
        category="user",
        detail="; ".join(messages) or "invalid request",
        field=field,
    )
    return _json(422, body)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    field = "body" if isinstance(exc, BodyTooLarge) else None
    body = ErrorBody(
        error=_HTTP_ERROR_NAMES.get(status, "ServerError" if status >= 500 else "ValidationError"),
        category="server" if status >= 500 else "user",
        detail=str(exc.detail),
        field=field,
    )
    response = _json(status, body)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return _json(*describe_error(exc))


def api_resources(ctx: ServerContext) -> ApiResources:
    """The narrow view of the server the routes get (they never see the worker)."""
    return ApiResources(
        settings=ctx.settings,
        db=ctx.db,
        hasher=ctx.hasher,
        queue=ctx.queue,
        notifier=ctx.notifier,
        budgets=ctx.executor.budgets,
        datasets=ctx.executor.datasets,
        keyring=ctx.keyring,
        store=ctx.store,
        tokenizers=ctx.executor,
        sampling=ctx.sampling,
        sample_futures=ctx.sample_futures,
    )


def create_app(settings: Settings, *, context: ServerContext | None = None) -> FastAPI:
    """Build the TenSafe ASGI app for ``settings`` (``context`` for tests that need
    to reach into the server's objects; built from ``settings`` when omitted).

    Raises:
        KeyProviderError: the keyring file is not private or is malformed.
        PermissionError: the API-key pepper file is readable by others.
    """
    ctx = context if context is not None else build_context(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(ctx.start)
        log.info("TenSafe server started (database: %s)", ctx.db.dialect)
        try:
            yield
        finally:
            await run_in_threadpool(ctx.stop)
            log.info("TenSafe server stopped")

    app = FastAPI(
        title="TenSafe",
        summary="Differentially private fine-tuning with encrypted checkpoints.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.context = ctx
    app.state.resources = api_resources(ctx)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(TenSafeError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLogMiddleware)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: ``{"status": "ok"}`` (no authentication)."""
        return {"status": "ok"}

    routers = (runs, futures, artifacts, keys, budgets, datasets, samplers, tinker)
    for module in routers:
        app.include_router(module.router)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tensafe")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = ["api_resources", "create_app", "field_from_loc"]
