"""``/v1/futures``: long-poll an operation's state; cancel a queued one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from tg_tinker.types import CancelResponse, FutureState

from server.api.deps import (
    CurrentTenant,
    DatabaseDep,
    NotifierDep,
    SampleFuturesDep,
    SettingsDep,
)
from server.db.session import Database
from server.services.operations import FINAL_STATUSES, cancel_future, read_future
from server.services.sample_futures import SampleFutures

router = APIRouter(prefix="/v1/futures", tags=["futures"])


@router.get("/{future_id}", response_model=FutureState)
async def get_future(
    future_id: str,
    tenant: CurrentTenant,
    db: DatabaseDep,
    notifier: NotifierDep,
    settings: SettingsDep,
    sample_futures: SampleFuturesDep,
    wait: Annotated[
        float,
        Query(
            ge=0, description="Seconds to wait for the operation to finish (capped by the server)."
        ),
    ] = 0.0,
) -> FutureState:
    """The future's state; with ``wait`` > 0, returns as soon as it is completed,
    failed or cancelled, or when the (capped) wait ends — whichever comes first.

    The wait is an in-process notification from the worker, not a polling loop; no
    database session is held while waiting. Sampling futures (kept in memory, see
    :mod:`server.services.sample_futures`) are read the same way.
    """
    wait = min(wait, settings.long_poll_max_s)
    waiter = notifier.register(future_id)  # before reading: no missed wake-up
    try:
        state = await run_in_threadpool(
            _read, db, sample_futures, tenant_id=tenant.tenant_id, future_id=future_id
        )
        if state.status in FINAL_STATUSES or wait <= 0:
            return state
        await waiter.wait(wait)
        return await run_in_threadpool(
            _read, db, sample_futures, tenant_id=tenant.tenant_id, future_id=future_id
        )
    finally:
        notifier.unregister(waiter)


def _read(
    db: Database, sample_futures: SampleFutures, *, tenant_id: str, future_id: str
) -> FutureState:
    state = sample_futures.read(tenant_id=tenant_id, future_id=future_id)
    return state or read_future(db, tenant_id=tenant_id, future_id=future_id)


@router.post("/{future_id}/cancel", response_model=CancelResponse)
def cancel(
    future_id: str,
    tenant: CurrentTenant,
    db: DatabaseDep,
    notifier: NotifierDep,
    sample_futures: SampleFuturesDep,
) -> CancelResponse:
    """Cancel the operation if it is still queued (a running one cannot be stopped)."""
    response = sample_futures.cancel(tenant_id=tenant.tenant_id, future_id=future_id)
    if response is None:
        response = cancel_future(db, tenant_id=tenant.tenant_id, future_id=future_id)
    if response.cancelled:
        notifier.notify(future_id)
    return response


__all__ = ["router"]
