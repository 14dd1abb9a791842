"""Tinker ``/api/v1`` training routes: create_model, get_info, forward_backward
(protobuf), optim_step, save_weights, load_weights (also create-from-state),
save_weights_for_sampler (named). Each submission answers at once with
``{"request_id", "model_id"}`` (an ``UntypedAPIFuture``); the result comes from
``retrieve_future``. They go through the same submit path as ``/v1``
(:func:`~server.services.submissions.submit_training_operation`): DP, budgets,
declared-batch guards, the ledger and encrypted checkpoints apply unchanged.

A submission carrying the client's ``seq_id`` is idempotent per model: the same
``seq_id`` with the same request returns the original future, with another request
it is refused (the client's retries send a fresh ``X-Idempotency-Key`` each time).
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from tg_tinker.types import (
    AdamParams,
    DrawBatchRequest,
    LoadStateRequest,
    OptimStepRequest,
    SaveStateRequest,
    SaveWeightsForSamplerRequest,
    TrainingConfig,
)
from tinker import types as tt

from server.api.deps import BudgetsDep, DatabaseDep, QueueDep, SettingsDep
from server.api.tinker.codec import (
    PROTOBUF,
    decode_forward_backward,
    native_batch_request,
)
from server.api.tinker.deps import TinkerTenant, refusals_are_final
from server.api.tinker.futures import EPHEMERAL_PREFIX
from server.errors import ValidationError
from server.services import runs
from server.services import tinker_models as models
from server.services.dp_policy import get_dp_policy
from server.services.submissions import OperationRequest, submit_training_operation
from server.settings import Settings

router = APIRouter(tags=["tinker: training"])

_NAME = r"^[A-Za-z0-9_.-]+$"


def _future(future_id: str, model_id: str) -> dict[str, Any]:
    return {"request_id": future_id, "model_id": model_id}


class _Submitter:
    """``submit(model_id, seq_id, operation, request)`` for the caller's tenant."""

    def __init__(
        self, tenant: TinkerTenant, db: DatabaseDep, queue: QueueDep, settings: SettingsDep
    ) -> None:
        self.tenant_id = tenant.tenant_id
        self.db, self.queue, self.settings = db, queue, settings

    def __call__(
        self, model_id: str, seq_id: int | None, operation: str, request: OperationRequest
    ) -> dict[str, Any]:
        with self.db.sessions() as session:
            run = models.run_for_model(session, tenant_id=self.tenant_id, model_id=model_id)
        with refusals_are_final():
            ref = submit_training_operation(
                self.db,
                self.queue,
                settings=self.settings,
                tenant_id=self.tenant_id,
                run_id=run.run_id,
                operation=operation,
                request=request,
                idempotency_key=None if seq_id is None else f"tinker-seq:{seq_id}",
            )
        return _future(ref.future_id, model_id)


Submit = Annotated[_Submitter, Depends(_Submitter)]


def _create_run(
    db: DatabaseDep,
    queue: QueueDep,
    budgets: BudgetsDep,
    settings: Settings,
    *,
    tenant_id: str,
    model_id: str,
    config: TrainingConfig,
) -> str:
    """Create (or, on a retry, find) the model's run; its run id."""
    with refusals_are_final():
        created = runs.create_training_run(
            db,
            queue,
            budgets,
            tenant_id=tenant_id,
            config=config,
            settings=settings,
            idempotency_key=models.model_key(model_id),
        )
    return created.run_id


