"""``/v1/training_runs``: create, read, list, heartbeat, info, tokenizer, and the
asynchronous training operations (each answers ``202 FutureRef`` at once)."""

from __future__ import annotations

import json

from fastapi import APIRouter, status
from tg_tinker.types import (
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

from server.api.deps import ContextDep, CurrentTenant, IdempotencyKey, SessionDep
from server.context import ServerContext
from server.db.models import TrainingRunRow
from server.errors import ConflictError, ValidationError
from server.services import artifacts as artifact_service
from server.services import operations, runs
from server.services.operations import RunCheck
from server.services.tenants import AuthenticatedTenant
from server.services.wire import adam_params, batch_summary, validate_batch_request
from tensafe.artifacts.manifest import MAX_METADATA_BYTES
from tensafe.losses import BatchLimits

router = APIRouter(prefix="/v1/training_runs", tags=["training runs"])

_ACCEPTED = {"status_code": status.HTTP_202_ACCEPTED, "response_model": FutureRef}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TrainingRun)
def create_training_run(
    config: TrainingConfig,
    tenant: CurrentTenant,
    context: ContextDep,
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
    spec = runs.engine_spec(config, settings=context.settings)  # 422 before anything else
    if spec.dataset_id is not None:
        with context.db.sessions() as session:
            repeat = runs.run_for_key(
                session, tenant_id=tenant.tenant_id, idempotency_key=idempotency_key
            )
        if repeat is None:  # a retried creation returns its run whatever the budget says now
            sigma = spec.dp.noise_multiplier
            context.executor.budgets.admit_run(
                tenant_id=tenant.tenant_id,
                dataset_id=spec.dataset_id,
                noise_multiplier=sigma,
                sample_rate=None if sigma is None else spec.dp.resolve().sample_rate,
            )
    with context.db.transaction() as session:
        run, load = runs.create_run(
            session,
            tenant_id=tenant.tenant_id,
            config=config,
            settings=context.settings,
            idempotency_key=idempotency_key,
        )
        wire = runs.run_to_wire(run)
    if load is not None:
        operations.enqueue_committed(context.queue, load)
    return wire


@router.get("", response_model=TrainingRunList)
def list_training_runs(tenant: CurrentTenant, session: SessionDep) -> TrainingRunList:
    return TrainingRunList(
        runs=[runs.run_to_wire(r) for r in runs.list_runs(session, tenant_id=tenant.tenant_id)]
    )


@router.get("/{run_id}", response_model=TrainingRun)
def get_training_run(run_id: str, tenant: CurrentTenant, session: SessionDep) -> TrainingRun:
    return runs.run_to_wire(runs.get_run(session, tenant_id=tenant.tenant_id, run_id=run_id))


@router.post("/{run_id}/heartbeat", response_model=TrainingRun)
def heartbeat(run_id: str, tenant: CurrentTenant, session: SessionDep) -> TrainingRun:
    run = runs.heartbeat(session, tenant_id=tenant.tenant_id, run_id=run_id)
    session.commit()
    return runs.run_to_wire(run)


@router.get("/{run_id}/info", response_model=GetInfoResponse)
def get_info(run_id: str, tenant: CurrentTenant, session: SessionDep) -> GetInfoResponse:
    return runs.run_info(runs.get_run(session, tenant_id=tenant.tenant_id, run_id=run_id))


@router.get("/{run_id}/tokenizer", response_model=TokenizerFiles)
def get_tokenizer(run_id: str, tenant: CurrentTenant, context: ContextDep) -> TokenizerFiles:
    """The run's tokenizer files (once its model has been loaded)."""
    with context.db.sessions() as session:
        run = runs.get_run(session, tenant_id=tenant.tenant_id, run_id=run_id)
        model_name = run.model_name
    files = context.executor.tokenizer_files(run_id, model_name=model_name)
    if files is None:
        raise ConflictError(
            "the run's model is not loaded yet (it loads when the run is created); retry shortly",
            field="run_id",
        )
    return TokenizerFiles(files=files)


def _submit(
    context: ServerContext,
    tenant: AuthenticatedTenant,
    run_id: str,
    operation: str,
    request: ForwardBackwardRequest
    | OptimStepRequest
    | SaveStateRequest
    | LoadStateRequest
    | SaveWeightsForSamplerRequest
    | None,
    idempotency_key: str | None,
    validate: RunCheck | None = None,
) -> FutureRef:
    """Queue ``operation`` on the tenant's run and answer its ``FutureRef``.

    ``validate`` is checked against the run when the operation is submitted: if it
    raises, nothing is queued."""
    stored = None
    if isinstance(request, ForwardBackwardRequest):
        stored = batch_summary(request)  # the batch itself is never stored
    return operations.submit_operation(
        context.db,
        context.queue,
        tenant_id=tenant.tenant_id,
        run_id=run_id,
        operation=operation,
        request=request,
        idempotency_key=idempotency_key,
        validate=validate,
        stored_request=stored,
    )


# ----------------------------------------------------------------- checks
# Each builder validates what it can without the run at once (a 422 before
# queuing) and returns the check of what depends on the run.
def _batch_check(context: ServerContext, request: ForwardBackwardRequest) -> RunCheck:
    limits = BatchLimits(
        max_batch_size=context.settings.max_batch_size, max_seq_len=context.settings.max_seq_len
    )

    def check(run: TrainingRunRow) -> None:
        validate_batch_request(request, vocab_size=run.vocab_size, limits=limits)

    return check


def _optim_check(request: OptimStepRequest) -> RunCheck:
    adam_params(request)  # 422 on bad hyperparameters before queuing

    def check(run: TrainingRunRow) -> None:
        if run.dp_enabled and not request.apply_dp_noise:
            raise ValidationError(
                "this run uses differential privacy; every step adds noise",
                field="apply_dp_noise",
            )

    return check


def _name_check(context: ServerContext, *, kind: str, name: str | None) -> RunCheck:
    def check(run: TrainingRunRow) -> None:
        if name is None:
            return
        path = artifact_service.artifact_path(run_id=run.run_id, kind=kind, name=name)  # type: ignore[arg-type]
        with context.db.sessions() as session:
            if artifact_service.name_taken(session, path=path):
                raise ConflictError(
                    f"run {run.run_id} already has a checkpoint named {name!r} ({path})",
                    field="name",
                )

    return check


def _save_state_check(context: ServerContext, request: SaveStateRequest) -> RunCheck:
    if len(json.dumps(request.metadata)) > MAX_METADATA_BYTES:
        raise ValidationError(
            f"must be at most {MAX_METADATA_BYTES} bytes as JSON", field="metadata"
        )
    return _name_check(context, kind="training_state", name=request.name)


def _reference_check(
    context: ServerContext, tenant: AuthenticatedTenant, request: LoadStateRequest
) -> RunCheck:
    def check(run: TrainingRunRow) -> None:
        with context.db.sessions() as session:
            artifact_service.resolve_reference(
                session,
                tenant_id=tenant.tenant_id,
                artifact_id=request.artifact_id,
                path=request.path,
            )

    return check


# ----------------------------------------------------------------- operations
@router.post("/{run_id}/forward", **_ACCEPTED)
def forward(
    run_id: str,
    request: ForwardBackwardRequest,
    tenant: CurrentTenant,
    context: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Loss and log-probabilities without gradients → ``ForwardBackwardOutput``."""
    check = _batch_check(context, request)
    return _submit(context, tenant, run_id, "forward", request, idempotency_key, check)


@router.post("/{run_id}/forward_backward", **_ACCEPTED)
def forward_backward(
    run_id: str,
    request: ForwardBackwardRequest,
    tenant: CurrentTenant,
    context: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Add clipped per-example gradients to the logical batch → ``ForwardBackwardOutput``."""
    check = _batch_check(context, request)
    return _submit(context, tenant, run_id, "forward_backward", request, idempotency_key, check)


@router.post("/{run_id}/optim_step", **_ACCEPTED)
def optim_step(
    run_id: str,
    tenant: CurrentTenant,
    context: ContextDep,
    request: OptimStepRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Noise (DP), optimizer step, accountant step → ``OptimStepResponse``."""
    request = request or OptimStepRequest()
    check = _optim_check(request)
    return _submit(context, tenant, run_id, "optim_step", request, idempotency_key, check)


@router.post("/{run_id}/save_state", **_ACCEPTED)
def save_state(
    run_id: str,
    tenant: CurrentTenant,
    context: ContextDep,
    request: SaveStateRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Encrypted training-state checkpoint → ``SaveStateResponse``."""
    request = request or SaveStateRequest()
    check = _save_state_check(context, request)
    return _submit(context, tenant, run_id, "save_state", request, idempotency_key, check)


@router.post("/{run_id}/load_state", **_ACCEPTED)
def load_state(
    run_id: str,
    request: LoadStateRequest,
    tenant: CurrentTenant,
    context: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Restore weights and optimizer from a training-state checkpoint (this run's or
    another run's of the same model) → ``LoadStateResponse``."""
    check = _reference_check(context, tenant, request)
    return _submit(context, tenant, run_id, "load_state", request, idempotency_key, check)


@router.post("/{run_id}/save_weights_for_sampler", **_ACCEPTED)
def save_weights_for_sampler(
    run_id: str,
    request: SaveWeightsForSamplerRequest,
    tenant: CurrentTenant,
    context: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Encrypted LoRA adapter (peft-loadable) or full weights
    → ``SaveWeightsForSamplerResponse``."""
    check = _name_check(context, kind="lora_adapter", name=request.name)
    return _submit(
        context, tenant, run_id, "save_weights_for_sampler", request, idempotency_key, check
    )


@router.post("/{run_id}/unload", **_ACCEPTED)
def unload(
    run_id: str,
    tenant: CurrentTenant,
    context: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> FutureRef:
    """Free the run's model after its queued operations; checkpoints stay
    → ``UnloadModelResponse``."""
    return _submit(context, tenant, run_id, "unload", None, idempotency_key)


__all__ = ["router"]
