"""Training runs: validate a ``TrainingConfig``, create, read, list, heartbeat.

Creating a run commits the run (status ``INITIALIZING``) together with its first
operation, ``load_model`` (seq 0), which the worker runs like any other operation;
operations submitted meanwhile queue behind it. Every query is scoped by tenant:
another tenant's run id is :class:`NotFoundError`, exactly like an unknown id.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session
from tg_tinker.types import DPConfig as WireDPConfig
from tg_tinker.types import GetInfoResponse, ModelData, TrainingConfig, TrainingRun

from server.db.models import OperationRow, TrainingRunRow, utcnow
from server.errors import ConflictError, NotFoundError, ValidationError, prefix_field
from server.settings import Settings
from tensafe.engine import OptimizerConfig
from tensafe.errors import ConfigError
from tensafe.models.lora import LoRAConfig
from tensafe.privacy import DPConfig

RunStatus = Literal["INITIALIZING", "READY", "BUSY", "ERROR", "TERMINATED"]
LOAD_MODEL = "load_model"

#: The dataset a DP run is charged to when its ``dp_config`` names none: every
#: DP step is charged to some dataset budget, so a tenant's unnamed runs compose
#: into one budget (an over-estimate if they really used different data).
DEFAULT_DATASET_ID = "default"


@dataclass(frozen=True)
class EngineSpec:
    """What the worker needs to build a run's engine, validated."""

    model_ref: str
    lora: LoRAConfig | None
    dp: DPConfig
    optimizer: OptimizerConfig
    seed: int
    dataset_id: str | None


def engine_spec(
    config: TrainingConfig, *, settings: Settings, enforce_policy: bool = True
) -> EngineSpec:
    """Validate a wire ``TrainingConfig`` into engine configs, without loading anything.

    With ``enforce_policy`` (creating a run) the server's policy applies too: DP is
    required unless ``settings.require_dp`` is off — a run without ``dp_config`` (or
    with ``enabled=False``) is refused, so no client can opt out — and ``batch_size``
    must be within ``max_batch_size``. Rebuilding an existing run skips the policy.

    Raises:
        ValidationError: naming the field (``lora_config.rank``,
            ``dp_config.noise_multiplier``, ``optimizer.learning_rate``, ``batch_size``...).
    """
    if enforce_policy and config.batch_size > settings.max_batch_size:
        raise ValidationError(
            f"must be at most {settings.max_batch_size} (server limit)", field="batch_size"
        )
    if enforce_policy and not settings.allow_model_paths and looks_like_path(config.model_ref):
        raise ValidationError(
            "local model paths are disabled on this server; name a model (e.g. "
            "'smollm2-135m-instruct' or a hub id) or ask the operator to set "
            "TENSAFE_ALLOW_MODEL_PATHS=true",
            field="model_ref",
        )
    wire_dp = config.dp_config
    if enforce_policy and settings.require_dp and (wire_dp is None or not wire_dp.enabled):
        raise ValidationError(
            "this server trains only with differential privacy: give a dp_config with "
            "enabled=true (dataset_size, noise_multiplier or target_epsilon, sample_rate "
            "or expected_batch_size)",
            field="dp_config",
        )
    try:
        lora = None
        if config.lora_config is not None:
            w = config.lora_config
            lora = LoRAConfig(
                rank=w.rank,
                alpha=w.alpha,
                dropout=w.dropout,
                target_modules=None if w.target_modules is None else tuple(w.target_modules),
                bias=w.bias,
                train_attn=w.train_attn,
                train_mlp=w.train_mlp,
                train_unembed=w.train_unembed,
            )
    except ConfigError as exc:
        raise prefix_field(exc, "lora_config") from None
    try:
        o = config.optimizer
        optimizer = OptimizerConfig(
            name=o.name,
            learning_rate=o.learning_rate,
            weight_decay=o.weight_decay,
            betas=o.betas,
            eps=o.eps,
            momentum=o.momentum,
        )
    except ConfigError as exc:
        raise prefix_field(exc, "optimizer") from None
    try:
        if wire_dp is None or not wire_dp.enabled:
            dp = DPConfig(enabled=False)
        else:
            dp = DPConfig(
                enabled=True,
                max_grad_norm=wire_dp.max_grad_norm,
                noise_multiplier=wire_dp.noise_multiplier,
                target_epsilon=wire_dp.target_epsilon,
                target_delta=wire_dp.target_delta,
                planned_steps=wire_dp.planned_steps,
                dataset_size=wire_dp.dataset_size,
                sample_rate=wire_dp.sample_rate,
                expected_batch_size=wire_dp.expected_batch_size,
                accountant=wire_dp.accountant,
                secure_mode=wire_dp.secure_mode,
            )
    except ConfigError as exc:
        raise prefix_field(exc, "dp_config") from None
    return EngineSpec(
        model_ref=config.model_ref,
        lora=lora,
        dp=dp,
        optimizer=optimizer,
        seed=config.seed,
        dataset_id=_dataset_of(wire_dp) if dp.enabled else None,
    )


