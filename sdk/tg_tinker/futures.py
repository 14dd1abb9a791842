"""APIFuture: the handle every training operation returns at once.

The server answers an operation with ``202 FutureRef``; the operation then runs
in submission order on the run's worker. :meth:`APIFuture.result` long-polls
``GET /v1/futures/{id}?wait=S`` (``S`` at most 30 s per request) until the
operation finishes, and turns the outcome into the typed response model, the
typed exception, or :class:`~tg_tinker.FutureCancelledError`.

Attribute forwarding: reading an attribute of the future's declared result type
that the APIFuture itself does not have (``checkpoint.artifact_id`` on an
``APIFuture[SaveStateResponse]``) waits for the result, with no timeout, and reads
it from the result, as in the TenSafe training guide. Any other name (a typo such
as ``fut.reslt``, or a name starting with ``_``) raises :class:`AttributeError` at
once, without asking the server. Use ``.result(timeout=...)`` when you want a bound
on the wait.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pydantic

from tg_tinker._http import Request
from tg_tinker.errors import FutureCancelledError, FutureTimeoutError, ServerError, error_from_body
from tg_tinker.types import CancelResponse, ErrorBody, FutureRef, FutureState

if TYPE_CHECKING:
    from tg_tinker._http import HTTPCore

T = TypeVar("T", bound=pydantic.BaseModel)

MAX_POLL_WAIT = 30.0  # seconds per long-poll request (the server's default cap)
_FINAL = frozenset({"completed", "failed", "cancelled"})
# If the server answers a long poll early without a result, wait this long (doubling
# up to the cap) before asking again, instead of spinning.
_EARLY_GAP = 0.05
_EARLY_GAP_CAP = 1.0


@functools.cache
def _declared_attributes(result_type: type[pydantic.BaseModel]) -> frozenset[str]:
    """The public attributes every instance of ``result_type`` has, known from the class
    alone: its fields, computed fields, and the public methods and properties its own
    classes define (pydantic's ``model_*`` API is not forwarded)."""
    names = set(result_type.model_fields) | set(result_type.model_computed_fields)
    for klass in result_type.__mro__:
        if klass is pydantic.BaseModel:
            break
        names.update(vars(klass))
    return frozenset(n for n in names if not n.startswith(("_", "model_")))


def _wait_param(seconds: float) -> dict[str, str]:
    return {"wait": f"{max(0.0, seconds):.3f}".rstrip("0").rstrip(".") or "0"}


class _PollClock:
    """The timing of one wait for a result, shared by ``result`` and ``result_async``:
    how long each long poll may block, the deadline, and the doubling pause taken
    when the server answers a poll early without a result."""

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._gap = _EARLY_GAP
        self._wait = 0.0
        self._started = 0.0
        self._now = 0.0

    def next_wait(self) -> float:
        """Seconds the next poll may block (starts timing it)."""
        remaining = None if self._deadline is None else self._deadline - time.monotonic()
        self._wait = MAX_POLL_WAIT if remaining is None else max(0.0, min(MAX_POLL_WAIT, remaining))
        self._started = time.monotonic()
        return self._wait

    def expired(self) -> bool:
        """After a poll without a result: whether the deadline has passed."""
        self._now = time.monotonic()
        return self._deadline is not None and self._now >= self._deadline

    def early_pause(self) -> float | None:
        """After a poll that did not expire: seconds to pause before the next one if
        the server answered early, else None (poll again at once)."""
        if self._now - self._started >= self._wait / 2:
            return None
        pause = self._gap if self._deadline is None else min(self._gap, self._deadline - self._now)
        self._gap = min(self._gap * 2, _EARLY_GAP_CAP)
        return max(0.0, pause)


class APIFuture(Generic[T]):
    """The pending result of one server-side operation.

    Example::

        future = tc.forward_backward(batch)       # returns at once
        out = future.result(timeout=120)          # ForwardBackwardOutput
        out = await tc.forward_backward(batch)    # inside async code: await the future

    Futures are created by the clients, never by hand.
    """

    def __init__(
        self,
        http: HTTPCore,
        ref: FutureRef,
        result_type: type[T],
        *,
        on_result: Callable[[FutureRef, T], None] | None = None,
    ) -> None:
        self._http = http
        self._ref = ref
        self._result_type = result_type
        self._on_result = on_result
        self._final: FutureState | None = None
        self._value: T | None = None
        self._cancelled = False

    # ---------------------------------------------------------------- identity
    @property
    def future_id(self) -> str:
        """The server's id for this operation."""
        return self._ref.future_id

    @property
    def run_id(self) -> str:
        """The training run the operation belongs to."""
        return self._ref.run_id

    @property
    def operation(self) -> str:
        """The operation name (``forward_backward``, ``optim_step``, ...)."""
        return self._ref.operation

    @property
    def seq(self) -> int:
        """Position in the run's queue: operations execute in ``seq`` order."""
        return self._ref.seq

    def __repr__(self) -> str:
        known = (
            "cancelled"
            if self._cancelled
            else (self._final.status if self._final else "unresolved")
        )
        return (
            f"APIFuture(operation={self.operation!r}, future_id={self.future_id!r}, "
            f"seq={self.seq}, state={known!r})"
        )

    # ---------------------------------------------------------------- outcome
    def _settle(self, state: FutureState) -> T:
        """The value of a finished future, or raise its error."""
        if state.status == "completed":
            if self._value is None:
                if state.result is None:
                    raise ServerError(f"future {self.future_id} completed without a result")
                try:
                    value = self._result_type.model_validate(state.result)
                except pydantic.ValidationError as exc:
                    expected = self._result_type.__name__
                    raise ServerError(
                        f"future {self.future_id}: result is not a valid {expected}"
                    ) from exc
                if self._on_result is not None:
                    self._on_result(self._ref, value)
                self._value = value
            return self._value
        if state.status == "failed":
            body = state.error or ErrorBody(
                error="ServerError",
                category="server",
                detail="operation failed without an error body",
            )
            raise error_from_body(body)
        raise self._cancelled_error()

    def _cancelled_error(self) -> FutureCancelledError:
        return FutureCancelledError(f"{self.operation} (future {self.future_id}) was cancelled")

    def _timeout_error(self, timeout: float) -> FutureTimeoutError:
        return FutureTimeoutError(
            f"{self.operation} (future {self.future_id}) not finished after {timeout:g}s; it keeps "
            "running on the server: call result() again, or cancel() it"
        )

    def _known(self) -> T | None:
        """Settle from local knowledge only; None if the server must be asked."""
        if self._cancelled:
            raise self._cancelled_error()
        if self._final is not None:
            return self._settle(self._final)
        return None

    def _record(self, state: FutureState) -> bool:
        if state.status in _FINAL:
            self._final = state
            return True
        return False

    def _poll_request(self, wait: float) -> Request[FutureState]:
        path = f"/v1/futures/{self.future_id}"
        return Request("GET", path, response=FutureState, params=_wait_param(wait), read_extra=wait)

    def _cancel_request(self) -> Request[CancelResponse]:
        return Request("POST", f"/v1/futures/{self.future_id}/cancel", response=CancelResponse)

    def _cancel_known(self) -> bool | None:
        """The answer to ``cancel()`` from local knowledge; None if the server must be asked."""
        if self._cancelled:
            return True
        if self._final is not None:
            return False
        return None

    # ---------------------------------------------------------------- sync

    def result(self, timeout: float | None = None) -> T:
        """Wait for the operation and return its typed result.

        Args:
            timeout: seconds to wait in total; ``None`` waits as long as it takes.

        Raises:
            FutureTimeoutError: ``timeout`` elapsed (the operation keeps running).
            FutureCancelledError: the operation was cancelled.
            TGTinkerError: the operation failed; the subclass the server named
                (``ValidationError``, ``BudgetExceededError``, ...).
        """
        known = self._known()
        if known is not None:
            return known
        clock = _PollClock(timeout)
        while True:
            if self._record(self._http.call(self._poll_request(clock.next_wait()))):
                return self._settle(self._final)  # type: ignore[arg-type]
            if clock.expired():
                raise self._timeout_error(timeout)  # type: ignore[arg-type]
            pause = clock.early_pause()
            if pause is not None:
                self._http.sleep(pause)

    def done(self) -> bool:
        """Whether the operation has finished (completed, failed or cancelled).

        Asks the server (one short request) unless the outcome is already known.
        """
        if self._cancelled or self._final is not None:
            return True
        return self._record(self._http.call(self._poll_request(0.0)))

    def cancel(self) -> bool:
        """Cancel the operation if it is still queued; True if it was cancelled.

        An operation that already started or finished cannot be cancelled.
        """
        known = self._cancel_known()
        if known is not None:
            return known
        return self._after_cancel(self._http.call(self._cancel_request()))

    def _after_cancel(self, answer: CancelResponse) -> bool:
        if answer.cancelled or answer.status == "cancelled":
            self._cancelled = True
            return True
        return False

    # ---------------------------------------------------------------- async
    async def result_async(self, timeout: float | None = None) -> T:
        """Async twin of :meth:`result`; ``await future`` is the same with no timeout."""
        known = self._known()
        if known is not None:
            return known
        clock = _PollClock(timeout)
        while True:
            if self._record(await self._http.acall(self._poll_request(clock.next_wait()))):
                return self._settle(self._final)  # type: ignore[arg-type]
            if clock.expired():
                raise self._timeout_error(timeout)  # type: ignore[arg-type]
            pause = clock.early_pause()
            if pause is not None:
                await self._http.async_sleep(pause)

    async def cancel_async(self) -> bool:
        """Async twin of :meth:`cancel`."""
        known = self._cancel_known()
        if known is not None:
            return known
        return self._after_cancel(await self._http.acall(self._cancel_request()))

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()

    # ---------------------------------------------------------------- forwarding
    def __getattr__(self, name: str) -> Any:
        # Only reached for names the future itself lacks. Whether the result will have
        # ``name`` is known from the declared result type, so anything else (a typo,
        # a private or dunder name probed by copy/pickle/hasattr) fails at once instead
        # of blocking on the server.
        result_type: type[pydantic.BaseModel] = self.__dict__.get(
            "_result_type", pydantic.BaseModel
        )
        if name not in _declared_attributes(result_type):
            raise AttributeError(
                f"neither APIFuture nor {result_type.__name__} has an attribute {name!r}; "
                f"call .result() to get the {result_type.__name__}",
                name=name,
                obj=self,
            )
        return getattr(self.result(), name)


__all__ = ["MAX_POLL_WAIT", "APIFuture"]