@router.post("/create_model")
def create_model(
    body: tt.CreateModelRequest,
    tenant: TinkerTenant,
    db: DatabaseDep,
    queue: QueueDep,
    budgets: BudgetsDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """A LoRA training run for ``base_model`` (full fine-tuning is not offered on this
    route); its DP settings come from the tenant's DP policy and the session's and the
    request's ``tensafe.dp.*`` metadata (which may only tighten the policy).
    → ``CreateModelResponse`` once the model is loaded."""
    if body.lora_config is None:
        raise ValidationError("give a lora_config (rank)", field="lora_config")
    if body.optimizer_config.type != "adamw":
        raise ValidationError(
            f"optimizer {body.optimizer_config.type!r} is not offered; this server trains with "
            "AdamW",
            field="optimizer_config.type",
        )
    with db.sessions() as session:
        with refusals_are_final():
            owner = models.open_session(
                session, tenant_id=tenant.tenant_id, session_id=body.session_id
            )
        session_metadata = dict(owner.user_metadata)
    metadata = dict(body.user_metadata or {})
    lora = body.lora_config
    config = models.training_config(
        base_model=body.base_model,
        lora_rank=lora.rank,
        seed=lora.seed,
        train_attn=lora.train_attn,
        train_mlp=lora.train_mlp,
        train_unembed=lora.train_unembed,
        dp=models.merged_dp(
            session_metadata,
            metadata,
            defaults=settings.tinker_default_dp,
            policy=get_dp_policy(db, tenant_id=tenant.tenant_id),
        ),
        metadata=metadata,
    )
    model_id = models.model_id_for(session_id=body.session_id, seq=body.model_seq_id)
    run_id = _create_run(
        db, queue, budgets, settings, tenant_id=tenant.tenant_id, model_id=model_id, config=config
    )
    with db.sessions() as session:
        return _future(models.load_future_id(session, run_id=run_id), model_id)


@router.post("/get_info")
def get_info(
    body: tt.GetInfoRequest, tenant: TinkerTenant, db: DatabaseDep, settings: SettingsDep
) -> dict[str, Any]:
    """What the model trains (answered directly, not as a future)."""
    with db.sessions() as session:
        run = models.run_for_model(session, tenant_id=tenant.tenant_id, model_id=body.model_id)
        info = runs.run_info(run)
        config = TrainingConfig.model_validate(run.config)
    tokenizer = models.tokenizer_id(
        model_ref=config.model_ref, override=settings.tinker_tokenizer_id
    )
    return {
        "type": "get_info",
        "model_id": body.model_id,
        "model_data": {
            "arch": info.model_data.arch or None,
            "model_name": config.model_ref,
            "tokenizer_id": tokenizer,
        },
        "model_name": config.model_ref,
        "is_lora": info.is_lora,
        "lora_rank": info.lora_rank,
    }


@router.post("/forward_backward")
async def forward_backward(
    request: Request,
    submit: Submit,
    settings: SettingsDep,
    content_type: Annotated[str | None, Header(alias="Content-Type")] = None,
    content_encoding: Annotated[str | None, Header(alias="Content-Encoding")] = None,
) -> dict[str, Any]:
    """A protobuf ``ForwardBackwardRequest`` (``forward_only`` for ``forward()``):
    clipped per-example gradients into the logical batch → ``ForwardBackwardOutput``
    (protobuf)."""
    if (content_type or "").split(";")[0].strip().lower() != PROTOBUF:
        raise ValidationError(
            f"send the batch as {PROTOBUF} (a tinker_public.ForwardBackwardRequest), "
            f"not {content_type or 'no content type'}",
            field="Content-Type",
        )
    message = decode_forward_backward(
        await request.body(), content_encoding=content_encoding, max_bytes=settings.max_body_bytes
    )
    native = native_batch_request(message)
    operation = "forward" if message.forward_only else "forward_backward"

    return await run_in_threadpool(
        submit, message.model_id, message.seq_id or None, operation, native
    )


@router.post("/optim_step")
def optim_step(body: tt.OptimStepRequest, submit: Submit) -> dict[str, Any]:
    """Noise once (DP), Adam step, accountant step → ``OptimStepResponse`` (metrics
    include ``dp/epsilon:max``)."""
    params = body.optim_params
    if not isinstance(params, tt.AdamParams):
        raise ValidationError(
            "only Adam (AdamParams) is supported by this server", field="optim_params"
        )
    if params.grad_clip_norm:
        raise ValidationError(
            "global gradient clipping is not applied here: each example's gradient is "
            "clipped to the run's tensafe.dp.max_grad_norm; send grad_clip_norm=0",
            field="adam_params.grad_clip_norm",
        )
    try:
        adam = AdamParams(
            learning_rate=params.learning_rate,
            beta1=params.beta1,
            beta2=params.beta2,
            eps=params.eps,
            weight_decay=params.weight_decay,
        )
    except ValueError as exc:
        raise ValidationError(str(exc).splitlines()[0], field="adam_params") from None
    return submit(body.model_id, body.seq_id, "optim_step", OptimStepRequest(adam_params=adam))


def _checkpoint_name(path: str | None) -> str:
    if path is None or not re.match(_NAME, path) or len(path) > 128:
        raise ValidationError(
            "give a checkpoint name of letters, digits, '_', '.', '-' (at most 128)",
            field="path",
        )
    return path


@router.post("/save_weights")
def save_weights(body: tt.SaveWeightsRequest, submit: Submit) -> dict[str, Any]:
    """Encrypted training state (weights and optimizer) → ``{"path": "tinker://…"}``."""
    request = SaveStateRequest(
        name=_checkpoint_name(body.path),
        include_optimizer=True,
        metadata=dict(body.user_metadata or {}),
    )
    return submit(body.model_id, body.seq_id, "save_state", request)


@router.post("/save_weights_for_sampler")
def save_weights_for_sampler(
    body: tt.SaveWeightsForSamplerRequest, submit: Submit
) -> dict[str, Any]:
    """Encrypted LoRA adapter → ``{"path": "tinker://…/sampler_weights/…"}``. Without
    a name (``save_weights_and_get_sampling_client``) the snapshot is saved as the
    sampler checkpoint ``tinker-ephemeral-<seq_id>`` and the result also names a
    sampling session on it."""
    if body.path is None:
        suffix = str(body.seq_id) if body.seq_id is not None else secrets.token_hex(6)
        name = EPHEMERAL_PREFIX + suffix
    else:
        name = _checkpoint_name(body.path)
        if name.startswith(EPHEMERAL_PREFIX):
            raise ValidationError(f"names starting {EPHEMERAL_PREFIX!r} are reserved", field="path")
    request = SaveWeightsForSamplerRequest(name=name)
    return submit(body.model_id, body.seq_id, "save_weights_for_sampler", request)


class DrawBatchBody(BaseModel):
    """``POST /api/v1/tensafe/draw_batch`` (a TenSafe extension, not in the Tinker SDK)."""

    model_config = ConfigDict(extra="forbid")
    model_id: str
    include_records: bool = True


@router.post("/tensafe/draw_batch")
def draw_batch(body: DrawBatchBody, submit: Submit) -> dict[str, Any]:
    """For a model on a server-held dataset (``tensafe.dp.dataset_id`` = ``ds_…``): the
    server draws the next logical batch (Poisson, from its CSPRNG) → the native
    ``DrawnBatch`` (JSON: ``record_ids`` and, with ``include_records``, the records).
    Datums built from a drawn record name it with a ``tensafe_record_id`` input; the
    next ``optim_step`` consumes the draw."""
    return submit(
        body.model_id, None, "draw_batch", DrawBatchRequest(include_records=body.include_records)
    )


@router.post("/load_weights")
def load_weights(
    body: tt.LoadWeightsRequest,
    tenant: TinkerTenant,
    db: DatabaseDep,
    queue: QueueDep,
    budgets: BudgetsDep,
    settings: SettingsDep,
    submit: Submit,
) -> dict[str, Any]:
    """Restore weights (and the optimizer, with ``optimizer``) from a ``tinker://``
    training checkpoint into a model; without ``model_id``, first create model
    ``{session_id}:train:{model_seq_id}`` shaped like the checkpoint's
    → ``LoadWeightsResponse``."""
    with db.sessions() as session:
        artifact = models.resolve_tinker_path(session, tenant_id=tenant.tenant_id, path=body.path)
        if artifact.kind != "training_state":
            raise ValidationError(
                "load a training checkpoint (…/weights/<name>), not sampler weights",
                field="path",
            )
        source_config = runs.get_run(
            session, tenant_id=tenant.tenant_id, run_id=artifact.run_id
        ).config
        native = LoadStateRequest(path=artifact.path, include_optimizer=body.optimizer)
        if body.model_id is None:
            if body.session_id is None or body.model_seq_id is None:
                raise ValidationError(
                    "give model_id, or session_id and model_seq_id", field="model_id"
                )
            with refusals_are_final():
                owner = models.open_session(
                    session, tenant_id=tenant.tenant_id, session_id=body.session_id
                )
            session_metadata = dict(owner.user_metadata)
    if body.model_id is not None:
        return submit(body.model_id, body.seq_id, "load_state", native)
    assert body.session_id is not None and body.model_seq_id is not None
    model_id = models.model_id_for(session_id=body.session_id, seq=body.model_seq_id)
    metadata = dict(body.user_metadata or {})
    config = models.config_from_checkpoint(
        TrainingConfig.model_validate(source_config),
        session_metadata=session_metadata,
        metadata=metadata,
        policy=get_dp_policy(db, tenant_id=tenant.tenant_id),
    )
    _create_run(
        db, queue, budgets, settings, tenant_id=tenant.tenant_id, model_id=model_id, config=config
    )
    return submit(model_id, 0, "load_state", native)


__all__ = ["router"]
