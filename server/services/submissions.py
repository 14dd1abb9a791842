"""The one submit path of the training operations (forward, forward_backward,
optim_step, save_state, load_state, save_weights_for_sampler, unload).

Each operation has a submission check (:data:`_CHECKS`): it validates what it can
without the run at once — a 422 before anything else — and returns the check of
what depends on the run, which :func:`~server.services.operations.submit_operation`
runs before anything is stored. Batches are stored as a summary only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tg_tinker.types import (
    DrawBatchRequest,
    ForwardBackwardRequest,
    FutureRef,
    LoadStateRequest,
    OptimStepRequest,
    SaveStateRequest,
    SaveWeightsForSamplerRequest,
)

from server.db.models import TrainingRunRow
from server.db.session import Database
from server.errors import ConflictError, ValidationError
from server.queue import OperationQueue
from server.services import artifacts as artifact_service
from server.services.capacity import (
    check_batch_capacity,
    check_operation_capacity,
    request_size,
)
from server.services.operations import OPERATIONS, RunCheck, submit_operation
from server.services.wire import adam_params, batch_summary, validate_batch_request
from server.settings import Settings
from tensafe.artifacts.manifest import MAX_METADATA_BYTES
from tensafe.losses import BatchLimits

OperationRequest = (
    ForwardBackwardRequest
    | OptimStepRequest
    | SaveStateRequest
    | LoadStateRequest
    | SaveWeightsForSamplerRequest
    | DrawBatchRequest
    | None
)


@dataclass(frozen=True)
class _Submission:
    db: Database
    settings: Settings
    tenant_id: str


def submit_training_operation(
    db: Database,
    queue: OperationQueue,
    *,
    settings: Settings,
    tenant_id: str,
    run_id: str,
    operation: str,
    request: OperationRequest,
    idempotency_key: str | None,
) -> FutureRef:
    """Check ``request`` for ``operation``, then commit and queue it on the tenant's run.

    Raises:
        ValidationError, InvalidBatchError, ConfigError: the request is invalid (422);
            nothing is queued.
        NotFoundError: no such run for this tenant.
        ConflictError: the run takes no more operations; a checkpoint name is taken;
            the idempotency key was used for another request.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    build = _CHECKS.get(operation)
    check = None if build is None else build(_Submission(db, settings, tenant_id), request)
    stored = batch_summary(request) if isinstance(request, ForwardBackwardRequest) else None
    return submit_operation(
        db,
        queue,
        tenant_id=tenant_id,
        run_id=run_id,
        operation=operation,
        request=request,
        idempotency_key=idempotency_key,
        validate=check,
        stored_request=stored,  # the batch itself is never stored
    )


def _batch_check(sub: _Submission, request: ForwardBackwardRequest) -> RunCheck:
    limits = BatchLimits(
        max_batch_size=sub.settings.max_batch_size, max_seq_len=sub.settings.max_seq_len
    )
    _form, _examples, tokens = request_size(request)
    if tokens is not None and tokens > sub.settings.max_tokens_per_batch:
        # the cap needs no run: refuse before any lookup (and before any tensor is built)
        check_operation_capacity(
            tokens=tokens, model_ref="", vocab_size=None, settings=sub.settings
        )

    def check(run: TrainingRunRow) -> None:
        check_batch_capacity(request, run=run, settings=sub.settings)
        validate_batch_request(request, vocab_size=run.vocab_size, limits=limits)

    return check


def _optim_check(_sub: _Submission, request: OptimStepRequest) -> RunCheck:
    adam_params(request)  # 422 on bad hyperparameters before queuing

    def check(run: TrainingRunRow) -> None:
        if run.dp_enabled and not request.apply_dp_noise:
            raise ValidationError(
                "this run uses differential privacy; every step adds noise",
                field="apply_dp_noise",
            )

    return check


def _name_check(sub: _Submission, *, kind: str, name: str | None) -> RunCheck:
    def check(run: TrainingRunRow) -> None:
        if name is None:
            return
        path = artifact_service.artifact_path(run_id=run.run_id, kind=kind, name=name)  # type: ignore[arg-type]
        with sub.db.sessions() as session:
            if artifact_service.name_taken(session, path=path):
                raise ConflictError(
                    f"run {run.run_id} already has a checkpoint named {name!r} ({path})",
                    field="name",
                )

    return check


def _save_state_check(sub: _Submission, request: SaveStateRequest) -> RunCheck:
    if len(json.dumps(request.metadata)) > MAX_METADATA_BYTES:
        raise ValidationError(
            f"must be at most {MAX_METADATA_BYTES} bytes as JSON", field="metadata"
        )
    return _name_check(sub, kind="training_state", name=request.name)


def _sampler_weights_check(sub: _Submission, request: SaveWeightsForSamplerRequest) -> RunCheck:
    return _name_check(sub, kind="lora_adapter", name=request.name)


def _reference_check(sub: _Submission, request: LoadStateRequest) -> RunCheck:
    def check(run: TrainingRunRow) -> None:
        with sub.db.sessions() as session:
            artifact_service.resolve_reference(
                session,
                tenant_id=sub.tenant_id,
                artifact_id=request.artifact_id,
                path=request.path,
            )

    return check


def _draw_check(_sub: _Submission, _request: DrawBatchRequest) -> RunCheck:
    def check(run: TrainingRunRow) -> None:
        if server_sampled(run) is None:
            raise ConflictError(
                f"run {run.run_id} builds its own batches (client-declared sampling); "
                "draw_batch is for runs on a server-held dataset (dp_config.dataset_id)",
                field="run_id",
            )

    return check


def server_sampled(run: TrainingRunRow) -> str | None:
    """The registered dataset a run's batches are drawn from, or ``None``."""
    dp = (run.config or {}).get("dp_config") or {}
    if dp.get("enabled", True) and dp.get("sampling") == "server":
        return str(dp["dataset_id"])
    return None


# Operations without an entry (unload) have nothing to check.
_CHECKS: dict[str, Callable[[_Submission, Any], RunCheck]] = {
    "forward": _batch_check,
    "forward_backward": _batch_check,
    "optim_step": _optim_check,
    "save_state": _save_state_check,
    "load_state": _reference_check,
    "save_weights_for_sampler": _sampler_weights_check,
    "draw_batch": _draw_check,
}

__all__ = ["OperationRequest", "server_sampled", "submit_training_operation"]
