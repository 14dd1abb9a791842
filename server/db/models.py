"""SQLAlchemy 2 models: the whole persistent state of the service.

Tables (see ``docs/operations.md`` for what each keeps across restarts):

* ``tenants`` / ``api_keys`` — API keys are stored as key id + HMAC-SHA256 of the
  secret, never the key itself, with the key's scopes (space-separated; migration
  0006, see :mod:`server.services.scopes`).
* ``tenant_keys`` — each tenant's data keys, *wrapped* by the KEK (one JSON record
  per tenant with a revision for compare-and-set).
* ``training_runs`` — config, status, model step and the checkpoint a restart
  restores from.
* ``operations`` — every submitted operation (a future): per-run ``seq``, status,
  request, result or error.
* ``artifacts`` — encrypted checkpoints: where the ciphertext lives, its size and
  SHA-256, the step and DP history length at save time, optional expiry.
* ``datasets`` / ``dataset_shards`` — server-held datasets: each version's N, content
  commitment and status, and where its sealed shards live (never plaintext).
* ``privacy_budgets`` — one ε cap per (tenant, dataset), with the head (seq, link) of
  that dataset's ledger chain, updated in the transaction that appends a row.
* ``ledger_events`` — the append-only, HMAC-chained privacy ledger (one chain per
  (tenant, dataset); see :mod:`server.services.ledger`): the one record of every
  noisy step, refusal and budget change. Updates and deletes are refused by database
  triggers (migration 0002) and by :func:`_refuse_ledger_changes`.
* ``tinker_sessions`` — sessions of clients speaking the Tinker protocol (``/api/v1``,
  migration 0009): owner, tags, user metadata (which may carry ``tensafe.*`` DP
  settings), heartbeat. Their models are ordinary training runs.
* ``samplers`` — what each sampler samples from (a run, a checkpoint, a base model;
  migration 0010). Samples are never stored.
* ``dp_policies`` — each tenant's DP policy for new runs, set by its privacy officer
  (migration 0011; :mod:`server.services.dp_policy`): the dataset runs are charged to,
  σ or a target ε, C, and whether clients may tighten them.
* ``dp_steps`` — a read-only *view* of the ledger's noisy steps per run
  (:class:`DPStepRow`, migration 0004), for operators' queries.

Timestamps are timezone-aware UTC on every backend (:class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always returns aware UTC datetimes
    (SQLite drops the offset; PostgreSQL keeps it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Tenant(Base):
    __tablename__ = "tenants"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]


class ApiKey(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True
    )
    secret_hash: Mapped[str] = mapped_column(String(64))
    hash_scheme: Mapped[str] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(200))
    # space-separated scope names; keys older than migration 0006 got "train"
    scopes: Mapped[str] = mapped_column(String(200), server_default="train")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class TenantKeyRow(Base):
    """The wrapped-key record of one tenant (``tensafe.artifacts.TenantKeyRecord``)."""

    __tablename__ = "tenant_keys"

    tenant_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    record: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRunRow(Base):
    __tablename__ = "training_runs"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    model_ref: Mapped[str] = mapped_column(String(500))
    dp_enabled: Mapped[bool] = mapped_column(Boolean)
    model_name: Mapped[str | None] = mapped_column(String(500))
    arch: Mapped[str | None] = mapped_column(String(100))
    vocab_size: Mapped[int | None]
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    step: Mapped[int] = mapped_column(default=0)
    pending_examples: Mapped[int] = mapped_column(default=0)
    next_seq: Mapped[int] = mapped_column(default=0)
    last_checkpoint_artifact_id: Mapped[str | None] = mapped_column(String(64))
    # the logical batch the server drew and no optim_step consumed yet (migration 0005)
    pending_draw: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_heartbeat_at: Mapped[datetime | None]


class OperationRow(Base):
    """One submitted operation, i.e. one future."""

    __tablename__ = "operations"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        UniqueConstraint("run_id", "idempotency_key"),
    )

    future_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        ForeignKey("training_runs.run_id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int]
    operation: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16), index=True)
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class ArtifactRow(Base):
    __tablename__ = "artifacts"

    artifact_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True
    )
    run_id: Mapped[str] = mapped_column(
        ForeignKey("training_runs.run_id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(300), unique=True)
    storage_key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64))
    step: Mapped[int]
    dp_seq: Mapped[int] = mapped_column(default=0)
    base_model: Mapped[str] = mapped_column(String(500))
    shape_signature: Mapped[str] = mapped_column(String(64))
    include_optimizer: Mapped[bool] = mapped_column(Boolean, default=False)
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    key_id: Mapped[str] = mapped_column(String(64))
    key_version: Mapped[int]
    future_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    # the signed evidence bundle (DSSE envelope JSON), migration 0008
    evidence: Mapped[str | None] = mapped_column(Text)


class DatasetRow(Base):
    """One immutable version of a server-held dataset (records stored only as sealed
    shards, under a key of its own so that deleting it crypto-shreds it)."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "version"),
        Index("ix_datasets_tenant_id_commitment", "tenant_id", "commitment"),
    )

    dataset_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))  # uploading | ready | deleted | failed
    privacy_unit: Mapped[str] = mapped_column(String(16))  # record | unit
    num_records: Mapped[int] = mapped_column(BigInteger, default=0)
    num_units: Mapped[int | None] = mapped_column(BigInteger)
    fields: Mapped[list[str] | None] = mapped_column(JSON)
    commitment: Mapped[str | None] = mapped_column(String(64))
    key_owner: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    committed_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]


