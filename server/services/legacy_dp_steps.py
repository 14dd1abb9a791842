"""Carry the rows of the old ``dp_steps`` table into the ledger (once, after migration 0004).

Migration 0004 makes ``dp_steps`` a view of ``ledger_events``; a non-empty table is
kept as ``dp_steps_legacy`` because appending ledger rows needs the ledger key,
which only the server holds. :func:`carry_over_legacy_dp_steps` runs at server start
and by ``tensafe db upgrade``, in one transaction, and then drops the table:

* an **own step** already has its ``dp_step`` ledger row when its run was charged to
  a budget. Steps from before budgets existed have none; they are the run's earliest,
  so a run's last *k* own rows are matched with its *k* ledger rows and the others
  are appended as ``dp_step`` rows now — charged to the run's dataset, whose cap is
  raised (a ``budget_changed`` row) or whose budget is created, with
  ``actor="migration:0004"``, if the charge does not fit: those steps happened, and
  the ledger must never show less ε than was spent;
* a **carried step** (``origin_run_id`` set) becomes a ``dp_step_carried`` row of its
  run, its origin named by the ledger ``seq`` of the original step.

The exact ε the table kept per own step is not copied (ledger rows are append-only,
and the older rows predate ``epsilon_run_exact``): it is a function of the run's
history, which the audit report recomputes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from server.db.models import LedgerEventRow, PrivacyBudgetRow, TrainingRunRow
from server.db.session import Database
from server.services.budgets import DEFAULT_DELTA, BudgetService
from server.services.ledger import charge_fields
from server.services.wire import DEFAULT_DATASET_ID
from tensafe.audit import utc_timestamp
from tensafe.privacy.budget import DatasetBudget

log = logging.getLogger("tensafe.server.migration")

LEGACY_TABLE = "dp_steps_legacy"
ACTOR = "migration:0004"


@dataclass(frozen=True)
class _Legacy:
    run_id: str
    tenant_id: str
    seq: int
    origin_run_id: str | None
    origin_seq: int | None
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    dataset_size: int
    dataset_id: str | None


def carry_over_legacy_dp_steps(db: Database, budgets: BudgetService) -> int:
    """Append the legacy table's missing rows to the ledger and drop it; returns how
    many ledger rows were appended (0 when there is no legacy table)."""
    if LEGACY_TABLE not in inspect(db.engine).get_table_names():
        return 0
    budgets.key()  # before the transaction: the keyring uses its own connection
    appended = 0
    touched: set[tuple[str, str]] = set()
    try:
        with db.transaction() as session:
            legacy = _read(session)
            runs = {r.run_id for r in legacy}
            seq_of: dict[tuple[str, int], int] = {}  # (run, legacy seq) -> ledger seq
            for run_id in sorted(runs):
                own = [r for r in legacy if r.run_id == run_id and r.origin_run_id is None]
                appended += _own_steps(session, budgets, own, seq_of, touched)
            for row in legacy:
                if row.origin_run_id is not None:
                    _carried_step(session, budgets, row, seq_of, touched)
                    appended += 1
            session.execute(text(f"DROP TABLE {LEGACY_TABLE}"))
    finally:
        for tenant_id, dataset_id in touched:
            budgets.discard(tenant_id=tenant_id, dataset_id=dataset_id)
    log.warning("carried %d legacy dp_steps row(s) into the ledger", appended)
    return appended


def _read(session: Session) -> list[_Legacy]:
    rows = session.execute(
        text(
            "SELECT run_id, tenant_id, seq, origin_run_id, origin_seq, noise_multiplier, "
            f"sample_rate, max_grad_norm, dataset_size, dataset_id FROM {LEGACY_TABLE} "
            "ORDER BY run_id, seq"
        )
    )
    return [_Legacy(*row) for row in rows]


def _dataset_of(session: Session, row: _Legacy) -> str:
    """The dataset the run is charged to: the row's, else the run's config, else default."""
    if row.dataset_id:
        return row.dataset_id
    run = session.get(TrainingRunRow, row.run_id)
    named: Any = None if run is None else (run.config.get("dp_config") or {}).get("dataset_id")
    return str(named) if named else DEFAULT_DATASET_ID


def _own_steps(
    session: Session,
    budgets: BudgetService,
    own: list[_Legacy],
    seq_of: dict[tuple[str, int], int],
    touched: set[tuple[str, str]],
) -> int:
    if not own:
        return 0
    run_id = own[0].run_id
    recorded = list(
        session.scalars(
            select(LedgerEventRow.seq)
            .where(LedgerEventRow.run_id == run_id, LedgerEventRow.kind == "dp_step")
            .order_by(LedgerEventRow.seq)
        )
    )
    matched = min(len(own), len(recorded))
    missing = own[: len(own) - matched]
    for legacy, ledger_seq in zip(
        own[len(own) - matched :], recorded[len(recorded) - matched :], strict=True
    ):
        seq_of[(run_id, legacy.seq)] = ledger_seq
    if not missing:
        return 0
    tenant_id, dataset_id = own[0].tenant_id, _dataset_of(session, own[0])
    touched.add((tenant_id, dataset_id))
    row, budget = _locked_budget(session, budgets, tenant_id, dataset_id)
    _make_room(session, budgets, row, budget, missing)
    for legacy in missing:
        charge = budget.record_step(
            run_id=run_id,
            noise_multiplier=legacy.noise_multiplier,
            sample_rate=legacy.sample_rate,
        )
        event = budgets.append(
            session,
            row,
            _common(budgets, legacy, budget, dataset_id)
            | charge_fields(charge)
            | {
                "reason": "a step taken before the privacy ledger existed (from dp_steps)",
                "actor": ACTOR,
            },
        )
        seq_of[(run_id, legacy.seq)] = event.seq
    return len(missing)


def _carried_step(
    session: Session,
    budgets: BudgetService,
    legacy: _Legacy,
    seq_of: dict[tuple[str, int], int],
    touched: set[tuple[str, str]],
) -> None:
    assert legacy.origin_run_id is not None and legacy.origin_seq is not None
    origin_seq = seq_of.get((legacy.origin_run_id, legacy.origin_seq))
    if origin_seq is None:  # the origin run is gone: keep the step, name it as recorded
        log.warning(
            "legacy carried step of %s: origin (%s, %d) not found; kept under its old number",
            legacy.run_id,
            legacy.origin_run_id,
            legacy.origin_seq,
        )
        origin_seq = legacy.origin_seq
    tenant_id, dataset_id = legacy.tenant_id, _dataset_of(session, legacy)
    touched.add((tenant_id, dataset_id))
    row, budget = _locked_budget(session, budgets, tenant_id, dataset_id)
    budgets.append(
        session,
        row,
        _common(budgets, legacy, budget, dataset_id)
        | {
            "kind": "dp_step_carried",
            "origin_run_id": legacy.origin_run_id,
            "origin_seq": origin_seq,
            "epsilon_dataset_total": budget.epsilon(),
            "cap": budget.epsilon_cap,
        },
    )


def _common(
    budgets: BudgetService, legacy: _Legacy, budget: DatasetBudget, dataset_id: str
) -> dict[str, object]:
    versions = budgets.versions(budget.schedule)
    return {
        "tenant_id": legacy.tenant_id,
        "dataset_id": dataset_id,
        "run_id": legacy.run_id,
        "noise_multiplier": legacy.noise_multiplier,
        "sample_rate": legacy.sample_rate,
        "max_grad_norm": legacy.max_grad_norm,
        "dataset_size": legacy.dataset_size,
        "delta": budget.delta,
        "accountant": budget.accountant,
        "library_versions": {"migrated_from": "dp_steps", **versions},
        "created_at": utc_timestamp(),
    }


def _locked_budget(
    session: Session, budgets: BudgetService, tenant_id: str, dataset_id: str
) -> tuple[PrivacyBudgetRow, DatasetBudget]:
    """The dataset's budget, locked; created (cap 0, raised as its steps need) if none."""
    if budgets.find_row(session, tenant_id=tenant_id, dataset_id=dataset_id) is None:
        budgets.insert_budget(
            session,
            tenant_id=tenant_id,
            dataset_id=dataset_id,
            epsilon_cap=0.0,
            delta=DEFAULT_DELTA,
            accountant="prv",
            actor=ACTOR,
            reason="a budget for steps taken before the privacy ledger existed (from dp_steps)",
        )
    return budgets.lock(session, tenant_id=tenant_id, dataset_id=dataset_id)


def _make_room(
    session: Session,
    budgets: BudgetService,
    row: PrivacyBudgetRow,
    budget: DatasetBudget,
    steps: list[_Legacy],
) -> None:
    """Raise the cap, with a ``budget_changed`` row, to what the steps spent if needed."""
    probe = DatasetBudget.from_state(
        {**budget.export_state(), "epsilon_cap": float("1e300")}, schedule=budget.schedule
    )
    for legacy in steps:
        probe.record_step(
            run_id=legacy.run_id,
            noise_multiplier=legacy.noise_multiplier,
            sample_rate=legacy.sample_rate,
        )
    needed = probe.epsilon()
    if needed > budget.epsilon_cap:
        budgets.set_cap(
            session,
            row,
            budget,
            needed,
            actor=ACTOR,
            reason="raised to what steps taken before the privacy ledger spent (from dp_steps)",
        )


__all__ = ["LEGACY_TABLE", "carry_over_legacy_dp_steps"]
