"""Migration 0004 carries the old ``dp_steps`` table into the ledger (SQLite and
PostgreSQL): a database at revision 0003 with steps recorded before the ledger
existed, steps recorded in both, and carried steps, upgraded to head — no step is
lost, the chains verify, and the ``dp_steps`` view shows every step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from server.db.migrate import upgrade_database
from server.db.models import DPStepRow, LedgerEventRow, PrivacyBudgetRow, Tenant, TrainingRunRow
from server.db.session import Database
from server.services.audits import budget_summary, verify_chains
from server.services.budgets import BudgetService
from server.services.keys import build_keyring
from server.services.ledger import derive_ledger_key
from server.services.legacy_dp_steps import carry_over_legacy_dp_steps
from server.services.run_history import accountant_history
from server.settings import Settings
from tensafe.audit import GENESIS, ChainHead, append, utc_timestamp
from tensafe.privacy.budget import DatasetBudget
from tests.server.databases import postgres_available, postgres_database

SIGMA, Q = 1.0, 0.01
LEDGER_COLUMNS = (
    "tenant_id", "dataset_id", "seq", "kind", "run_id", "step", "noise_multiplier",
    "sample_rate", "max_grad_norm", "dataset_size", "delta", "accountant", "epsilon_step",
    "epsilon_run_total", "epsilon_dataset_total", "epsilon_requested", "cap", "actor",
    "reason", "library_versions", "created_at", "prev_link", "link",
)  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database at revision 0003 (before the ledger was the one record)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'legacy.db'}"
        upgrade_database(url, revision="0003")
        db = Database(url)
        yield db
        db.dispose()
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_database() as url:
        upgrade_database(url, revision="0003")
        db = Database(url)
        yield db
        db.dispose()


def _legacy_row(run: str, seq: int, *, origin: tuple[str, int] | None = None) -> dict:
    return {
        "run_id": run, "tenant_id": "t1", "seq": seq, "model_step": None if origin else seq,
        "future_id": None, "origin_run_id": origin[0] if origin else None,
        "origin_seq": origin[1] if origin else None, "noise_multiplier": SIGMA,
        "sample_rate": Q, "max_grad_norm": 1.0, "dataset_size": 1000,
        "expected_batch_size": 10.0, "delta": 1e-5, "accountant": "prv",
        "epsilon": None if origin else 0.1 * seq, "dataset_id": "d" if run != "run-c" else None,
        "library_versions": json.dumps({"torch": "2.x"}), "created_at": "2026-11-20 10:00:00",
    }  # fmt: skip


def _seed_old_database(db: Database, key: bytes) -> float:
    """Runs A (steps 1–2 before the ledger, 3–4 in it), B (carried A's 1–2, then one
    step of its own in the ledger), C (one step before the ledger, on a dataset that
    never had a budget). Returns dataset d's cap: what its ledger steps spent."""
    with db.transaction() as session:
        session.add(Tenant(tenant_id="t1", name="legacy tenant"))
        session.flush()
        for run in ("run-a", "run-b", "run-c"):
            dataset = "other" if run == "run-c" else "d"
            session.add(TrainingRunRow(
                run_id=run, tenant_id="t1", status="READY", model_ref="tiny-llama",
                dp_enabled=True, config={"dp_config": {"dataset_id": dataset}},
            ))  # fmt: skip
    budget = DatasetBudget(dataset_id="d", epsilon_cap=1e9, delta=1e-5, accountant="prv")
    base = {"tenant_id": "t1", "dataset_id": "d", "delta": 1e-5, "accountant": "prv",
            "library_versions": {"epsilon_schedule": budget.schedule.spec}}  # fmt: skip
    charges = [budget.record_step(run_id=r, noise_multiplier=SIGMA, sample_rate=Q)
               for r in ("run-a", "run-a", "run-b")]  # fmt: skip
    cap = budget.epsilon()
    events = [append(GENESIS, base | {"kind": "budget_created", "epsilon_dataset_total": 0.0,
                                      "cap": cap, "created_at": utc_timestamp()}, key)]  # fmt: skip
    for charge in charges:
        fields = base | {
            "kind": "dp_step", "run_id": charge.run_id, "step": charge.step,
            "noise_multiplier": SIGMA, "sample_rate": Q, "max_grad_norm": 1.0,
            "dataset_size": 1000, "epsilon_step": charge.epsilon_step,
            "epsilon_run_total": charge.epsilon_run_total,
            "epsilon_dataset_total": charge.epsilon_dataset_total, "cap": cap,
            "created_at": utc_timestamp(),
        }  # fmt: skip
        events.append(append(ChainHead.after(events[-1]), fields, key))
    legacy = [_legacy_row("run-a", s) for s in (1, 2, 3, 4)]
    legacy += [_legacy_row("run-b", 1, origin=("run-a", 1)),
               _legacy_row("run-b", 2, origin=("run-a", 2)), _legacy_row("run-b", 3),
               _legacy_row("run-c", 1)]  # fmt: skip
    with db.transaction() as session:
        for event in events:
            row = event.to_row()
            row["library_versions"] = json.dumps(row["library_versions"])
            names = ", ".join(LEDGER_COLUMNS)
            values = ", ".join(f":{c}" for c in LEDGER_COLUMNS)
            session.execute(text(f"INSERT INTO ledger_events ({names}) VALUES ({values})"),
                            {c: row[c] for c in LEDGER_COLUMNS})  # fmt: skip
        session.execute(
            text("INSERT INTO privacy_budgets (tenant_id, dataset_id, epsilon_cap, delta, "
                 "accountant, head_seq, head_link, created_at, updated_at) VALUES ('t1', 'd', "
                 ":cap, 1e-5, 'prv', :seq, :link, :now, :now)"),
            {"cap": cap, "seq": events[-1].seq, "link": events[-1].link,
             "now": "2026-11-20 10:00:00"},
        )  # fmt: skip
        for row in legacy:
            names = ", ".join(row)
            session.execute(text(f"INSERT INTO dp_steps ({names}) VALUES "
                                 f"({', '.join(':' + c for c in row)})"), row)  # fmt: skip
    return cap


