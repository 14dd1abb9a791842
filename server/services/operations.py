"""Operations (futures): submit, read, cancel, and their status transitions.

Life of an operation: ``pending`` (committed and queued) → ``running`` (claimed by
the worker with a conditional update, so a concurrent cancel and a claim cannot
both win) → ``completed`` (result) or ``failed`` (an ``ErrorBody``); or
``pending`` → ``cancelled``. Final states never change again.

Training data is never stored: the batch of a ``forward``/``forward_backward``
travels to the worker in memory only, and the ``request`` column keeps a summary
(loss, example and token counts). Operations left queued by a previous process are
failed at start rather than replayed, so nothing needs the batch afterwards. Other
requests (optimizer hyperparameters, checkpoint names and metadata) are stored as sent.
Results (losses, per-token values, metrics) are purged ``result_ttl_s`` after
completion (:func:`purge_results`, run by the sweeper); reading one afterwards is a
410 (:class:`~server.errors.ResultExpiredError`).

Idempotency: a submission may carry an ``Idempotency-Key`` (the SDK sends one per
logical call). A repeat with the same key on the same run returns the original
future and queues nothing; the same key with a different request is a 409.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import null, select, update
from sqlalchemy.orm import Session
from tg_tinker.types import CancelResponse, ErrorBody, FutureRef, FutureState

from server.db.models import OperationRow, TrainingRunRow, utcnow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError, ResultExpiredError
from server.queue import OperationQueue, QueuedOperation
from server.services.runs import LOAD_MODEL, get_run, request_hash

OPERATIONS: tuple[str, ...] = (
    "forward",
    "forward_backward",
    "optim_step",
    "save_state",
    "load_state",
    "save_weights_for_sampler",
    "unload",
    "draw_batch",
)
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

RESTART_ERROR = ErrorBody(
    error="ServerError",
    category="server",
    detail=(
        "the server restarted before this operation finished; it was not applied (submit it again)"
    ),
)

RunCheck = Callable[[TrainingRunRow], None]


def _ref(op: OperationRow) -> FutureRef:
    return FutureRef(future_id=op.future_id, run_id=op.run_id, operation=op.operation, seq=op.seq)


def _repeat(
    session: Session, *, run_id: str, idempotency_key: str | None, digest: str
) -> FutureRef | None:
    """The future of an earlier submission with this key, if any.

    Raises:
        ConflictError: the key was used for a different request.
    """
    if idempotency_key is None:
        return None
    existing = session.scalar(
        select(OperationRow).where(
            OperationRow.run_id == run_id, OperationRow.idempotency_key == idempotency_key
        )
    )
    if existing is None:
        return None
    if existing.request_hash != digest:
        raise ConflictError(
            "this Idempotency-Key was already used for a different request",
            field="Idempotency-Key",
        )
    return _ref(existing)


def submit_operation(
    db: Database,
    queue: OperationQueue,
    *,
    tenant_id: str,
    run_id: str,
    operation: str,
    request: BaseModel | None,
    idempotency_key: str | None,
    validate: RunCheck | None = None,
    stored_request: dict[str, Any] | None = None,
) -> FutureRef:
    """Commit an operation behind the run's earlier ones and queue it.

    ``validate`` sees the run (outside any transaction) and raises to refuse the
    request before anything is stored — bad input leaves no trace.
    ``stored_request`` is what the database keeps instead of the request (a summary
    without training data); the full request goes to the worker in memory.

    Raises:
        NotFoundError: no such run for this tenant.
        ConflictError: the run was unloaded or failed to load; the idempotency key
            was used for another request.
        ValidationError: from ``validate``.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    payload = None if request is None else request.model_dump(mode="json")
    digest = request_hash({"operation": operation, "request": payload})
    with db.sessions() as session:
        snapshot = get_run(session, tenant_id=tenant_id, run_id=run_id)
        session.expunge(snapshot)
        # A repeat is answered before validation: its first attempt may have changed
        # what validation sees (e.g. taken the checkpoint name).
        repeat = _repeat(session, run_id=run_id, idempotency_key=idempotency_key, digest=digest)
    if repeat is not None:
        return repeat
    if validate is not None:
        validate(snapshot)
    with queue.run_lock(run_id):
        with db.transaction() as session:
            run = get_run(session, tenant_id=tenant_id, run_id=run_id)
            repeat = _repeat(session, run_id=run_id, idempotency_key=idempotency_key, digest=digest)
            if repeat is not None:
                return repeat
            refuse_if_closed(run)
            op = OperationRow(
                future_id="fut_" + secrets.token_hex(12),
                run_id=run_id,
                tenant_id=tenant_id,
                seq=run.next_seq,
                operation=operation,
                status="pending",
                request=payload if stored_request is None else stored_request,
                idempotency_key=idempotency_key,
                request_hash=digest,
                created_at=utcnow(),
            )
            run.next_seq += 1
            session.add(op)
        queue.enqueue(run_id, QueuedOperation(op.future_id, payload))
    return _ref(op)


def refuse_if_closed(run: TrainingRunRow) -> None:
    """Raise :class:`ConflictError` if the run takes no more operations."""
    if run.status == "TERMINATED":
        raise ConflictError(
            f"training run {run.run_id} was unloaded; its checkpoints remain available "
            "(create a run and load_state one of them to continue)",
            field="run_id",
        )
    if run.status == "ERROR":
        raise ConflictError(
            f"training run {run.run_id} failed: {run.error or 'unknown error'}", field="run_id"
        )


