"""``/v1/futures``: long-poll an operation's state; cancel a queued one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from tg_tinker.types import CancelResponse, FutureState

from server.api.deps import CurrentTenant, DatabaseDep, NotifierDep, SettingsDep
from server.services.operations import FINAL_STATUSES, cancel_future, read_future

router = APIRouter(prefix="/v1/futures", tags=["futures"])


@router.get("/{future_id}", response_model=FutureState)
async def get_future(
    future_id: str,
    tenant: CurrentTenant,
    db: DatabaseDep,
    notifier: NotifierDep,
    settings: SettingsDep,
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
    database session is held while waiting.
    """
    wait = min(wait, settings.long_poll_max_s)
    waiter = notifier.register(future_id)  # before reading: no missed wake-up
    try:
        state = await run_in_threadpool(
            read_future, db, tenant_id=tenant.tenant_id, future_id=future_id
        )
        if state.status in FINAL_STATUSES or wait <= 0:
            return state
        await waiter.wait(wait)
        return await run_in_threadpool(
            read_future, db, tenant_id=tenant.tenant_id, future_id=future_id
        )
    finally:
        notifier.unregister(waiter)


@router.post("/{future_id}/cancel", response_model=CancelResponse)
def cancel(
    future_id: str, tenant: CurrentTenant, db: DatabaseDep, notifier: NotifierDep
) -> CancelResponse:
    """Cancel the operation if it is still queued (a running one cannot be stopped)."""
    response = cancel_future(db, tenant_id=tenant.tenant_id, future_id=future_id)
    if response.cancelled:
        notifier.notify(future_id)
    return response


__all__ = ["router"]
