"""Training runs: admit and create (:func:`create_training_run`), read, list, heartbeat.

Creating a run commits the run (status ``INITIALIZING``) together with its first
operation, ``load_model`` (seq 0), which the worker runs like any other operation;
operations submitted meanwhile queue behind it. Every query is scoped by tenant:
another tenant's run id is :class:`NotFoundError`, exactly like an unknown id.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Literal, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session
from tg_tinker.types import DPConfig, GetInfoResponse, ModelData, TrainingConfig, TrainingRun

from server.db.models import DatasetRow, OperationRow, TrainingRunRow, utcnow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError, ValidationError
from server.queue import OperationQueue, QueuedOperation
from server.services.admission import admit_run
from server.services.budgets import BudgetService
from server.services.dp_policy import config_under_policy, get_dp_policy
from server.services.wire import DEFAULT_DATASET_ID, EngineSpec, engine_spec
from server.settings import Settings

#: Ids of server-held datasets start with this; a run naming one that is not the
#: tenant's is refused rather than treated as a free-form (client-declared) name.
REGISTERED_PREFIX = "ds_"

RunStatus = Literal["INITIALIZING", "READY", "BUSY", "ERROR", "TERMINATED"]
LOAD_MODEL = "load_model"


class TokenizerSource(Protocol):
    """Where a loaded run's tokenizer files come from (the worker's engines)."""

    def tokenizer_files(self, run_id: str, *, model_name: str | None) -> dict[str, str] | None:
        """The files, or ``None`` if the run's model is not loaded yet."""
        ...


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


def create_training_run(
    db: Database,
    queue: OperationQueue,
    budgets: BudgetService,
    *,
    tenant_id: str,
    config: TrainingConfig,
    settings: Settings,
    idempotency_key: str | None,
) -> TrainingRun:
    """Validate, admit, create and queue the ``load_model`` of a new run; returns it
    (status ``INITIALIZING``). A retry with the same ``Idempotency-Key`` returns the
    run it created, whatever the budget says now, and queues nothing.

    If the tenant has a DP policy (set by its privacy officer,
    :mod:`server.services.dp_policy`), the run's ``dp_config`` is put under it first:
    the policy's dataset, noise and clipping norm, tightened where the config asks and
    the policy allows. A DP run is charged to its dataset's budget
    (``dp_config.dataset_id``, else the tenant's ``default`` dataset): it is refused
    if that dataset has no budget (and
    the server sets no default cap), or if the budget cannot afford the run's first
    step, or if its δ is not below 1/N for the run's ``dataset_size`` N (a budget's δ
    is fixed at creation; a run's own δ defaults to ``min(1e-5, N^-1.1)``). The
    admission check runs before, not inside, the creating transaction: its ε evaluation
    can take a while and must not hold a write lock.

    Raises:
        ValidationError: invalid config or one the server's policy refuses, e.g.
            ``dp_config.target_delta`` ≥ 1/N, or one that loosens the tenant's DP
            policy (422, naming the field).
        ConflictError: the budget refuses the run (its δ ≥ 1/N: field
            ``dp_config.dataset_id``); the idempotency key was used for a different
            config (409).
    """
    policy = get_dp_policy(db, tenant_id=tenant_id)
    if policy is not None:  # the privacy officer's settings, tightened where allowed
        config = config_under_policy(config, policy)
    with db.sessions() as session:  # N of a server-held dataset comes from the dataset
        config = resolve_sampling(session, tenant_id=tenant_id, config=config)
    spec = engine_spec(config, settings=settings)  # 422 before anything is stored
    if spec.dataset_id is not None:
        with db.sessions() as session:
            repeat = run_for_key(session, tenant_id=tenant_id, idempotency_key=idempotency_key)
        if repeat is None:
            _admit(budgets, tenant_id=tenant_id, spec=spec, dataset_id=spec.dataset_id)
    with db.transaction() as session:
        run, load = create_run(
            session,
            tenant_id=tenant_id,
            config=config,
            settings=settings,
            idempotency_key=idempotency_key,
        )
        created = run_to_wire(run)
    if load is not None:
        with queue.run_lock(load.run_id):
            queue.enqueue(load.run_id, QueuedOperation(load.future_id, load.request))
    return created