def test_legacy_steps_move_into_the_ledger(old_database: Database, tmp_path: Path) -> None:
    db = old_database
    settings = Settings(environment="development", data_dir=tmp_path / "data")
    budgets = BudgetService(db, build_keyring(settings, db))
    cap_before = _seed_old_database(db, derive_ledger_key(budgets.keyring))

    upgrade_database(db.url)
    assert "dp_steps_legacy" in inspect(db.engine).get_table_names()
    assert carry_over_legacy_dp_steps(db, budgets) == 2 + 2 + 1  # A's early, B's carried, C
    assert "dp_steps_legacy" not in inspect(db.engine).get_table_names()
    assert carry_over_legacy_dp_steps(db, budgets) == 0  # once

    with db.sessions() as session:
        histories = {r: accountant_history(session, r) for r in ("run-a", "run-b", "run-c")}
        assert {r: len(h) for r, h in histories.items()} == {"run-a": 4, "run-b": 3, "run-c": 1}
        rows = {r.run_id: r for r in session.scalars(select(LedgerEventRow))}
        view = list(session.scalars(select(DPStepRow).order_by(DPStepRow.run_id, DPStepRow.seq)))
        a_rows = [r for r in view if r.run_id == "run-a"]
        assert [r.seq for r in a_rows] == [1, 2, 3, 4]
        b_rows = [r for r in view if r.run_id == "run-b"]
        assert [r.kind for r in b_rows] == ["dp_step", "dp_step_carried", "dp_step_carried"]
        # B's carried steps name A's two early steps, now ledger rows of A
        carried = list(session.scalars(select(LedgerEventRow).where(
            LedgerEventRow.kind == "dp_step_carried").order_by(LedgerEventRow.seq)))  # fmt: skip
        early = list(session.scalars(select(LedgerEventRow).where(
            LedgerEventRow.run_id == "run-a", LedgerEventRow.actor == "migration:0004"
        ).order_by(LedgerEventRow.seq)))  # fmt: skip
        assert [(c.origin_run_id, c.origin_seq) for c in carried] == [
            ("run-a", e.seq) for e in early
        ]
        assert len(early) == 2 and rows
        d_budget, other = (
            session.scalars(select(PrivacyBudgetRow).where(PrivacyBudgetRow.dataset_id == name))
            .one() for name in ("d", "other")
        )  # fmt: skip
        kinds = [r.kind for r in budgets.events(session, "t1", "d")]
    # the early steps were charged, and the cap raised to what they spent (a ledger row)
    assert d_budget.epsilon_cap > cap_before and "budget_changed" in kinds
    assert other.epsilon_cap > 0
    summary = budget_summary(budgets, tenant_id="t1", dataset_id="d")
    assert summary["total_steps"] == 5 and summary["epsilon_spent"] <= summary["epsilon_cap"]
    assert [r.report.ok for r in verify_chains(budgets, tenant_id="t1")] == [True, True]
    budgets.close()
