"""Privacy budgets per (tenant, dataset): create, change, admit, lock, summarise.

Design (see ``docs/operations.md``, "Privacy budgets and the ledger"):

* **One chain per (tenant, dataset).** Each ``privacy_budgets`` row holds the head
  (``head_seq``, ``head_link``) of its dataset's chain in ``ledger_events``
  (:mod:`server.services.ledger`); every append moves it in the same transaction, so
  rows deleted from the end are detected too. Chains of different datasets never
  contend.
* **The lock.** Whatever changes a budget — a noisy step
  (:func:`server.services.dp_step.charge_and_step`), a carried history
  (:func:`server.services.run_history.record_load`), a cap change — first locks the
  budget row (:meth:`BudgetService.lock`: ``SELECT ... FOR UPDATE`` on PostgreSQL; on
  SQLite every transaction starts with ``BEGIN IMMEDIATE``, see
  :mod:`server.db.session`, which takes the database write lock). Racing runs on one
  dataset are serialised there, so together they can never exceed the cap.
* **The in-memory budget** (:class:`~tensafe.privacy.budget.DatasetBudget`) is cached
  per dataset together with the chain head it reflects; a different head in the
  database (another process appended, or a failed commit) rebuilds it from the
  ledger rows (:func:`~tensafe.audit.budget_from_events`). After a commit the caller
  hands the new head back (:meth:`BudgetService.settle`); after a failure it drops the
  entry (:meth:`BudgetService.discard`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from server.db.models import LedgerEventRow, PrivacyBudgetRow, utcnow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError, ValidationError
from server.services.ledger import append_event, dataset_rows, derive_ledger_key, event_of
from tensafe.artifacts import TenantKeyring, library_versions
from tensafe.audit import GENESIS_LINK, LedgerEvent, budget_from_events, utc_timestamp
from tensafe.errors import ConfigError
from tensafe.privacy.budget import CapChange, DatasetBudget, accounting_versions
from tensafe.privacy.delta import check_budget_delta
from tensafe.privacy.schedule import EpsilonSchedule

DEFAULT_DELTA = 1e-5

SamplingPolicy = Literal["server-only", "any"]
#: ``server-only``: only runs whose batches the server draws from a server-held dataset;
#: ``any``: client-declared runs too (labelled as such everywhere).
SAMPLING_POLICIES: tuple[str, ...] = ("server-only", "any")


class BudgetService:
    """The privacy budgets of one server process: their rows, their in-memory
    :class:`DatasetBudget` cache, and the ledger key."""

    def __init__(
        self,
        db: Database,
        keyring: TenantKeyring,
        *,
        default_epsilon_cap: float | None = None,
        default_sampling_policy: SamplingPolicy = "any",
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.default_epsilon_cap = default_epsilon_cap
        self.default_sampling_policy = default_sampling_policy
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[DatasetBudget, int]] = {}
        self._schedules: dict[tuple[float, str], EpsilonSchedule] = {}
        self._versions: dict[str, dict[str, str]] = {}
        self._library_versions: dict[str, str] | None = None
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

    def find_row(
        self, session: Session, *, tenant_id: str, dataset_id: str
    ) -> PrivacyBudgetRow | None:
        """The dataset's budget row, or ``None`` (not locked)."""
        return self._row(session, tenant_id, dataset_id, lock=False)

    def get_row(self, session: Session, *, tenant_id: str, dataset_id: str) -> PrivacyBudgetRow:
        """The dataset's budget row (not locked).

        Raises:
            NotFoundError: (``dataset_id``) the dataset has no budget (or another tenant's).
        """
        return self._get_row(session, tenant_id, dataset_id)

    @staticmethod
    def events(session: Session, tenant_id: str, dataset_id: str) -> list[LedgerEventRow]:
        """One dataset's ledger rows, in ``seq`` order."""
        return dataset_rows(session, tenant_id, dataset_id)

    def budget_of(self, session: Session, row: PrivacyBudgetRow) -> DatasetBudget:
        """The in-memory budget matching ``row``'s chain head (read-only use)."""
        return self._budget(session, row)

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
        self, session: Session, row: PrivacyBudgetRow, fields: Mapping[str, object]
    ) -> LedgerEvent:
        return append_event(session, row, fields, self.key())

    # ----------------------------------------------------- changing a budget
    def lock(
        self, session: Session, *, tenant_id: str, dataset_id: str
    ) -> tuple[PrivacyBudgetRow, DatasetBudget]:
        """Lock the dataset's budget row for the rest of ``session``'s transaction and
        return it with the in-memory budget matching its chain head. Call
        :meth:`settle` after the commit, :meth:`discard` after a failure.

        Raises:
            NotFoundError: (``dataset_id``) the dataset has no budget.
        """
        row = self._get_row(session, tenant_id, dataset_id, lock=True)
        return row, self._budget(session, row)

    def append(
        self, session: Session, row: PrivacyBudgetRow, fields: Mapping[str, object]
    ) -> LedgerEvent:
        """Append a row to the locked budget's chain (see :meth:`lock`).

        Raises:
            ConfigError: a field is invalid for the row's kind.
        """
        return self._append(session, row, fields)

    def settle(self, row: PrivacyBudgetRow, budget: DatasetBudget) -> None:
        """After a commit: the in-memory budget now matches ``row``'s chain head."""
        self._set_head(row, budget)

    def discard(self, *, tenant_id: str, dataset_id: str) -> None:
        """After a failed transaction: drop the cached budget (rebuilt from the ledger
        on next use), since its in-memory state may be ahead of the database."""
        self._forget(tenant_id, dataset_id)

    def step_versions(self, budget: DatasetBudget) -> dict[str, str]:
        """``library_versions`` of a step row: what trained (torch, transformers, peft,
        opacus, …) and what computed its ε (:func:`accounting_versions`)."""
        if self._library_versions is None:  # package metadata reads are slow (~10 ms)
            self._library_versions = library_versions()
        return {**self._library_versions, **self.versions(budget.schedule)}

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
        sampling_policy: SamplingPolicy | None = None,
    ) -> PrivacyBudgetRow:
        """Create a dataset's budget and its ``budget_created`` ledger row. The sampling
        policy defaults to the server's (``server-only`` in production).

        Raises:
            ConflictError: the dataset already has a budget.
            ConfigError / ValidationError: invalid cap, δ or accountant.
        """
        if not dataset_id or len(dataset_id) > 200:
            raise ValidationError("must be 1 to 200 characters", field="dataset_id")
        delta = DEFAULT_DELTA if delta is None else float(delta)
        check_budget_delta(delta)
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
                row = self.insert_budget(
                    session,
                    tenant_id=tenant_id,
                    dataset_id=dataset_id,
                    epsilon_cap=float(epsilon_cap),
                    delta=delta,
                    accountant=accountant,
                    actor=actor,
                    reason=reason,
                    sampling_policy=sampling_policy,
                )
        except SAIntegrityError:
            raise ConflictError(
                f"dataset {dataset_id!r} already has a privacy budget", field="dataset_id"
            ) from None
        self._forget(tenant_id, dataset_id)
        return row

    def insert_budget(
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
        sampling_policy: SamplingPolicy | None = None,
    ) -> PrivacyBudgetRow:
        """Insert a budget row and its ``budget_created`` ledger row (flushed, in the
        caller's transaction; the values are not validated here)."""
        now = utcnow()
        policy = sampling_policy or self.default_sampling_policy
        if policy not in SAMPLING_POLICIES:
            raise ConfigError("sampling_policy", f"must be one of {SAMPLING_POLICIES}")
        row = PrivacyBudgetRow(
            sampling_policy=policy,
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
                "sampling_policy": policy,
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
        epsilon_cap: float | None = None,
        sampling_policy: SamplingPolicy | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> PrivacyBudgetRow:
        """Change a budget: raise (or lower, never below the ε spent) its cap, and/or
        set its sampling policy; one ``budget_changed`` row.

        Raises:
            NotFoundError: no budget for the dataset.
            ConfigError: nothing to change; the new cap is invalid, equal, or below the
                ε spent; an unknown policy (``sampling_policy``).
        """
        if epsilon_cap is None and sampling_policy is None:
            raise ConfigError("epsilon_cap", "give a new cap, a sampling policy, or both")
        if sampling_policy is not None and sampling_policy not in SAMPLING_POLICIES:
            raise ConfigError("sampling_policy", f"must be one of {SAMPLING_POLICIES}")
        budget: DatasetBudget | None = None
        self.key()  # before any transaction: the keyring uses its own connection
        try:
            with self.db.transaction() as session:
                row = self._get_row(session, tenant_id, dataset_id, lock=True)
                budget = self._budget(session, row)
                cap = row.epsilon_cap if epsilon_cap is None else epsilon_cap
                policy = sampling_policy or row.sampling_policy
                if cap == row.epsilon_cap and policy == row.sampling_policy:
                    raise ConfigError(
                        "epsilon_cap" if sampling_policy is None else "sampling_policy",
                        f"the budget already has cap {row.epsilon_cap!r} and sampling "
                        f"policy {row.sampling_policy!r}",
                    )
                self.set_cap(
                    session, row, budget, cap, actor=actor, reason=reason, sampling_policy=policy
                )
        except BaseException:
            self._forget(tenant_id, dataset_id)  # the in-memory cap may have moved
            raise
        self._set_head(row, budget)
        return row

    def set_cap(
        self,
        session: Session,
        row: PrivacyBudgetRow,
        budget: DatasetBudget,
        epsilon_cap: float,
        *,
        actor: str | None,
        reason: str | None,
        sampling_policy: SamplingPolicy | None = None,
    ) -> None:
        """Move the locked budget's cap (and policy) and append its ``budget_changed``
        row (see :meth:`lock`).

        Raises:
            ConfigError: the new cap is invalid, or below the ε spent.
        """
        if epsilon_cap > row.epsilon_cap:
            change = budget.raise_cap(epsilon_cap)
        elif epsilon_cap < row.epsilon_cap:
            change = budget.lower_cap(epsilon_cap)
        else:
            change = CapChange(
                previous_cap=row.epsilon_cap,
                new_cap=row.epsilon_cap,
                epsilon_spent=budget.epsilon(),
            )
        row.epsilon_cap = change.new_cap
        row.sampling_policy = sampling_policy or row.sampling_policy
        self._append(
            session,
            row,
            {
                "kind": "budget_changed",
                "tenant_id": row.tenant_id,
                "dataset_id": row.dataset_id,
                "delta": row.delta,
                "accountant": row.accountant,
                "epsilon_dataset_total": change.epsilon_spent,
                "cap": change.new_cap,
                "actor": actor,
                "reason": reason,
                "sampling_policy": row.sampling_policy,
                "library_versions": self.versions(budget.schedule),
                "created_at": utc_timestamp(),
            },
        )

    def ensure_budget(self, *, tenant_id: str, dataset_id: str, delta: float) -> None:
        """Create the default budget on first use when ``default_epsilon_cap`` is set.
        Call outside any transaction (it opens its own).

        Raises:
            ConflictError: the dataset has no budget and there is no default cap.
        """
        with self._lock:
            if (tenant_id, dataset_id) in self._cache:
                return
        with self.db.sessions() as session:
            if self._row(session, tenant_id, dataset_id, lock=False) is not None:
                return
        if self.default_epsilon_cap is None:
            raise no_budget(dataset_id)
        self.key()  # before the transaction: the keyring uses its own connection
        try:
            with self.db.transaction() as session:
                self.insert_budget(
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

    # ----------------------------------------------------------------- reading
    def list_budgets(self, *, tenant_id: str | None = None) -> list[PrivacyBudgetRow]:
        with self.db.sessions() as session:
            query = select(PrivacyBudgetRow).order_by(
                PrivacyBudgetRow.tenant_id, PrivacyBudgetRow.dataset_id
            )
            if tenant_id is not None:
                query = query.where(PrivacyBudgetRow.tenant_id == tenant_id)
            return list(session.scalars(query))


def no_budget(dataset_id: str, *, field: str = "dataset_id") -> ConflictError:
    return ConflictError(
        f"no privacy budget for dataset {dataset_id!r}; an admin must create one "
        f"(tensafe admin create-budget TENANT {dataset_id} --epsilon-cap E, or "
        "POST /v1/budgets)",
        field=field,
    )


__all__ = ["DEFAULT_DELTA", "SAMPLING_POLICIES", "BudgetService", "SamplingPolicy", "no_budget"]
