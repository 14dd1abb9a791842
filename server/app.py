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

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from tg_tinker.types import ErrorBody

from server.api import (
    artifacts,
    budgets,
    datasets,
    dp_policy,
    evidence,
    futures,
    keys,
    runs,
    samplers,
    tinker,
)
from server.api.deps import ApiResources
from server.api.input_guards import refuse_nul_characters
from server.api.responses import ERROR_RESPONSES
from server.context import ServerContext, build_context
from server.errors import RateLimitError, ServiceError, describe_error
from server.middleware import (
    BodyLimits,
    BodySizeLimitMiddleware,
    BodyTimeout,
    BodyTooLarge,
    RequestLogMiddleware,
    UnhandledErrorMiddleware,
)
from server.services.rate_limits import TenantRateLimiter
from server.settings import Settings
from tensafe.errors import TenSafeError

log = logging.getLogger("tensafe.server")

_HTTP_ERROR_NAMES = {
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    413: "PayloadTooLargeError",
}
#: Bytes a batch request may take per token in all (ids, targets, weights, RL inputs as
#: JSON), plus room for the rest of the request.
BATCH_BYTES_PER_TOKEN = 128
CONFIG_BODY_BYTES = 64 * 1024


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
    response = _json(*describe_error(exc))
    if isinstance(exc, RateLimitError):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


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
    field = "body" if isinstance(exc, BodyTooLarge | BodyTimeout) else None
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


def _render_unexpected(exc: BaseException) -> tuple[int, bytes]:
    status, body = describe_error(exc)
    return status, body.model_dump_json().encode()


#: Tinker-protocol (``/api/v1``) routes whose bodies are small JSON (ids, names, Adam
#: parameters, user metadata): they get the configuration routes' limit.
TINKER_CONFIG_ROUTES = (
    "client/config",
    "create_session",
    "session_heartbeat",
    "sessions/*/finish",
    "telemetry",
    "create_model",
    "get_info",
    "optim_step",
    "save_weights",
    "save_weights_for_sampler",
    "load_weights",
    "tensafe/draw_batch",
    "retrieve_future",
    "weights_info",
    "create_sampling_session",
    "save_weights_external",
    "copy_weights",
    "create_custom_loss",
)


def body_limits(settings: Settings) -> BodyLimits:
    """Request body limits per route: configuration routes (``/v1`` and ``/api/v1``)
    get ``max_metadata_bytes`` plus :data:`CONFIG_BODY_BYTES`; batch routes
    (``forward``/``forward_backward`` on both protocols, Tinker's ``asample``)
    :data:`BATCH_BYTES_PER_TOKEN` per token of ``max_tokens_per_batch``; dataset
    uploads and everything else ``max_body_bytes`` (which also caps the others)."""
    config = min(settings.max_body_bytes, settings.max_metadata_bytes + CONFIG_BODY_BYTES)
    batch = min(
        settings.max_body_bytes,
        settings.max_tokens_per_batch * BATCH_BYTES_PER_TOKEN + CONFIG_BODY_BYTES,
    )
    return BodyLimits(
        max_bytes=settings.max_body_bytes,
        per_route=(
            ("POST /v1/training_runs", config),
            ("POST /v1/training_runs/*/*", config),
            ("POST /v1/training_runs/*/forward", batch),
            ("POST /v1/training_runs/*/forward_backward", batch),
            ("POST /v1/budgets", config),
            ("PATCH /v1/budgets/*", config),
            ("POST /v1/datasets", config),
            ("POST /v1/futures/*/cancel", config),
            ("PUT /v1/dp_policy", config),
            # Tinker protocol: JSON config-sized bodies, except the batches (forward_backward
            # is protobuf, maybe zstd-compressed: the limit is on the wire body; the
            # decompressed size is bounded by the codec) and sampling prompts
            *((f"POST /api/v1/{route}", config) for route in TINKER_CONFIG_ROUTES),
            ("POST /api/v1/forward_backward", batch),
            ("POST /api/v1/asample", batch),
        ),
        idle_timeout_s=settings.body_idle_timeout_s,
        total_timeout_s=settings.body_total_timeout_s,
    )


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
        rate_limiter=(
            None
            if ctx.settings.rate_limit_per_s is None
            else TenantRateLimiter(
                rate=ctx.settings.rate_limit_per_s, burst=ctx.settings.rate_limit_burst
            )
        ),
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
        dependencies=[Depends(refuse_nul_characters)],
    )
    app.state.context = ctx
    app.state.resources = api_resources(ctx)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(TenSafeError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    # innermost first: the last resort answers a 500 without dropping the connection
    app.add_middleware(UnhandledErrorMiddleware, render=_render_unexpected)
    app.add_middleware(BodySizeLimitMiddleware, limits=body_limits(settings))
    app.add_middleware(RequestLogMiddleware)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: ``{"status": "ok"}`` (no authentication)."""
        return {"status": "ok"}

    routers = (
        runs,
        futures,
        artifacts,
        keys,
        budgets,
        dp_policy,
        datasets,
        samplers,
        tinker,
        evidence,
    )
    for module in routers:
        app.include_router(module.router, responses=ERROR_RESPONSES)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tensafe")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = ["api_resources", "body_limits", "create_app", "field_from_loc"]
