"""``POST /api/v1/retrieve_future``: long-poll one submission, answer in Tinker's shapes.

While the operation runs, the call waits (an in-process notification, no polling) up
to :data:`LONG_POLL_S` — well under the client's 45 s timeout — then answers 408 with
``try_again``, which the client retries at once and quietly. A failed operation is
``200 {"error", "category"}`` (the client raises ``RequestFailedError`` and does not
retry). A completed one is translated from the native result:

* ``load_model`` → ``CreateModelResponse``; ``forward``/``forward_backward`` →
  protobuf ``ForwardBackwardOutput``; ``optim_step`` → ``OptimStepResponse`` (metrics
  ``name:reduction``, with ``dp/epsilon:max`` and ``dp/delta:max`` for DP runs);
  ``save_state`` / ``save_weights_for_sampler`` / ``load_state`` → their responses
  with ``tinker://`` paths; an unnamed ``save_weights_for_sampler``
  (``save_weights_and_get_sampling_client``) also carries the ``sampling_session_id``
  of a sampler of that snapshot;
* ``sample`` (kept in memory, not in the database) → protobuf ``SampleResponse``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from tg_tinker.types import FutureState
from tinker import types as tt

from server.api.deps import DatabaseDep, NotifierDep, SampleFuturesDep, SettingsDep
from server.api.tinker.codec import (
    PROTOBUF,
    encode_forward_backward_output,
    encode_sample_response,
    tinker_metrics,
)
from server.api.tinker.deps import TinkerTenant
from server.api.tinker.sampling import sampler_of_checkpoint
from server.db.models import TrainingRunRow
from server.db.session import Database
from server.services import tinker_models as models
from server.services.artifacts import PATH_SCHEME
from server.services.operations import FINAL_STATUSES, read_future
from server.settings import Settings

#: Name prefix of the sampler checkpoints behind ``save_weights_and_get_sampling_client``.
EPHEMERAL_PREFIX = "tinker-ephemeral-"

router = APIRouter(tags=["tinker: futures"])

LONG_POLL_S = 25.0


def _tinker_path_of(db: Database, native_path: str) -> str:
    """The ``tinker://`` path of a ``tensafe://`` one (native if its run has no model id)."""
    run_id = native_path[len(PATH_SCHEME) :].split("/", 1)[0]
    with db.sessions() as session:
        run = session.get(TrainingRunRow, run_id)
        model_id = None if run is None else models.model_id_of(run)
    if model_id is None:
        return native_path
    return models.tinker_path(model_id=model_id, native_path=native_path)


def optim_metrics(result: dict[str, Any]) -> dict[str, float]:
    """An ``OptimStepResponse``'s metrics, with the DP figures as ``dp/<name>:max``."""
    metrics = tinker_metrics(result.get("metrics") or {})
    metrics.pop("loss:sum", None)
    metrics["step:max"] = float(result["step"])
    metrics["learning_rate:mean"] = float(result["learning_rate"])
    dp = result.get("dp_metrics")
    if dp:
        metrics["dp/epsilon:max"] = float(dp["epsilon_spent"])
        for name in ("delta", "noise_multiplier", "sample_rate", "max_grad_norm", "steps"):
            metrics[f"dp/{name}:max"] = float(dp[name])
        metrics["dp/expected_batch_size:mean"] = float(dp["expected_batch_size"])
    return metrics


def completed_result(
    db: Database, settings: Settings, *, tenant_id: str, state: FutureState
) -> Response:
    """The Tinker answer for a completed native operation."""
    result = state.result or {}
    if state.operation in ("forward", "forward_backward"):
        return Response(content=encode_forward_backward_output(result), media_type=PROTOBUF)
    if state.operation == "sample":
        return Response(content=encode_sample_response(result), media_type=PROTOBUF)
    body: dict[str, Any]
    if state.operation == "load_model":
        with db.sessions() as session:
            run = session.get(TrainingRunRow, state.run_id)
            model_id = None if run is None else models.model_id_of(run)
        body = {"model_id": model_id or state.run_id, "type": "create_model"}
    elif state.operation == "optim_step":
        body = {"metrics": optim_metrics(result)}
    elif state.operation == "save_state":
        body = {"path": _tinker_path_of(db, result["path"]), "type": "save_weights"}
    elif state.operation == "save_weights_for_sampler":
        body = {"path": _tinker_path_of(db, result["path"]), "type": "save_weights_for_sampler"}
        if result["path"].rsplit("/", 1)[-1].startswith(EPHEMERAL_PREFIX):
            body["sampling_session_id"] = sampler_of_checkpoint(
                db, settings, tenant_id=tenant_id, native_path=result["path"]
            )
    elif state.operation == "load_state":
        body = {"path": _tinker_path_of(db, result["path"]), "type": "load_weights"}
    else:  # draw_batch (a TenSafe extension), unload: the native result as it is
        body = dict(result)
    return JSONResponse(body)


def _answer(db: Database, settings: Settings, *, tenant_id: str, state: FutureState) -> Response:
    if state.status == "completed":
        return completed_result(db, settings, tenant_id=tenant_id, state=state)
    if state.status in ("failed", "cancelled"):
        error = state.error
        detail = error.detail if error is not None else f"the operation was {state.status}"
        category = error.category if error is not None else "user"
        return JSONResponse({"error": detail, "category": category})
    return JSONResponse(
        {"type": "try_again", "request_id": state.future_id, "queue_state": "active"},
        status_code=408,
    )


@router.post("/retrieve_future")
async def retrieve_future(
    body: tt.FutureRetrieveRequest,
    tenant: TinkerTenant,
    db: DatabaseDep,
    notifier: NotifierDep,
    settings: SettingsDep,
    sample_futures: SampleFuturesDep,
) -> Response:
    """The submission's result, its error, or (after a wait) 408 ``try_again``."""
    wait = min(LONG_POLL_S, settings.long_poll_max_s)
    tenant_id = tenant.tenant_id

    def read() -> FutureState:
        state = sample_futures.read(tenant_id=tenant_id, future_id=body.request_id)
        return state or read_future(db, tenant_id=tenant_id, future_id=body.request_id)

    waiter = notifier.register(body.request_id)  # before reading: no missed wake-up
    try:
        state = await run_in_threadpool(read)
        if state.status not in FINAL_STATUSES and wait > 0:
            await waiter.wait(wait)
            state = await run_in_threadpool(read)
    finally:
        notifier.unregister(waiter)
    return await run_in_threadpool(_answer, db, settings, tenant_id=tenant_id, state=state)


__all__ = ["EPHEMERAL_PREFIX", "LONG_POLL_S", "completed_result", "optim_metrics", "router"]
