"""Privacy budgets per (tenant, dataset), the HMAC-chained ledger, and audits.

Design (see ``docs/operations.md``, "Privacy budgets and the ledger"):

* **One chain per (tenant, dataset).** Each ``privacy_budgets`` row holds the head
  (``head_seq``, ``head_link``) of its dataset's chain in ``ledger_events``; every
  append updates it in the same transaction, so rows deleted from the end are
  detected too (``verify_chain(expected_head=...)``). Chains of different datasets
  never contend.
* **The lock.** A step on a budgeted dataset runs in *one* transaction that first
  locks the budget row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every
  transaction starts with ``BEGIN IMMEDIATE``, see :mod:`server.db.session`, which
  takes the database write lock), then checks the step against the in-memory
  :class:`~tensafe.privacy.DatasetBudget`, lets the engine take the step (noise is
  drawn only after the check), appends the ledger row, writes the ``dp_steps`` row
  and completes the future, and commits. The lock is held across the engine step
  (~0.3 s on the tiny model): runs on one dataset are serialised at ``optim_step``
  — the simplest way to make sure racing runs can never together exceed the cap.
  On SQLite the write lock is global, so every writer waits for that step.
* **Crash safety.** The charge, the ledger row, the ``dp_steps`` row and the
  completed future commit together: a crash can lose a step (its future is failed
  at restart) but a visible step is always charged. If the commit fails after the
  engine stepped, the worker discards the engine and the in-memory charge is
  reverted (:meth:`DatasetBudget.revert_step`) and the cache entry dropped.
* **The in-memory budget** is cached per dataset together with the chain head it
  reflects; a different head in the database (another process appended, or a
  failed commit) rebuilds it from the ledger rows (:func:`budget_from_events`).
* **The HMAC key** is derived (HKDF-SHA256) from a dedicated 256-bit secret kept by
  the key provider: it is stored only wrapped by the KEK (``tenant_keys`` row of the
  reserved owner ``__ledger__``), never in clear in the database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from server.db.models import LedgerEventRow, PrivacyBudgetRow, utcnow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError, ValidationError
from tensafe.artifacts import TenantKeyring
from tensafe.audit import (
    GENESIS_LINK,
    AuditReport,
    ChainHead,
    ChainReport,
    LedgerEvent,
    append,
    budget_from_events,
    build_report,
    utc_timestamp,
    verify_chain,
)
from tensafe.errors import BudgetExceededError, ConfigError
from tensafe.privacy.budget import DatasetBudget, StepCharge, accounting_versions
from tensafe.privacy.delta import check_delta
from tensafe.privacy.schedule import EpsilonSchedule

log = logging.getLogger("tensafe.server.budgets")

#: The reserved key owner whose wrapped secret the ledger HMAC key is derived from.
LEDGER_KEY_OWNER = "__ledger__"
_HKDF_INFO = b"tensafe ledger hmac-sha256 v1"
DEFAULT_DELTA = 1e-5

R = TypeVar("R")


def derive_ledger_key(keyring: TenantKeyring) -> bytes:
    """The ledger's HMAC key: HKDF-SHA256 of the KEK-wrapped ``__ledger__`` secret
    (version 1, created on first use)."""
    keyring.current_key(LEDGER_KEY_OWNER)
    material = keyring.export_tenant_key(LEDGER_KEY_OWNER, version=1).material
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(material)


def event_of(row: LedgerEventRow) -> LedgerEvent:
    """The :class:`LedgerEvent` a stored row holds (raises ConfigError if malformed)."""
    return LedgerEvent.from_row(event_mapping(row))


def event_mapping(row: LedgerEventRow) -> dict[str, object]:
    names = LedgerEvent.__dataclass_fields__
    return {name: getattr(row, name) for name in names}


@dataclass(frozen=True)
class StepOutcome:
    """What :meth:`BudgetService.run_step` committed."""

    charge: StepCharge
    event: LedgerEvent


@dataclass(frozen=True)
class VerifyResult:
    """The verification of one dataset's chain."""

    tenant_id: str
    dataset_id: str
    report: ChainReport

    def to_dict(self) -> dict[str, object]:
        return {"tenant_id": self.tenant_id, "dataset_id": self.dataset_id, **self.report.to_dict()}


