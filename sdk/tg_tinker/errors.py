"""The one exception tree of the SDK.

Every error the SDK raises on purpose derives from :class:`TGTinkerError`, and
each class also inherits the standard-library error it refines where one fits (a
:class:`ValidationError` is a :class:`ValueError`, a :class:`FutureTimeoutError`
is a :class:`TimeoutError`), so callers may catch either. All classes pickle.

Server errors arrive as ``ErrorBody {error, category, detail, field}``;
:func:`error_from_body` turns one back into the class named by ``error`` (falling
back on the HTTP status code), so ``except NotFoundError`` works the same for an
error raised locally and one raised on the server.
"""

from __future__ import annotations

import concurrent.futures

from tg_tinker.types import ErrorBody


class TGTinkerError(Exception):
    """Root of every SDK error.

    Attributes:
        field: the offending request field, when there is one.
        status_code: the HTTP status of the response that carried the error, if any.
        error_name: the ``error`` name the server sent (may be a server-side class
            name such as ``InvalidBatchError`` that maps onto this class).
        category: ``"user"`` (yours to fix) or ``"server"``, when known.
    """

    def __init__(
        self,
        message: str = "",
        *,
        field: str | None = None,
        status_code: int | None = None,
        error_name: str | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status_code = status_code
        self.error_name = error_name or type(self).__name__
        self.category = category

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class AuthenticationError(TGTinkerError):
    """The API key is missing, wrong or revoked (HTTP 401; also a 403 the server did
    not name)."""


class PermissionDeniedError(AuthenticationError, PermissionError):
    """The API key is valid but its scopes do not allow the call (HTTP 403): e.g. a
    ``train`` key creating or raising a privacy budget, which needs a
    ``privacy-officer`` key. The message names the scope needed. Nothing was changed."""


class NotFoundError(TGTinkerError, LookupError):
    """No such run, future or artifact *for this tenant* (HTTP 404)."""


class ValidationError(TGTinkerError, ValueError):
    """A request or argument is invalid; ``field`` names it (HTTP 400/413/422)."""


class ConflictError(TGTinkerError, RuntimeError):
    """The operation is not valid in the run's current state (HTTP 409)."""


class BudgetExceededError(TGTinkerError, RuntimeError):
    """The step would take ε past the privacy budget; nothing was applied (HTTP 409)."""


class RateLimitError(TGTinkerError):
    """Too many requests (HTTP 429). ``retry_after`` is the server's hint in seconds."""

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: float | None = None,
        field: str | None = None,
        status_code: int | None = None,
        error_name: str | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(
            message, field=field, status_code=status_code, error_name=error_name, category=category
        )
        self.retry_after = retry_after


class ServerError(TGTinkerError, RuntimeError):
    """The server failed (HTTP 5xx) or answered with something the SDK cannot read."""


class WorkerLostError(ServerError):
    """The server's worker holding the run (a Ray actor) died or hung (HTTP 503), and the
    operation was **not applied**; nothing it did survives. Retryable: submit the
    operation again and the server rebuilds the run from its last checkpoint, with its
    privacy accounting from the ledger. Gradients ``forward_backward`` had accumulated
    since the last ``optim_step`` are lost with the worker; the first operation after the
    rebuild says so (:class:`ConflictError`) and the whole logical batch must be
    resubmitted.

    Automatic retries: an operation's failure (how this error usually arrives, from
    ``future.result()``) is never resubmitted by the SDK; resubmit it yourself. A plain
    ``GET`` answered 503 with this error (e.g. reading a run's tokenizer) is retried
    like any 503, up to ``max_retries``, and raises this error only after the last one
    (see :mod:`tg_tinker._http` for the whole policy).

    Example::

        try:
            tc.forward_backward(batch).result()
        except WorkerLostError:
            tc.forward_backward(batch).result()  # rebuilt from the last checkpoint
    """


class APIConnectionError(TGTinkerError, ConnectionError):
    """The server could not be reached, or the connection broke mid-request."""


class FutureTimeoutError(TGTinkerError, TimeoutError):
    """``result(timeout=...)`` elapsed. The operation keeps running on the server:
    call ``result()`` again later, or ``cancel()`` it."""


class FutureCancelledError(TGTinkerError, concurrent.futures.CancelledError):
    """The operation was cancelled before it ran; it has no result."""


class ArtifactIntegrityError(TGTinkerError, ValueError):
    """Downloaded artifact bytes do not match their declared size or SHA-256.

    Deliberately one opaque error; no partial file is left behind when it is raised.
    """


class EvidenceError(TGTinkerError, ValueError):
    """An evidence bundle did not verify (:mod:`tg_tinker.evidence`); the message says
    which check failed, in words (``reason``)."""

    @property
    def reason(self) -> str:
        """Which check failed, in words."""
        return self.message


# Server-side names (``tensafe.errors`` and the server's own) mapped onto ours.
_BY_NAME: dict[str, type[TGTinkerError]] = {
    cls.__name__: cls
    for cls in (
        TGTinkerError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ValidationError,
        ConflictError,
        BudgetExceededError,
        RateLimitError,
        ServerError,
        WorkerLostError,
        APIConnectionError,
        FutureTimeoutError,
        FutureCancelledError,
        ArtifactIntegrityError,
    )
}
_BY_NAME |= {
    "ConfigError": ValidationError,
    "InvalidBatchError": ValidationError,
    "RequestValidationError": ValidationError,
    "PayloadTooLargeError": ValidationError,
    "ArtifactNotFoundError": NotFoundError,
    "ResultExpiredError": NotFoundError,
    "EngineStateError": ConflictError,
    "IntegrityError": ArtifactIntegrityError,
}

_BY_STATUS: dict[int, type[TGTinkerError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    410: NotFoundError,
    409: ConflictError,
    413: ValidationError,
    422: ValidationError,
    429: RateLimitError,
}


def error_class(
    name: str | None, status_code: int | None = None, category: str | None = None
) -> type[TGTinkerError]:
    """The SDK class for a server error name, else for the status code, else the category."""
    if name and name in _BY_NAME:
        return _BY_NAME[name]
    if status_code is not None:
        if status_code in _BY_STATUS:
            return _BY_STATUS[status_code]
        if status_code >= 500:
            return ServerError
    return ServerError if category == "server" else TGTinkerError


def error_from_body(
    body: ErrorBody, *, status_code: int | None = None, retry_after: float | None = None
) -> TGTinkerError:
    """Rebuild the typed exception for an ``ErrorBody`` (from a response or a failed future)."""
    cls = error_class(body.error, status_code, body.category)
    if cls is RateLimitError:
        return RateLimitError(
            body.detail,
            retry_after=retry_after,
            field=body.field,
            status_code=status_code,
            error_name=body.error,
            category=body.category,
        )
    return cls(
        body.detail,
        field=body.field,
        status_code=status_code,
        error_name=body.error,
        category=body.category,
    )


__all__ = [
    "APIConnectionError",
    "ArtifactIntegrityError",
    "AuthenticationError",
    "BudgetExceededError",
    "ConflictError",
    "EvidenceError",
    "FutureCancelledError",
    "FutureTimeoutError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "TGTinkerError",
    "ValidationError",
    "WorkerLostError",
    "error_from_body",
]