def _dataset_of(wire_dp: WireDPConfig | None) -> str:
    """The dataset a DP run is charged to: the one it names, else the default."""
    named = None if wire_dp is None else wire_dp.dataset_id
    return named or DEFAULT_DATASET_ID


def looks_like_path(model_ref: str) -> bool:
    """Whether ``model_ref`` would be resolved as a directory on the server."""
    ref = model_ref.strip()
    if ref.startswith(("/", "~", ".")) or ".." in ref:
        return True
    return Path(ref).expanduser().exists()


def request_hash(payload: dict[str, object]) -> str:
    """SHA-256 of a request's canonical JSON (recognises an idempotent repeat)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run_for_key(
    session: Session, *, tenant_id: str, idempotency_key: str | None
) -> TrainingRunRow | None:
    """The tenant's run created earlier with this ``Idempotency-Key``, if any."""
    if idempotency_key is None:
        return None
    return session.scalar(
        select(TrainingRunRow).where(
            TrainingRunRow.tenant_id == tenant_id,
            TrainingRunRow.idempotency_key == idempotency_key,
        )
    )


def create_run(
    session: Session,
    *,
    tenant_id: str,
    config: TrainingConfig,
    settings: Settings,
    idempotency_key: str | None,
) -> tuple[TrainingRunRow, OperationRow | None]:
    """Insert a run and its ``load_model`` operation (flushed; the caller commits,
    then enqueues the operation). A repeat with the same idempotency key returns the
    existing run and ``None``.

    Raises:
        ValidationError: invalid config (see :func:`engine_spec`).
        ConflictError: the idempotency key was used for a different config.
    """
    config_json = config.model_dump(mode="json")
    digest = request_hash(config_json)
    existing = run_for_key(session, tenant_id=tenant_id, idempotency_key=idempotency_key)
    if existing is not None:
        if request_hash(existing.config) != digest:
            raise ConflictError(
                "this Idempotency-Key was already used for a different request",
                field="Idempotency-Key",
            )
        return existing, None
    spec = engine_spec(config, settings=settings)
    now = utcnow()
    run = TrainingRunRow(
        run_id="run_" + secrets.token_hex(12),
        tenant_id=tenant_id,
        status="INITIALIZING",
        config=config_json,
        model_ref=config.model_ref,
        dp_enabled=spec.dp.enabled,
        step=0,
        pending_examples=0,
        next_seq=1,
        idempotency_key=idempotency_key,
        created_at=now,
        updated_at=now,
    )
    session.add(run)
    session.flush()
    load = OperationRow(
        future_id="fut_" + secrets.token_hex(12),
        run_id=run.run_id,
        tenant_id=tenant_id,
        seq=0,
        operation=LOAD_MODEL,
        status="pending",
        request=None,
        created_at=now,
    )
    session.add(load)
    session.flush()
    return run, load


def get_run(session: Session, *, tenant_id: str, run_id: str) -> TrainingRunRow:
    """The tenant's run.

    Raises:
        NotFoundError: no such run for this tenant.
    """
    run = session.get(TrainingRunRow, run_id)
    if run is None or run.tenant_id != tenant_id:
        raise NotFoundError(f"no training run {run_id!r}", field="run_id")
    return run


def list_runs(session: Session, *, tenant_id: str) -> list[TrainingRunRow]:
    """The tenant's runs, newest first."""
    return list(
        session.scalars(
            select(TrainingRunRow)
            .where(TrainingRunRow.tenant_id == tenant_id)
            .order_by(TrainingRunRow.created_at.desc(), TrainingRunRow.run_id)
        )
    )


def heartbeat(session: Session, *, tenant_id: str, run_id: str) -> TrainingRunRow:
    """Record that the client is alive; returns the run.

    Raises:
        NotFoundError: no such run for this tenant.
    """
    run = get_run(session, tenant_id=tenant_id, run_id=run_id)
    run.last_heartbeat_at = utcnow()
    session.flush()
    return run


def run_to_wire(run: TrainingRunRow) -> TrainingRun:
    return TrainingRun(
        run_id=run.run_id,
        status=run.status,  # type: ignore[arg-type]
        step=run.step,
        config=TrainingConfig.model_validate(run.config),
        created_at=run.created_at,
        last_heartbeat_at=run.last_heartbeat_at,
        error=run.error,
    )


def run_info(run: TrainingRunRow) -> GetInfoResponse:
    """What the run trains; model details are filled in once the worker loaded it."""
    config = TrainingConfig.model_validate(run.config)
    name = run.model_name or run.model_ref
    return GetInfoResponse(
        model_data=ModelData(arch=run.arch or "", model_name=name),
        model_id=run.run_id,
        is_lora=config.lora_config is not None,
        lora_rank=None if config.lora_config is None else config.lora_config.rank,
        model_name=name,
        trainable_params=run.trainable_params,
        step=run.step,
    )


__all__ = [
    "LOAD_MODEL",
    "EngineSpec",
    "RunStatus",
    "create_run",
    "engine_spec",
    "get_run",
    "heartbeat",
    "list_runs",
    "request_hash",
    "run_info",
    "run_to_wire",
]
