"""``/v1/training_runs``: create, read, list, heartbeat, info, tokenizer, and the
asynchronous training operations (each answers ``202 FutureRef`` at once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, status
from tg_tinker.types import (
    DrawBatchRequest,
    ForwardBackwardRequest,
    FutureRef,
    GetInfoResponse,
    LoadStateRequest,
    OptimStepRequest,
    SaveStateRequest,
    SaveWeightsForSamplerRequest,
    TokenizerFiles,
    TrainingConfig,
    TrainingRun,
    TrainingRunList,
)

from server.api.deps import (
    BudgetsDep,
    CurrentTenant,
    DatabaseDep,
    IdempotencyKey,
    QueueDep,
    SessionDep,
    SettingsDep,
    TokenizersDep,
)
from server.services import runs
from server.services.submissions import OperationRequest, submit_training_operation

router = APIRouter(prefix="/v1/training_runs", tags=["training runs"])

_ACCEPTED = {"status_code": status.HTTP_202_ACCEPTED, "response_model": FutureRef}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TrainingRun)
def create_training_run(
    config: TrainingConfig,
    tenant: CurrentTenant,
    db: DatabaseDep,
    queue: QueueDep,
    budgets: BudgetsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> TrainingRun:
    """Create a run (status ``INITIALIZING``); the worker loads the model and sets
    ``READY`` (or ``ERROR``). Operations may be submitted right away: they queue
    behind the model load.

    A DP run is charged to its dataset's budget (``dp_config.dataset_id``, else the
    tenant's ``default`` dataset): it is refused here with 409 if that dataset has
    no budget (and the server sets no default cap), or if the budget cannot afford
    the run's first step. The check runs before, not inside, the transaction that
    creates the run: its ε evaluation can take a while and must not hold a write lock."""
    return runs.create_training_run(
        db,
        queue,
        budgets,
        tenant_id=tenant.tenant_id,
        config=config,
        settings=settings,
        idempotency_key=idempotency_key,
    )


@router.get("", response_model=TrainingRunList)
def list_training_runs(tenant: CurrentTenant, session: SessionDep) -> TrainingRunList:
    return TrainingRunList(
        runs=[runs.run_to_wire(r) for r in runs.list_runs(session, tenant_id=tenant.tenant_id)]
    )


@router.get("/{run_id}", response_model=TrainingRun)
def get_training_run(run_id: str, tenant: CurrentTenant, session: SessionDep) -> TrainingRun:
    return runs.run_to_wire(runs.get_run(session, tenant_id=tenant.tenant_id, run_id=run_id))


@router.post("/{run_id}/heartbeat", response_model=TrainingRun)
def heartbeat(run_id: str, tenant: CurrentTenant, db: DatabaseDep) -> TrainingRun:
    return runs.record_heartbeat(db, tenant_id=tenant.tenant_id, run_id=run_id)


@router.get("/{run_id}/info", response_model=GetInfoResponse)
def get_info(run_id: str, tenant: CurrentTenant, session: SessionDep) -> GetInfoResponse:
    return runs.run_info(runs.get_run(session, tenant_id=tenant.tenant_id, run_id=run_id))


@router.get("/{run_id}/tokenizer", response_model=TokenizerFiles)
def get_tokenizer(
    run_id: str, tenant: CurrentTenant, db: DatabaseDep, tokenizers: TokenizersDep
) -> TokenizerFiles:
    """The run's tokenizer files (once its model has been loaded)."""
    files = runs.tokenizer_files(db, tokenizers, tenant_id=tenant.tenant_id, run_id=run_id)
    return TokenizerFiles(files=files)


# ----------------------------------------------------------------- operations
# The seven operation routes share one submit path: submit_training_operation checks
# the request for its operation (a 422 before queuing), commits and queues it.
Submit = Callable[[str, str, OperationRequest, str | None], FutureRef]


def get_submit(
    tenant: CurrentTenant, db: DatabaseDep, queue: QueueDep, settings: SettingsDep
) -> Submit:
    """``submit(run_id, operation, request, idempotency_key)`` for the caller's tenant."""

    def submit(
        run_id: str, operation: str, request: OperationRequest, idempotency_key: str | None
    ) -> FutureRef:
        return submit_training_operation(
            db,
            queue,
            settings=settings,
            tenant_id=tenant.tenant_id,
            run_id=run_id,
            operation=operation,
            request=request,
            idempotency_key=idempotency_key,
        )

    return submit


SubmitDep = Annotated[Submit, Depends(get_submit)]


@router.post("/{run_id}/forward", **_ACCEPTED)
def forward(
    run_id: str,
    request: ForwardBackwardRequest,
    submit: SubmitDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Loss and log-probabilities without gradients → ``ForwardBackwardOutput``."""
    return submit(run_id, "forward", request, idempotency_key)


@router.post("/{run_id}/forward_backward", **_ACCEPTED)
def forward_backward(
    run_id: str,
    request: ForwardBackwardRequest,
    submit: SubmitDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Add clipped per-example gradients to the logical batch → ``ForwardBackwardOutput``."""
    return submit(run_id, "forward_backward", request, idempotency_key)


@router.post("/{run_id}/optim_step", **_ACCEPTED)
def optim_step(
    run_id: str,
    submit: SubmitDep,
    request: OptimStepRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Noise (DP), optimizer step, accountant step → ``OptimStepResponse``."""
    return submit(run_id, "optim_step", request or OptimStepRequest(), idempotency_key)


@router.post("/{run_id}/save_state", **_ACCEPTED)
def save_state(
    run_id: str,
    submit: SubmitDep,
    request: SaveStateRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Encrypted training-state checkpoint → ``SaveStateResponse``."""
    return submit(run_id, "save_state", request or SaveStateRequest(), idempotency_key)


@router.post("/{run_id}/load_state", **_ACCEPTED)
def load_state(
    run_id: str,
    request: LoadStateRequest,
    submit: SubmitDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Restore weights and optimizer from a training-state checkpoint (this run's or
    another run's of the same model) → ``LoadStateResponse``."""
    return submit(run_id, "load_state", request, idempotency_key)


@router.post("/{run_id}/save_weights_for_sampler", **_ACCEPTED)
def save_weights_for_sampler(
    run_id: str,
    request: SaveWeightsForSamplerRequest,
    submit: SubmitDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Encrypted LoRA adapter (peft-loadable) or full weights
    → ``SaveWeightsForSamplerResponse``."""
    return submit(run_id, "save_weights_for_sampler", request, idempotency_key)


@router.post("/{run_id}/draw_batch", **_ACCEPTED)
def draw_batch(
    run_id: str,
    submit: SubmitDep,
    request: DrawBatchRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """The server draws the next logical batch from the run's server-held dataset
    (Poisson, rate q, from its CSPRNG) → ``DrawnBatch``. One ``optim_step`` consumes it."""
    return submit(run_id, "draw_batch", request or DrawBatchRequest(), idempotency_key)


@router.post("/{run_id}/unload", **_ACCEPTED)
def unload(run_id: str, submit: SubmitDep, idempotency_key: IdempotencyKey = None) -> FutureRef:
    """Free the run's model after its queued operations; checkpoints stay
    → ``UnloadModelResponse``."""
    return submit(run_id, "unload", None, idempotency_key)


__all__ = ["router"]