class TinkerSessionRow(Base):
    """A Tinker-protocol client session: the models it creates are training runs whose
    idempotency key is ``tinker:{session_id}:train:{seq}`` (the model id)."""

    __tablename__ = "tinker_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True
    )
    tags: Mapped[list[str]] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, Any]] = mapped_column(JSON)
    sdk_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    finish_reason: Mapped[str | None] = mapped_column(String(32))


class DatasetShardRow(Base):
    """One sealed shard of a dataset: records ``first_record …`` (``index`` −1 holds the
    privacy-unit index of a dataset with units)."""

    __tablename__ = "dataset_shards"
    __table_args__ = (UniqueConstraint("dataset_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.dataset_id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int]
    first_record: Mapped[int] = mapped_column(BigInteger)
    num_records: Mapped[int] = mapped_column(BigInteger)
    artifact_id: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    content_hash: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)


class PrivacyBudgetRow(Base):
    """The ε budget of one dataset of one tenant, and the head of its ledger chain."""

    __tablename__ = "privacy_budgets"
    __table_args__ = (UniqueConstraint("tenant_id", "dataset_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    dataset_id: Mapped[str] = mapped_column(String(200))
    epsilon_cap: Mapped[float] = mapped_column(Double)
    delta: Mapped[float] = mapped_column(Double)
    accountant: Mapped[str] = mapped_column(String(16))
    sampling_policy: Mapped[str] = mapped_column(String(16), default="any")  # migration 0005
    head_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    head_link: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerEventRow(Base):
    """One row of the privacy ledger (every field of ``tensafe.audit.LedgerEvent``).

    Append-only: ``created_at`` is the canonical string the link covers."""

    __tablename__ = "ledger_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "dataset_id", "seq"),
        Index("ix_ledger_events_tenant_id_dataset_id_run_id", "tenant_id", "dataset_id", "run_id"),
        Index("ix_ledger_events_run_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(200))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[int | None] = mapped_column(BigInteger)
    noise_multiplier: Mapped[float | None] = mapped_column(Double)
    sample_rate: Mapped[float | None] = mapped_column(Double)
    max_grad_norm: Mapped[float | None] = mapped_column(Double)
    dataset_size: Mapped[int | None] = mapped_column(BigInteger)
    delta: Mapped[float] = mapped_column(Double)
    accountant: Mapped[str] = mapped_column(String(16))
    epsilon_step: Mapped[float | None] = mapped_column(Double)
    epsilon_run_total: Mapped[float | None] = mapped_column(Double)
    epsilon_dataset_total: Mapped[float] = mapped_column(Double)
    epsilon_requested: Mapped[float | None] = mapped_column(Double)
    cap: Mapped[float] = mapped_column(Double)
    # ledger format 2 (migration 0003); null on older rows
    model_step: Mapped[int | None] = mapped_column(BigInteger)
    epsilon_run_exact: Mapped[float | None] = mapped_column(Double)
    origin_run_id: Mapped[str | None] = mapped_column(String(64))
    origin_seq: Mapped[int | None] = mapped_column(BigInteger)
    run_delta: Mapped[float | None] = mapped_column(Double)  # migration 0004
    run_accountant: Mapped[str | None] = mapped_column(String(16))
    sampling: Mapped[str | None] = mapped_column(String(16))  # migration 0005
    privacy_unit: Mapped[str | None] = mapped_column(String(16))
    sampling_policy: Mapped[str | None] = mapped_column(String(16))
    # ledger format 3 (migration 0007): privacy_audit rows only
    audit_method: Mapped[str | None] = mapped_column(String(32))
    audit_canaries: Mapped[int | None] = mapped_column(BigInteger)
    audit_guesses: Mapped[int | None] = mapped_column(BigInteger)
    audit_correct: Mapped[int | None] = mapped_column(BigInteger)
    audit_confidence: Mapped[float | None] = mapped_column(Double)
    epsilon_lower_bound: Mapped[float | None] = mapped_column(Double)
    audit_scores: Mapped[dict[str, Any] | None]
    audit_test_fault: Mapped[str | None] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    library_versions: Mapped[dict[str, Any]]
    created_at: Mapped[str] = mapped_column(String(32))
    prev_link: Mapped[str] = mapped_column(String(64))
    link: Mapped[str] = mapped_column(String(64))


class SamplerRow(Base):
    """A sampler a tenant created (migration 0010): what it samples from — a run's
    current weights (``run``), a saved sampler checkpoint (``checkpoint``) or a base
    model (``base``). Samples are never stored."""

    __tablename__ = "samplers"

    sampler_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.tenant_id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(16))  # run | checkpoint | base
    base_model: Mapped[str] = mapped_column(String(500))
    run_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_runs.run_id", ondelete="CASCADE")
    )
    artifact_id: Mapped[str | None] = mapped_column(String(64))
    model_path: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DPPolicyRow(Base):
    """A tenant's DP policy (migration 0011): what every new DP run of the tenant trains
    with, set by a ``privacy-officer`` key (:mod:`server.services.dp_policy`)."""

    __tablename__ = "dp_policies"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.tenant_id", ondelete="CASCADE"), primary_key=True
    )
    dataset_id: Mapped[str] = mapped_column(String(200))
    noise_multiplier: Mapped[float | None] = mapped_column(Double)
    target_epsilon: Mapped[float | None] = mapped_column(Double)
    planned_steps: Mapped[int | None] = mapped_column(BigInteger)
    target_delta: Mapped[float | None] = mapped_column(Double)
    max_grad_norm: Mapped[float] = mapped_column(Double)
    client_overrides: Mapped[str] = mapped_column(String(16))  # tighten | none
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ViewBase(DeclarativeBase):
    """Read-only classes mapped onto SQL views (kept out of ``Base.metadata``: the
    migrations create the views, and autogenerate must not see them as tables)."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON()}


class DPStepRow(ViewBase):
    """One noisy step of a run, own or carried in by ``load_state``: a row of the
    ``dp_steps`` view over ``ledger_events`` (migration 0004). Read-only.

    ``seq`` numbers the run's noisy steps 1, 2, 3, …; ``origin_seq`` gives that
    number of the original step in its own run; ``delta``/``accountant`` are the
    run's; ``epsilon`` is the run's exact ε after an own step (null when carried).
    """

    __tablename__ = "dp_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(200))
    ledger_seq: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    model_step: Mapped[int | None] = mapped_column(BigInteger)
    origin_run_id: Mapped[str | None] = mapped_column(String(64))
    origin_seq: Mapped[int | None] = mapped_column(BigInteger)
    noise_multiplier: Mapped[float] = mapped_column(Double)
    sample_rate: Mapped[float] = mapped_column(Double)
    max_grad_norm: Mapped[float] = mapped_column(Double)
    dataset_size: Mapped[int] = mapped_column(BigInteger)
    expected_batch_size: Mapped[float] = mapped_column(Double)
    delta: Mapped[float] = mapped_column(Double)
    accountant: Mapped[str] = mapped_column(String(16))
    epsilon: Mapped[float | None] = mapped_column(Double)
    library_versions: Mapped[dict[str, Any]]
    created_at: Mapped[str] = mapped_column(String(32))


class LedgerImmutableError(RuntimeError):
    """An attempt to update or delete a ledger row through the ORM."""


@sa_event.listens_for(Session, "before_flush")
def _refuse_ledger_changes(session: Session, _context: Any, _instances: Any) -> None:
    """Code-level guard (the database triggers are the other): ledger rows are
    inserted, never updated or deleted."""
    for obj in session.deleted:
        if isinstance(obj, LedgerEventRow):
            raise LedgerImmutableError("ledger_events rows are append-only: delete refused")
    for obj in session.dirty:
        if isinstance(obj, LedgerEventRow) and session.is_modified(obj):
            raise LedgerImmutableError("ledger_events rows are append-only: update refused")


@sa_event.listens_for(Session, "do_orm_execute")
def _refuse_ledger_bulk_changes(state: Any) -> None:
    if (state.is_update or state.is_delete) and any(
        getattr(m, "class_", None) is LedgerEventRow for m in state.all_mappers
    ):
        raise LedgerImmutableError("ledger_events rows are append-only: bulk update/delete refused")


__all__ = [
    "ApiKey",
    "ArtifactRow",
    "Base",
    "DPStepRow",
    "DatasetRow",
    "DatasetShardRow",
    "LedgerEventRow",
    "LedgerImmutableError",
    "OperationRow",
    "PrivacyBudgetRow",
    "SamplerRow",
    "Tenant",
    "TenantKeyRow",
    "TinkerSessionRow",
    "TrainingRunRow",
    "UTCDateTime",
    "ViewBase",
    "utcnow",
]
