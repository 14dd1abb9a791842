"""Futures of sampling operations, kept in the server's memory.

A ``sample`` or ``compute_logprobs`` changes nothing: no weights, no privacy budget,
no ledger row. So, unlike training operations, its future is not a database row:
:class:`SampleFutures` holds each one from submission until ``retention_s`` after it
finished (at most ``max_entries`` are kept; beyond that the oldest finished ones go
first). A server restart forgets them: polling one
afterwards is a 404, and the client submits again (nothing was applied).

They are read through the same ``GET /v1/futures/{id}`` as training futures
(``FutureState``; ``run_id`` holds the sampler id, ``seq`` counts that sampler's
operations), scoped to the tenant: another tenant's id is unknown. Waiters are woken
through the :class:`~server.queue.FutureNotifier` like training futures.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from tg_tinker.types import CancelResponse, ErrorBody, FutureRef, FutureState

from server.db.models import utcnow
from server.errors import RateLimitError, ServiceUnavailableError, describe_error
from server.queue import FutureNotifier

log = logging.getLogger("tensafe.server.sampling")


@dataclass
class _Entry:
    tenant_id: str
    ref: FutureRef
    created_at: datetime
    status: str = "pending"
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None
    completed_at: datetime | None = None
    finished_mono: float | None = None
    work: Future[BaseModel] | None = field(default=None, repr=False)


class SampleFutures:
    """In-memory futures of sampling operations (thread-safe).

    Example::

        futures = SampleFutures(notifier=notifier)
        ref = futures.track(tenant_id="t1", owner_id="smp_1", operation="sample",
                            work=future_of_a_wire_response)
        futures.read(tenant_id="t1", future_id=ref.future_id)   # FutureState or None

    Args:
        notifier: woken when a future finishes (long polls).
        retention_s: how long a finished future's result is kept.
        max_entries: most futures kept; submitting beyond it while all are still
            running is refused (503) rather than growing without bound.
        max_in_flight_per_tenant: most unfinished operations of one tenant; beyond it
            a submission is refused (429), so one tenant cannot queue without bound.
    """

    def __init__(
        self,
        *,
        notifier: FutureNotifier,
        retention_s: float = 3600.0,
        max_entries: int = 10_000,
        max_in_flight_per_tenant: int = 512,
    ) -> None:
        self._notifier = notifier
        self._retention_s = retention_s
        self._max = max_entries
        self._max_per_tenant = max_in_flight_per_tenant
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._seqs: dict[str, int] = {}
        self._lock = threading.Lock()

    def track(
        self,
        *,
        tenant_id: str,
        owner_id: str,
        operation: str,
        work: Future[BaseModel],
    ) -> FutureRef:
        """Register ``work`` (a running or queued concurrent future of a wire response)
        as a new future of ``owner_id`` (a sampler).

        Raises:
            ServiceUnavailableError: ``max_entries`` futures are still unfinished.
            RateLimitError: the tenant has ``max_in_flight_per_tenant`` unfinished ones.
        """
        with self._lock:
            self._expire()
            running = sum(
                1 for e in self._entries.values() if e.tenant_id == tenant_id and e.work is not None
            )
            if running >= self._max_per_tenant:
                work.cancel()
                raise RateLimitError(
                    f"{running} sampling operations of yours are still running; wait for "
                    "some of them (or cancel them) before submitting more",
                    retry_after=1,
                )
            if len(self._entries) >= self._max:
                self._drop_finished(len(self._entries) - self._max + 1)
            if len(self._entries) >= self._max:
                work.cancel()
                raise ServiceUnavailableError(
                    "too many sampling operations in flight; retry shortly"
                )
            seq = self._seqs.get(owner_id, 0)
            self._seqs[owner_id] = seq + 1
            ref = FutureRef(
                future_id="fut_" + secrets.token_hex(12),
                run_id=owner_id,
                operation=operation,
                seq=seq,
            )
            entry = _Entry(tenant_id=tenant_id, ref=ref, created_at=utcnow(), work=work)
            self._entries[ref.future_id] = entry
        work.add_done_callback(lambda done: self._finish(entry, done))
        return ref

    def read(self, *, tenant_id: str, future_id: str) -> FutureState | None:
        """The future's state, or ``None`` if this tenant has no such sampling future."""
        with self._lock:
            entry = self._entries.get(future_id)
            if entry is None or entry.tenant_id != tenant_id:
                return None
            status = entry.status
            if status == "pending" and entry.work is not None and entry.work.running():
                status = "running"
            return FutureState(
                future_id=entry.ref.future_id,
                run_id=entry.ref.run_id,
                operation=entry.ref.operation,
                seq=entry.ref.seq,
                status=status,  # type: ignore[arg-type]
                result=entry.result,
                error=entry.error,
                created_at=entry.created_at,
                completed_at=entry.completed_at,
            )

    def cancel(self, *, tenant_id: str, future_id: str) -> CancelResponse | None:
        """Cancel a sampling operation that has not started; ``None`` if unknown."""
        with self._lock:
            entry = self._entries.get(future_id)
            if entry is None or entry.tenant_id != tenant_id:
                return None
            work = entry.work
        cancelled = work is not None and work.cancel()
        state = self.read(tenant_id=tenant_id, future_id=future_id)
        status = "cancelled" if cancelled else (state.status if state else "completed")
        return CancelResponse(cancelled=cancelled, status=status)  # type: ignore[arg-type]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # ------------------------------------------------------------------ helpers
    def _finish(self, entry: _Entry, done: Future[BaseModel]) -> None:
        result = error = None
        exc = None if done.cancelled() else done.exception()
        if done.cancelled():
            status = "cancelled"
        elif exc is not None:
            code, error = describe_error(exc)
            status = "failed"
            if code >= 500:
                log.error("sampling operation %s failed", entry.ref.future_id, exc_info=exc)
        else:
            result = done.result().model_dump(mode="json")
            status = "completed"
        with self._lock:
            entry.status = status
            entry.result = result
            entry.error = error
            entry.completed_at = utcnow()
            entry.finished_mono = time.monotonic()
            entry.work = None
        self._notifier.notify(entry.ref.future_id)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._retention_s
        for future_id in [
            fid
            for fid, e in self._entries.items()
            if e.finished_mono is not None and e.finished_mono < cutoff
        ]:
            del self._entries[future_id]

    def _drop_finished(self, count: int) -> None:
        for future_id in [fid for fid, e in self._entries.items() if e.finished_mono is not None][
            :count
        ]:
            del self._entries[future_id]


__all__ = ["SampleFutures"]