def get_operation(session: Session, *, tenant_id: str, future_id: str) -> OperationRow:
    """The tenant's operation.

    Raises:
        NotFoundError: no such future for this tenant.
    """
    op = session.get(OperationRow, future_id)
    if op is None or op.tenant_id != tenant_id:
        raise NotFoundError(f"no future {future_id!r}", field="future_id")
    return op


def future_state(op: OperationRow) -> FutureState:
    return FutureState(
        future_id=op.future_id,
        run_id=op.run_id,
        operation=op.operation,
        seq=op.seq,
        status=op.status,  # type: ignore[arg-type]
        result=op.result,
        error=None if op.error is None else ErrorBody.model_validate(op.error),
        created_at=op.created_at,
        completed_at=op.completed_at,
    )


def read_future(db: Database, *, tenant_id: str, future_id: str) -> FutureState:
    """The future's current state, in a short read of its own.

    Raises:
        NotFoundError: no such future for this tenant.
        ResultExpiredError: it completed, but its result was purged (:func:`purge_results`).
    """
    with db.sessions() as session:
        op = get_operation(session, tenant_id=tenant_id, future_id=future_id)
        if op.status == "completed" and op.result is None:
            raise ResultExpiredError(
                f"operation {future_id} ({op.operation}) completed at "
                f"{op.completed_at:%Y-%m-%d %H:%M:%S} UTC and was applied; its result was "
                "purged after the server's result retention period (TENSAFE_RESULT_TTL_S)"
            )
        return future_state(op)


def purge_results(db: Database, *, older_than: timedelta) -> int:
    """Drop the results of operations completed more than ``older_than`` ago; returns
    how many were purged. The operations themselves (status, times, errors) stay."""
    cutoff = utcnow() - older_than
    with db.transaction() as session:
        purged = session.execute(
            update(OperationRow)
            .where(
                OperationRow.status == "completed",
                OperationRow.result.is_not(None),
                OperationRow.completed_at < cutoff,
            )
            .values(result=null())  # SQL NULL, not a JSON null
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    return int(purged)


def cancel_future(db: Database, *, tenant_id: str, future_id: str) -> CancelResponse:
    """Cancel a queued operation; a running or finished one is left alone.

    Raises:
        NotFoundError: no such future for this tenant.
    """
    with db.transaction() as session:
        op = get_operation(session, tenant_id=tenant_id, future_id=future_id)
        if op.status != "pending" or op.operation == LOAD_MODEL:
            return CancelResponse(cancelled=False, status=op.status)  # type: ignore[arg-type]
        changed = session.execute(
            update(OperationRow)
            .where(OperationRow.future_id == future_id, OperationRow.status == "pending")
            .values(status="cancelled", completed_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.refresh(op)
        return CancelResponse(cancelled=bool(changed), status=op.status)  # type: ignore[arg-type]


def claim_operation(db: Database, *, future_id: str) -> OperationRow | None:
    """Mark a pending operation running and its run BUSY; ``None`` if it is no
    longer pending (cancelled)."""
    with db.transaction() as session:
        changed = session.execute(
            update(OperationRow)
            .where(OperationRow.future_id == future_id, OperationRow.status == "pending")
            .values(status="running", started_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not changed:
            return None
        op = session.get(OperationRow, future_id)
        assert op is not None
        run = session.get(TrainingRunRow, op.run_id)
        if run is not None and run.status == "READY":
            run.status = "BUSY"
        return op


def complete_operation(session: Session, op: OperationRow, result: BaseModel) -> None:
    """Record the operation's result and hand its run back (``BUSY`` → ``READY``), in the
    caller's transaction — the one path by which an operation completes, so the
    client sees the result exactly when the operation's effects are committed."""
    row = session.get(OperationRow, op.future_id)
    assert row is not None
    row.status = "completed"
    row.result = result.model_dump(mode="json")
    row.completed_at = utcnow()
    run = session.get(TrainingRunRow, op.run_id)
    if run is not None and run.status == "BUSY":
        run.status = "READY"


def mark_failed(session: Session, op: OperationRow, body: ErrorBody) -> None:
    """Record a typed error (in the caller's transaction)."""
    row = session.get(OperationRow, op.future_id)
    assert row is not None
    row.status = "failed"
    row.error = body.model_dump(mode="json")
    row.completed_at = utcnow()


def fail_interrupted(db: Database) -> list[str]:
    """At start: fail every operation a previous process left pending or running,
    and mark runs that were loading or busy READY (their engines are rebuilt on
    next use). Returns the failed future ids."""
    with db.transaction() as session:
        ops = list(
            session.scalars(
                select(OperationRow).where(OperationRow.status.in_(("pending", "running")))
            )
        )
        error: dict[str, Any] = RESTART_ERROR.model_dump(mode="json")
        now = utcnow()
        for op in ops:
            op.status = "failed"
            op.error = error
            op.completed_at = now
        session.execute(
            update(TrainingRunRow)
            .where(TrainingRunRow.status.in_(("INITIALIZING", "BUSY")))
            .values(status="READY", updated_at=now)
        )
        return [op.future_id for op in ops]


__all__ = [
    "FINAL_STATUSES",
    "OPERATIONS",
    "RESTART_ERROR",
    "cancel_future",
    "claim_operation",
    "complete_operation",
    "fail_interrupted",
    "future_state",
    "get_operation",
    "mark_failed",
    "purge_results",
    "read_future",
    "refuse_if_closed",
    "submit_operation",
]