def resolve_sampling(session: Session, *, tenant_id: str, config: TrainingConfig) -> TrainingConfig:
    """The run's config with its sampling decided: a DP run naming one of the tenant's
    server-held datasets is drawn by the server (N is the dataset's: its records, or its
    privacy units), any other DP run declares its own sampling (``client``).

    Raises:
        NotFoundError: (``dp_config.dataset_id``) an id of the server-held form
            (``ds_…``) that is not one of the tenant's datasets.
        ConflictError: (``dp_config.dataset_id``) the dataset is not ready.
        ValidationError: ``dp_config.dataset_size`` other than the dataset's N;
            ``dp_config.sampling`` that the dataset cannot have;
            ``dp_config.max_records_per_unit`` for a dataset without privacy units.
    """
    dp = config.dp_config
    if dp is None or not dp.enabled:
        return config
    dataset = None
    if dp.dataset_id is not None:
        dataset = session.get(DatasetRow, dp.dataset_id)
        if dataset is not None and (dataset.tenant_id != tenant_id or dataset.status == "deleted"):
            dataset = None
        if dataset is None and dp.dataset_id.startswith(REGISTERED_PREFIX):
            raise NotFoundError(f"no dataset {dp.dataset_id!r}", field="dp_config.dataset_id")
    if dataset is None:
        if dp.sampling == "server":
            raise ValidationError(
                "server sampling needs dp_config.dataset_id to name one of your server-held "
                "datasets (see create_dataset)",
                field="dp_config.sampling",
            )
        return config.model_copy(update={"dp_config": dp.model_copy(update={"sampling": "client"})})
    return config.model_copy(update={"dp_config": _server_sampled(dp, dataset)})


def _server_sampled(dp: DPConfig, dataset: DatasetRow) -> DPConfig:
    if dataset.status != "ready":
        raise ConflictError(
            f"dataset {dataset.dataset_id} is {dataset.status}, not ready",
            field="dp_config.dataset_id",
        )
    if dp.sampling == "client":
        raise ValidationError(
            "a server-held dataset is always sampled by the server", field="dp_config.sampling"
        )
    by_unit = dataset.privacy_unit == "unit"
    population = int(dataset.num_units if by_unit else dataset.num_records)  # type: ignore[arg-type]
    if dp.dataset_size is not None and dp.dataset_size != population:
        what = "privacy units" if by_unit else "records"
        raise ValidationError(
            f"dataset {dataset.dataset_id} holds {population} {what}; leave dataset_size out "
            "(the server knows N)",
            field="dp_config.dataset_size",
        )
    if dp.max_records_per_unit is not None and not by_unit:
        raise ValidationError(
            f"dataset {dataset.dataset_id} has no privacy units",
            field="dp_config.max_records_per_unit",
        )
    return dp.model_copy(
        update={
            "dataset_size": population,
            "sampling": "server",
            "max_records_per_unit": (dp.max_records_per_unit or 1) if by_unit else None,
        }
    )


def _admit(budgets: BudgetService, *, tenant_id: str, spec: EngineSpec, dataset_id: str) -> None:
    """The budget's verdict on a validated DP run (its own δ is already < 1/N: a
    ``target_delta`` ≥ 1/N fails :func:`engine_spec`, and the default is below it)."""
    sigma = spec.dp.noise_multiplier
    assert spec.dp.dataset_size is not None  # an enabled DPConfig has one
    admit_run(
        budgets,
        tenant_id=tenant_id,
        dataset_id=dataset_id,
        noise_multiplier=sigma,
        sample_rate=None if sigma is None else spec.dp.resolve().sample_rate,
        dataset_size=spec.dp.dataset_size,
        sampling=spec.sampling or "client",
    )


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


def record_heartbeat(db: Database, *, tenant_id: str, run_id: str) -> TrainingRun:
    """Record that the client is alive (committed); returns the run.

    Raises:
        NotFoundError: no such run for this tenant.
    """
    with db.transaction() as session:
        return run_to_wire(heartbeat(session, tenant_id=tenant_id, run_id=run_id))


def tokenizer_files(
    db: Database, source: TokenizerSource, *, tenant_id: str, run_id: str
) -> dict[str, str]:
    """The run's tokenizer files, once its model has been loaded.

    Raises:
        NotFoundError: no such run for this tenant.
        ConflictError: the model is not loaded yet.
    """
    with db.sessions() as session:
        model_name = get_run(session, tenant_id=tenant_id, run_id=run_id).model_name
    files = source.tokenizer_files(run_id, model_name=model_name)
    if files is None:
        raise ConflictError(
            "the run's model is not loaded yet (it loads when the run is created); retry shortly",
            field="run_id",
        )
    return files


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
    "DEFAULT_DATASET_ID",
    "LOAD_MODEL",
    "RunStatus",
    "TokenizerSource",
    "create_run",
    "create_training_run",
    "get_run",
    "heartbeat",
    "list_runs",
    "record_heartbeat",
    "request_hash",
    "resolve_sampling",
    "run_for_key",
    "run_info",
    "run_to_wire",
    "tokenizer_files",
]
