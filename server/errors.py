"""The server's exception tree, and how every error becomes an ``ErrorBody``.

Services raise :class:`ServiceError` subclasses (each also the stdlib error it
refines); the engine and libraries raise :class:`tensafe.errors.TenSafeError`.
:func:`describe_error` maps either to ``(http_status, ErrorBody)``; the same body is
stored in a failed future, so an error looks the same whether it came back from a
request or from a future. Anything else is a 500 ``ServerError`` whose detail names
no internals (the traceback goes to the log only).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from tg_tinker.types import ErrorBody

from tensafe import errors as ts

Category = Literal["user", "server"]


class ServiceError(Exception):
    """Root of the server's own errors.

    Attributes:
        detail: the message sent to the client.
        field: the offending request field, when there is one.
    """

    status_code: ClassVar[int] = 500
    category: ClassVar[Category] = "server"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail, field)
        self.detail = detail
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}" if self.field else self.detail


class ValidationError(ServiceError, ValueError):
    """Bad input; ``field`` names it (422)."""

    status_code = 422
    category = "user"


class PayloadTooLargeError(ValidationError):
    """The request body is above ``max_body_bytes`` (413)."""

    status_code = 413


class AuthenticationError(ServiceError, PermissionError):
    """Missing, malformed, unknown or revoked API key (401)."""

    status_code = 401
    category = "user"


class PermissionDeniedError(ServiceError, PermissionError):
    """A valid API key whose scopes do not allow the action (403); the message names
    the scope needed and the key's scopes (see :mod:`server.services.scopes`)."""

    status_code = 403
    category = "user"


class NotFoundError(ServiceError, LookupError):
    """No such object *for this tenant* (404) — also for other tenants' ids."""

    status_code = 404
    category = "user"


class ResultExpiredError(NotFoundError):
    """A completed operation's result was purged after ``result_ttl_s`` (410); the
    operation itself was applied."""

    status_code = 410


class ConflictError(ServiceError, RuntimeError):
    """Not valid in the current state (409): terminated run, name taken, ..."""

    status_code = 409
    category = "user"


class RateLimitError(ServiceError, RuntimeError):
    """The tenant sent too many requests (429, with ``Retry-After``); nothing was applied.

    Attributes:
        retry_after: whole seconds until a request is allowed again.
    """

    status_code = 429
    category = "user"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (_rate_limit_error, (self.detail, self.retry_after))


def _rate_limit_error(detail: str, retry_after: int) -> RateLimitError:
    return RateLimitError(detail, retry_after=retry_after)


class ServerError(ServiceError, RuntimeError):
    """Our failure (500)."""


class ServiceUnavailableError(ServerError):
    """The server is shutting down or not ready (503)."""

    status_code = 503


class WorkerLostError(ServiceUnavailableError):
    """The worker (a Ray actor) holding the run died or became unreachable (503). The
    operation was not applied; retrying is safe: the next operation rebuilds the run
    from its last checkpoint, with its privacy accounting from the ledger."""


class EngineAheadError(RuntimeError):
    """A run's engine changed (a noisy step, a restored checkpoint) but the change
    could not be committed: the engine is ahead of the database and must be discarded
    (the run is rebuilt from its checkpoint and the ledger). The client sees an opaque
    500. Deliberately not a :class:`ServiceError`: those are clean refusals that leave
    engines untouched."""


# tensafe error class -> HTTP status (the first matching base wins; order matters).
_TENSAFE_STATUS: tuple[tuple[type[ts.TenSafeError], int], ...] = (
    (ts.ArtifactNotFoundError, 404),
    (ts.BudgetExceededError, 409),
    (ts.ConfigError, 422),  # includes InvalidBatchError
    (ts.EngineStateError, 409),
    (ts.PrivacyError, 409),
    (ts.ModelLoadError, 422),
    (ts.IntegrityError, 422),
    (ts.ArtifactFormatError, 422),
)


def describe_error(exc: BaseException) -> tuple[int, ErrorBody]:
    """The HTTP status and wire body for ``exc``.

    ``error`` is the exception class name (the SDK maps it back to its own class),
    except that every artifact failure (integrity or format) is the same opaque
    ``IntegrityError``; server-category tensafe errors and unknown exceptions become
    a generic 500 whose detail reveals nothing about internals.
    """
    if isinstance(exc, ServiceError):
        return exc.status_code, ErrorBody(
            error=type(exc).__name__, category=exc.category, detail=exc.detail, field=exc.field
        )
    if isinstance(exc, ts.IntegrityError | ts.ArtifactFormatError):
        # one opaque answer for every artifact failure: which check failed is a hint
        return 422, ErrorBody(
            error="IntegrityError", category="user", detail=str(ts.IntegrityError())
        )
    if isinstance(exc, ts.TenSafeError) and exc.category == "user":
        status = next((code for cls, code in _TENSAFE_STATUS if isinstance(exc, cls)), 400)
        field = getattr(exc, "field", None)
        detail = getattr(exc, "message", None) or str(exc)
        return status, ErrorBody(
            error=type(exc).__name__, category="user", detail=str(detail), field=field
        )
    return 500, ErrorBody(
        error="ServerError",
        category="server",
        detail="internal server error; the operation was not applied (see the server log)",
    )


def prefix_field(exc: ts.ConfigError, prefix: str) -> ts.ConfigError:
    """The same error with its field under ``prefix`` (``rank`` in the LoRA config
    becomes ``lora_config.rank``)."""
    field = exc.field if exc.field.startswith(prefix + ".") else f"{prefix}.{exc.field}"
    return type(exc)(field, exc.message)


__all__ = [
    "AuthenticationError",
    "Category",
    "ConflictError",
    "EngineAheadError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResultExpiredError",
    "ServerError",
    "ServiceError",
    "ServiceUnavailableError",
    "ValidationError",
    "WorkerLostError",
    "describe_error",
    "prefix_field",
]