class BudgetService:
    """Budgets, ledger appends and audits for one server process."""

    def __init__(
        self, db: Database, keyring: TenantKeyring, *, default_epsilon_cap: float | None = None
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.default_epsilon_cap = default_epsilon_cap
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[DatasetBudget, int]] = {}
        self._schedules: dict[tuple[float, str], EpsilonSchedule] = {}
        self._versions: dict[str, dict[str, str]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tensafe-eps")

    # ------------------------------------------------------------------ basics
    def key(self) -> bytes:
        if self._key is None:
            self._key = derive_ledger_key(self.keyring)
        return self._key

    def schedule(self, *, delta: float, accountant: str) -> EpsilonSchedule:
        with self._lock:
            sched = self._schedules.get((delta, accountant))
            if sched is None:
                sched = EpsilonSchedule(
                    delta=delta,
                    accountant=accountant,  # type: ignore[arg-type]
                    executor=self._executor,
                )
                self._schedules[(delta, accountant)] = sched
            return sched

    def versions(self, schedule: EpsilonSchedule) -> dict[str, str]:
        """:func:`accounting_versions` (package metadata reads are slow: cached)."""
        cached = self._versions.get(schedule.spec + repr((schedule.delta, schedule.accountant)))
        if cached is None:
            cached = accounting_versions(schedule)
            self._versions[schedule.spec + repr((schedule.delta, schedule.accountant))] = cached
        return dict(cached)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _row(
        session: Session, tenant_id: str, dataset_id: str, *, lock: bool
    ) -> PrivacyBudgetRow | None:
        query = select(PrivacyBudgetRow).where(
            PrivacyBudgetRow.tenant_id == tenant_id, PrivacyBudgetRow.dataset_id == dataset_id
        )
        if lock:
            query = query.with_for_update()
        return session.scalars(query.execution_options(populate_existing=True)).one_or_none()

    def _get_row(
        self, session: Session, tenant_id: str, dataset_id: str, *, lock: bool = False
    ) -> PrivacyBudgetRow:
        row = self._row(session, tenant_id, dataset_id, lock=lock)
        if row is None:
            raise NotFoundError(f"no privacy budget for dataset {dataset_id!r}", field="dataset_id")
        return row

    @staticmethod
    def events(session: Session, tenant_id: str, dataset_id: str) -> list[LedgerEventRow]:
        return list(
            session.scalars(
                select(LedgerEventRow)
                .where(
                    LedgerEventRow.tenant_id == tenant_id, LedgerEventRow.dataset_id == dataset_id
                )
                .order_by(LedgerEventRow.seq, LedgerEventRow.id)
            )
        )

    def _budget(self, session: Session, row: PrivacyBudgetRow) -> DatasetBudget:
        """The in-memory budget matching the row's chain head (rebuilt if stale)."""
        cache_key = (row.tenant_id, row.dataset_id)
        with self._lock:
            cached = self._cache.get(cache_key)
        if cached is not None and cached[1] == row.head_seq:
            return cached[0]
        events = [event_of(r) for r in self.events(session, row.tenant_id, row.dataset_id)]
        budget = budget_from_events(
            events, schedule=self.schedule(delta=row.delta, accountant=row.accountant)
        )
        with self._lock:
            self._cache[cache_key] = (budget, row.head_seq)
        return budget

    def _set_head(self, row: PrivacyBudgetRow, budget: DatasetBudget) -> None:
        with self._lock:
            self._cache[(row.tenant_id, row.dataset_id)] = (budget, row.head_seq)

    def _forget(self, tenant_id: str, dataset_id: str) -> None:
        with self._lock:
            self._cache.pop((tenant_id, dataset_id), None)

    def _append(
        self, session: Session, row: PrivacyBudgetRow, fields: dict[str, object]
    ) -> LedgerEvent:
        event = append(ChainHead(seq=row.head_seq, link=row.head_link), fields, self.key())
        session.add(LedgerEventRow(**event.to_row()))
        row.head_seq = event.seq
        row.head_link = event.link
        row.updated_at = utcnow()
        session.flush()
        return event

    # ----------------------------------------------------------------- budgets
    def create_budget(
        self,
        *,
        tenant_id: str,
        dataset_id: str,
        epsilon_cap: float,
        delta: float | None = None,
        accountant: str = "prv",
        actor: str | None = None,
        reason: str | None = None,
    ) -> PrivacyBudgetRow:
        """Create a dataset's budget and its ``budget_created`` ledger row.

        Raises:
            ConflictError: the dataset already has a budget.
            ConfigError / ValidationError: invalid cap, δ or accountant.
        """
        if not dataset_id or len(dataset_id) > 200:
            raise ValidationError("must be 1 to 200 characters", field="dataset_id")
        delta = DEFAULT_DELTA if delta is None else float(delta)
        self.key()  # before any transaction: the keyring uses its own connection
        # Validates cap, δ and accountant.
        DatasetBudget(
            dataset_id=dataset_id,
            epsilon_cap=epsilon_cap,
            delta=delta,
            accountant=accountant,  # type: ignore[arg-type]
            schedule=self.schedule(delta=delta, accountant=accountant),
        )
        try:
            with self.db.transaction() as session:
                if self._row(session, tenant_id, dataset_id, lock=False) is not None:
                    raise ConflictError(
                        f"dataset {dataset_id!r} already has a privacy budget; raise its cap "
                        "instead",
                        field="dataset_id",
                    )
                row = self._insert_budget(
                    session,
                    tenant_id=tenant_id,
                    dataset_id=dataset_id,
                    epsilon_cap=float(epsilon_cap),
                    delta=delta,
                    accountant=accountant,
                    actor=actor,
                    reason=reason,
                )
        except SAIntegrityError:
            raise ConflictError(
                f"dataset {dataset_id!r} already has a privacy budget", field="dataset_id"
            ) from None
        self._forget(tenant_id, dataset_id)
        return row

    def _insert_budget(
        self,
        session: Session,
        *,
        tenant_id: str,
        dataset_id: str,
        epsilon_cap: float,
        delta: float,
        accountant: str,
        actor: str | None,
        reason: str | None,
    ) -> PrivacyBudgetRow:
        now = utcnow()
        row = PrivacyBudgetRow(
            tenant_id=tenant_id,
            dataset_id=dataset_id,
            epsilon_cap=epsilon_cap,
            delta=delta,
            accountant=accountant,
            head_seq=0,
            head_link=GENESIS_LINK,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        sched = self.schedule(delta=delta, accountant=accountant)
        self._append(
            session,
            row,
            {
                "kind": "budget_created",
                "tenant_id": tenant_id,
                "dataset_id": dataset_id,
                "delta": delta,
                "accountant": accountant,
                "epsilon_dataset_total": 0.0,
                "cap": epsilon_cap,
                "actor": actor,
                "reason": reason,
                "library_versions": self.versions(sched),
                "created_at": utc_timestamp(),
            },
        )
        return row

    def change_cap(
        self,
        *,
        tenant_id: str,
        dataset_id: str,
        epsilon_cap: float,
        actor: str | None = None,
        reason: str | None = None,
    ) -> PrivacyBudgetRow:
        """Raise (or lower, never below the ε spent) a cap; a ``budget_changed`` row.

        Raises:
            NotFoundError: no budget for the dataset.
            ConfigError: the new cap is invalid, equal, or below the ε spent.
        """
        budget: DatasetBudget | None = None
        self.key()  # before any transaction: the keyring uses its own connection
        try:
            with self.db.transaction() as session:
                row = self._get_row(session, tenant_id, dataset_id, lock=True)
                budget = self._budget(session, row)
                if epsilon_cap == row.epsilon_cap:
                    raise ConfigError("epsilon_cap", f"the cap is already {epsilon_cap!r}")
                if epsilon_cap > row.epsilon_cap:
                    change = budget.raise_cap(epsilon_cap)
                else:
                    change = budget.lower_cap(epsilon_cap)
                row.epsilon_cap = change.new_cap
                self._append(
                    session,
                    row,
                    {
                        "kind": "budget_changed",
                        "tenant_id": tenant_id,
                        "dataset_id": dataset_id,
                        "delta": row.delta,
                        "accountant": row.accountant,
                        "epsilon_dataset_total": change.epsilon_spent,
                        "cap": change.new_cap,
                        "actor": actor,
                        "reason": reason,
                        "library_versions": self.versions(budget.schedule),
                        "created_at": utc_timestamp(),
                    },
                )
        except BaseException:
            self._forget(tenant_id, dataset_id)  # the in-memory cap may have moved
            raise
        self._set_head(row, budget)
        return row

    def _ensure_budget(self, *, tenant_id: str, dataset_id: str, delta: float) -> None:
        """Create the default budget on first use when ``default_epsilon_cap`` is set.

        Raises:
            ConflictError: the dataset has no budget and there is no default cap.
        """
        with self.db.sessions() as session:
            if self._row(session, tenant_id, dataset_id, lock=False) is not None:
                return
        if self.default_epsilon_cap is None:
            raise _no_budget(dataset_id)
        try:
            with self.db.transaction() as session:
                self._insert_budget(
                    session,
                    tenant_id=tenant_id,
                    dataset_id=dataset_id,
                    epsilon_cap=self.default_epsilon_cap,
                    delta=delta,
                    accountant="prv",
                    actor="server:default_epsilon_cap",
                    reason="created on first use with the server's default_epsilon_cap",
                )
        except SAIntegrityError:
            pass  # created concurrently

    def admit_run(
        self,
        *,
        tenant_id: str,
        dataset_id: str,
        noise_multiplier: float | None,
        sample_rate: float | None,
        dataset_size: int,
    ) -> None:
        """Refuse a new DP run up front if its dataset's budget cannot take its first step,
        or if the budget's δ is not below ``1/dataset_size`` (the run's N).

        Advisory: the authoritative check is :meth:`run_step`, under the lock, before
        every step's noise. With ``noise_multiplier`` unknown (σ calibrated later from
        a target ε) only an exhausted budget is refused. Records nothing; reads in a
        short session of its own and evaluates ε after closing it, so call it outside
        any transaction (on SQLite every transaction holds the write lock).

        Raises:
            ConflictError: (``dp_config.dataset_id``) the dataset has no budget and no
                ``default_epsilon_cap`` is set, or its budget's δ ≥ 1/N (the message
                names the budget's δ and N).
            BudgetExceededError: the budget is spent, or one (σ, q) step would exceed it.
        """
        with self.db.sessions() as session:
            row = self._row(session, tenant_id, dataset_id, lock=False)
            if row is None:
                if self.default_epsilon_cap is None:
                    raise _no_budget(dataset_id, field="dp_config.dataset_id")
                return
            budget = self._budget(session, row)
        try:
            check_delta(delta=budget.delta, dataset_size=dataset_size, field="delta")
        except ConfigError as exc:
            raise ConflictError(
                f"the privacy budget of dataset {dataset_id!r} cannot protect this run's "
                f"dataset_size: the budget's delta (δ) {exc.message}. A budget's δ is fixed "
                "when it is created: an admin must create a budget with a smaller δ for this "
                "data (tensafe admin create-budget ... --delta D); the run was not created",
                field="dp_config.dataset_id",
            ) from None
        cap = budget.epsilon_cap
        if noise_multiplier is None or sample_rate is None:
            spent = budget.epsilon()
            if spent >= cap:
                raise BudgetExceededError(
                    f"privacy budget exhausted for dataset {dataset_id!r}: ε spent "
                    f"{spent:.6g} of cap {cap:.6g} (δ={budget.delta:g}); the run was not created"
                )
            return
        decision = budget.check_step(
            run_id="run (not created)", noise_multiplier=noise_multiplier, sample_rate=sample_rate
        )
        if not decision.allowed:
            raise BudgetExceededError(
                f"privacy budget exceeded for dataset {dataset_id!r}: one step of this run "
                f"(σ={noise_multiplier:g}, q={sample_rate:g}) would raise the dataset's ε from "
                f"{decision.epsilon_before:.6g} to {decision.epsilon_after:.6g}, above its cap "
                f"{cap:.6g} (δ={budget.delta:g}); the run was not created"
            )

    # ------------------------------------------------------------------- steps
    def run_step(
        self,
        *,
        tenant_id: str,
        dataset_id: str,
        run_id: str,
        noise_multiplier: float,
        sample_rate: float,
        max_grad_norm: float,
        dataset_size: int,
        delta: float,
        take_step: Callable[[], R],
        effects: Callable[[Session, R, StepOutcome], None],
        on_refusal: Callable[[Session, str], None] | None = None,
    ) -> tuple[R, StepOutcome]:
        """Check, step, charge, ledger and commit — in one transaction under the lock.

        ``take_step`` runs only if the step fits (so no noise is drawn for a refused
        step); ``effects`` writes the caller's rows (dp_steps, the completed future)
        into the same transaction.

        Raises:
            BudgetExceededError: the step would exceed the cap; a ``step_refused``
                row was committed; ``take_step`` was not called.
            ConflictError: the dataset has no budget (and no default cap is set).
        """
        self.key()  # before any transaction: the keyring uses its own connection
        with self._lock:
            known = (tenant_id, dataset_id) in self._cache
        if not known:
            self._ensure_budget(tenant_id=tenant_id, dataset_id=dataset_id, delta=delta)
        budget: DatasetBudget | None = None
        charge: StepCharge | None = None
        refusal: str | None = None
        try:
            with self.db.transaction() as session:
                row = self._get_row(session, tenant_id, dataset_id, lock=True)
                budget = self._budget(session, row)
                decision = budget.check_step(
                    run_id=run_id, noise_multiplier=noise_multiplier, sample_rate=sample_rate
                )
                common: dict[str, object] = {
                    "tenant_id": tenant_id,
                    "dataset_id": dataset_id,
                    "run_id": run_id,
                    "noise_multiplier": decision.noise_multiplier,
                    "sample_rate": decision.sample_rate,
                    "max_grad_norm": float(max_grad_norm),
                    "dataset_size": int(dataset_size),
                    "delta": budget.delta,
                    "accountant": budget.accountant,
                    "library_versions": self.versions(budget.schedule),
                }
                if not decision.allowed:
                    refusal = (
                        f"privacy budget exceeded for dataset {dataset_id!r}: step "
                        f"{decision.step} of run {run_id} would raise the dataset's ε from "
                        f"{decision.epsilon_before:.6g} to {decision.epsilon_after:.6g}, above "
                        f"its cap {decision.cap:.6g} (δ={budget.delta:g}); nothing was applied "
                        "and the refusal was recorded in the ledger"
                    )
                    self._append(
                        session,
                        row,
                        {
                            **common,
                            "kind": "step_refused",
                            "step": decision.step,
                            "epsilon_step": decision.epsilon_step,
                            "epsilon_run_total": decision.epsilon_run,
                            "epsilon_dataset_total": decision.epsilon_before,
                            "epsilon_requested": decision.epsilon_after,
                            "cap": decision.cap,
                            "created_at": utc_timestamp(),
                        },
                    )
                    if on_refusal is not None:
                        on_refusal(session, refusal)
                else:
                    result = take_step()
                    charge = budget.record_step(
                        run_id=run_id, noise_multiplier=noise_multiplier, sample_rate=sample_rate
                    )
                    event = self._append(
                        session,
                        row,
                        {
                            **common,
                            "kind": "dp_step",
                            "step": charge.step,
                            "epsilon_step": charge.epsilon_step,
                            "epsilon_run_total": charge.epsilon_run_total,
                            "epsilon_dataset_total": charge.epsilon_dataset_total,
                            "cap": charge.cap,
                            "created_at": utc_timestamp(),
                        },
                    )
                    outcome = StepOutcome(charge=charge, event=event)
                    effects(session, result, outcome)
        except BaseException:
            if charge is not None and budget is not None:
                try:
                    budget.revert_step(charge)
                except ConfigError:
                    log.exception("could not revert the in-memory charge")
            self._forget(tenant_id, dataset_id)
            raise
        self._set_head(row, budget)
        if refusal is not None:
            raise BudgetExceededError(refusal)
        return result, outcome

    # ----------------------------------------------------------------- reading
    def list_budgets(self, *, tenant_id: str | None = None) -> list[PrivacyBudgetRow]:
        with self.db.sessions() as session:
            query = select(PrivacyBudgetRow).order_by(
                PrivacyBudgetRow.tenant_id, PrivacyBudgetRow.dataset_id
            )
            if tenant_id is not None:
                query = query.where(PrivacyBudgetRow.tenant_id == tenant_id)
            return list(session.scalars(query))

    def budget_summary(
        self, *, tenant_id: str, dataset_id: str, exact: bool = True
    ) -> dict[str, Any]:
        """Cap, δ, ε spent (conservative and exact), remaining, and per-run usage.

        Raises:
            NotFoundError: no budget for the dataset (or another tenant's).
        """
        with self.db.sessions() as session:
            row = self._get_row(session, tenant_id, dataset_id)
            budget = self._budget(session, row)
            refusals = sum(
                1 for r in self.events(session, tenant_id, dataset_id) if r.kind == "step_refused"
            )
        spent = budget.epsilon()
        runs = [
            {
                "run_id": run,
                "steps": budget.steps(run),
                "epsilon": budget.run_epsilon(run),
            }
            for run in budget.histories
        ]
        return {
            "dataset_id": row.dataset_id,
            "epsilon_cap": row.epsilon_cap,
            "delta": row.delta,
            "accountant": row.accountant,
            "epsilon_spent": spent,
            "epsilon_spent_exact": budget.exact_epsilon() if exact else None,
            "epsilon_remaining": max(0.0, row.epsilon_cap - spent),
            "total_steps": budget.steps(),
            "refusals": refusals,
            "runs": runs,
            "ledger_head_seq": row.head_seq,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }

    def audit_report(
        self, *, tenant_id: str, dataset_id: str, recompute: bool = True
    ) -> AuditReport:
        """The audit report of one dataset, from its ledger rows alone.

        Raises:
            NotFoundError: no budget for the dataset (or another tenant's).
        """
        with self.db.sessions() as session:
            row = self._get_row(session, tenant_id, dataset_id)
            rows = self.events(session, tenant_id, dataset_id)
        mappings = [event_mapping(r) for r in rows]
        events: list[LedgerEvent] = []
        for m in mappings:
            try:
                events.append(LedgerEvent.from_row(m))
            except ConfigError:
                continue  # the chain check below reports it
        report = build_report(
            events,
            dataset_id=dataset_id,
            tenant_id=tenant_id,
            key=None,
            cap=row.epsilon_cap,
            recompute=recompute,
        )
        chain = verify_chain(
            mappings, self.key(), expected_head=ChainHead(seq=row.head_seq, link=row.head_link)
        )
        warnings = list(report.warnings)
        if not chain.ok:
            warnings.insert(
                0,
                f"The ledger's integrity check failed at entry {chain.first_broken_seq}: "
                f"{chain.reason}. The figures below cannot be trusted.",
            )
        data = report.to_dict()
        data["chain"] = chain.to_dict()
        data["warnings"] = warnings
        return AuditReport.from_dict(data)

    def verify(
        self, *, tenant_id: str | None = None, dataset_id: str | None = None
    ) -> list[VerifyResult]:
        """Verify every chain (of a tenant, of a dataset): links, numbering, head."""
        key = self.key()
        results: list[VerifyResult] = []
        with self.db.sessions() as session:
            query = select(PrivacyBudgetRow).order_by(
                PrivacyBudgetRow.tenant_id, PrivacyBudgetRow.dataset_id
            )
            if tenant_id is not None:
                query = query.where(PrivacyBudgetRow.tenant_id == tenant_id)
            if dataset_id is not None:
                query = query.where(PrivacyBudgetRow.dataset_id == dataset_id)
            for row in session.scalars(query):
                rows = self.events(session, row.tenant_id, row.dataset_id)
                report = verify_chain(
                    [event_mapping(r) for r in rows],
                    key,
                    expected_head=ChainHead(seq=row.head_seq, link=row.head_link),
                )
                results.append(VerifyResult(row.tenant_id, row.dataset_id, report))
        return results


def _no_budget(dataset_id: str, *, field: str = "dataset_id") -> ConflictError:
    return ConflictError(
        f"no privacy budget for dataset {dataset_id!r}; an admin must create one "
        f"(tensafe admin create-budget TENANT {dataset_id} --epsilon-cap E, or "
        "POST /v1/budgets)",
        field=field,
    )


def first_broken(results: Sequence[VerifyResult]) -> VerifyResult | None:
    return next((r for r in results if not r.report.ok), None)


__all__ = [
    "DEFAULT_DELTA",
    "LEDGER_KEY_OWNER",
    "BudgetService",
    "StepOutcome",
    "VerifyResult",
    "derive_ledger_key",
    "event_mapping",
    "event_of",
    "first_broken",
]
