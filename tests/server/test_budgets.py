"""Privacy budgets and the ledger at the service layer, on SQLite and PostgreSQL:
exact enforcement, racing writers, append-only guards, tamper detection. Steps go
through :func:`~server.services.dp_step.charge_and_step` with real tiny engines."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from server.db.models import LedgerEventRow, LedgerImmutableError
from server.db.session import Database
from server.services.audits import audit_report, budget_summary, first_broken, verify_chains
from server.services.budgets import BudgetService
from server.services.keys import build_keyring
from server.settings import Settings
from tensafe.errors import BudgetExceededError
from tensafe.privacy.budget import DatasetBudget
from tests.server.budget_steps import SIGMA, Q, RecordingEngine
from tests.server.budget_steps import step as charged_step

_ENGINES: dict[str, RecordingEngine] = {}


def _engine(run: str) -> RecordingEngine:
    """One real engine per run id (runs of different tests never share an id)."""
    if run not in _ENGINES:
        _ENGINES[run] = RecordingEngine()
    return _ENGINES[run]


@pytest.fixture(scope="session")
def _key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One keyring for the session: the databases are shared by the session's tests."""
    return tmp_path_factory.mktemp("ledger-keys")


@pytest.fixture
def tmp_path(_key_dir: Path) -> Path:  # the services of every test share the keyring
    return _key_dir


def _service(database: Database, tmp_path: Path) -> BudgetService:
    settings = Settings(environment="development", data_dir=tmp_path / "data")
    return BudgetService(database, build_keyring(settings, database))


def _cap_for(k: int, *, delta: float = 1e-5) -> float:
    """A cap that allows exactly k (σ, q) steps (conservative ε of k steps)."""
    probe = DatasetBudget(dataset_id="probe", epsilon_cap=1e9, delta=delta, accountant="prv")
    for _ in range(k):
        probe.record_step(run_id="r", noise_multiplier=SIGMA, sample_rate=Q)
    return probe.epsilon()


def _step(service: BudgetService, tenant: str, dataset: str, run: str, taken: list[int]) -> Any:
    seq = charged_step(service, _engine(run), tenant_id=tenant, dataset_id=dataset, run_id=run)
    taken.append(int(seq))
    return seq


def _ids() -> tuple[str, str]:
    return "ten_" + uuid.uuid4().hex[:12], "ds-" + uuid.uuid4().hex[:8]


def test_exact_enforcement_k_allowed_then_refused(database: Database, tmp_path: Path) -> None:
    service = _service(database, tmp_path)
    tenant, dataset = _ids()
    k = 5
    service.create_budget(tenant_id=tenant, dataset_id=dataset, epsilon_cap=_cap_for(k))
    taken: list[int] = []
    run = f"run-a-{dataset}"
    for _ in range(k):
        _step(service, tenant, dataset, run, taken)
    engine = _engine(run)
    called = engine.calls[k:]

    with pytest.raises(BudgetExceededError, match="budget exceeded"):
        charged_step(service, engine, tenant_id=tenant, dataset_id=dataset, run_id=run)
    called = engine.calls[k:]
    assert called == []  # refused before any noise could be drawn
    summary = budget_summary(service, tenant_id=tenant, dataset_id=dataset)
    assert summary["total_steps"] == k and summary["refusals"] == 1
    assert summary["epsilon_spent"] <= summary["epsilon_cap"]
    with database.sessions() as session:
        kinds = [r.kind for r in service.events(session, tenant, dataset)]
    assert kinds == ["budget_created"] + ["dp_step"] * k + ["step_refused"]
    # raising the cap lets the run go on, and is a ledger event
    service.change_cap(tenant_id=tenant, dataset_id=dataset, epsilon_cap=_cap_for(k + 1))
    _step(service, tenant, dataset, run, taken)
    with pytest.raises(Exception, match="already been spent"):
        service.change_cap(tenant_id=tenant, dataset_id=dataset, epsilon_cap=0.001)
    (result,) = verify_chains(service, tenant_id=tenant)
    assert result.report.ok and result.report.checked == k + 4
    report = audit_report(service, tenant_id=tenant, dataset_id=dataset)
    assert report.ok, report.warnings
    assert report.recompute is not None and report.recompute.all_agree


def test_no_budget_is_refused_unless_default_cap(database: Database, tmp_path: Path) -> None:
    service = _service(database, tmp_path)
    tenant, dataset = _ids()
    with pytest.raises(Exception, match="no privacy budget"):
        _step(service, tenant, dataset, f"r-{dataset}", [])
    service.default_epsilon_cap = 3.0
    _step(service, tenant, dataset, f"r-{dataset}", [])
    with database.sessions() as session:
        first = service.events(session, tenant, dataset)[0]
    assert first.kind == "budget_created" and first.actor == "server:default_epsilon_cap"


def test_racing_writers_never_exceed_the_cap(database: Database, tmp_path: Path) -> None:
    """8 writers × 12 steps, each with its own service (as separate processes would)."""
    tenant, dataset = _ids()
    cap_steps = 40
    creator = _service(database, tmp_path)
    creator.create_budget(tenant_id=tenant, dataset_id=dataset, epsilon_cap=_cap_for(cap_steps))
    accepted: list[int] = []
    refused: list[int] = []
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        service = _service(database, tmp_path)
        for _ in range(12):
            try:
                _step(service, tenant, dataset, f"run-{i}-{dataset}", accepted)
            except BudgetExceededError:
                refused.append(i)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(accepted) == cap_steps and len(refused) == 8 * 12 - cap_steps
    summary = budget_summary(creator, tenant_id=tenant, dataset_id=dataset)
    assert summary["epsilon_spent"] <= summary["epsilon_cap"]
    assert summary["total_steps"] == cap_steps and summary["refusals"] == len(refused)
    with database.sessions() as session:
        rows = creator.events(session, tenant, dataset)
    assert sum(r.kind == "dp_step" for r in rows) == cap_steps
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    (result,) = verify_chains(creator, tenant_id=tenant)
    assert result.report.ok


def _tamper(database: Database, statements: list[str], params: dict[str, Any]) -> None:
    """Run SQL on ledger_events with its append-only triggers bypassed."""
    with database.engine.connect() as conn:
        if database.dialect == "postgresql":
            conn.execute(text("ALTER TABLE ledger_events DISABLE TRIGGER USER"))
            for sql in statements:
                conn.execute(text(sql), params)
            conn.execute(text("ALTER TABLE ledger_events ENABLE TRIGGER USER"))
            conn.commit()
            return
        conn.execute(text("DROP TRIGGER ledger_events_no_update"))
        conn.execute(text("DROP TRIGGER ledger_events_no_delete"))
        for sql in statements:
            conn.execute(text(sql), params)
        msg = "ledger_events is append-only: UPDATE and DELETE are refused"
        for action in ("UPDATE", "DELETE"):
            conn.execute(
                text(
                    f"CREATE TRIGGER ledger_events_no_{action.lower()} BEFORE {action} ON "
                    f"ledger_events BEGIN SELECT RAISE(ABORT, '{msg}'); END"
                )
            )
        conn.commit()


@pytest.mark.parametrize("attack", ["edit", "delete", "reorder", "truncate_tail"])
def test_tampering_is_detected_at_the_first_broken_row(
    database: Database, tmp_path: Path, attack: str
) -> None:
    service = _service(database, tmp_path)
    tenant, dataset = _ids()
    service.create_budget(tenant_id=tenant, dataset_id=dataset, epsilon_cap=50.0)
    for i in range(6):
        _step(service, tenant, dataset, f"run-{i % 2}-{dataset}", [])
    assert verify_chains(service, tenant_id=tenant)[0].report.ok  # 7 rows
    where = "tenant_id = :t AND dataset_id = :d"
    params = {"t": tenant, "d": dataset}
    if attack == "edit":
        sql = [
            f"UPDATE ledger_events SET epsilon_step = epsilon_step / 2 WHERE {where} AND seq = 4"
        ]
        expected = 4
    elif attack == "delete":
        sql = [f"DELETE FROM ledger_events WHERE {where} AND seq = 3"]
        expected = 3
    elif attack == "reorder":
        sql = [
            f"UPDATE ledger_events SET seq = -5 WHERE {where} AND seq = 5",
            f"UPDATE ledger_events SET seq = 5 WHERE {where} AND seq = 6",
            f"UPDATE ledger_events SET seq = 6 WHERE {where} AND seq = -5",
        ]
        expected = 5
    else:
        sql = [f"DELETE FROM ledger_events WHERE {where} AND seq = 7"]
        expected = 7
    _tamper(database, sql, params)
    broken = first_broken(verify_chains(service, tenant_id=tenant))
    assert broken is not None and broken.dataset_id == dataset
    assert broken.report.first_broken_seq == expected, broken.report
    report = audit_report(service, tenant_id=tenant, dataset_id=dataset, recompute=False)
    assert not report.ok and "integrity check failed" in report.warnings[0]


def test_ledger_rows_refuse_update_and_delete(database: Database, tmp_path: Path) -> None:
    service = _service(database, tmp_path)
    tenant, dataset = _ids()
    service.create_budget(tenant_id=tenant, dataset_id=dataset, epsilon_cap=1.0)
    where = {"t": tenant, "d": dataset}
    for sql in (
        "UPDATE ledger_events SET cap = 99 WHERE tenant_id = :t AND dataset_id = :d",
        "DELETE FROM ledger_events WHERE tenant_id = :t AND dataset_id = :d",
    ):
        with pytest.raises(DBAPIError, match="append-only"), database.transaction() as session:
            session.execute(text(sql), where)
    with pytest.raises(LedgerImmutableError), database.transaction() as session:
        row = session.scalars(
            select(LedgerEventRow).where(LedgerEventRow.tenant_id == tenant)
        ).one()
        row.cap = 99.0
    with pytest.raises(LedgerImmutableError), database.transaction() as session:
        row = session.scalars(
            select(LedgerEventRow).where(LedgerEventRow.tenant_id == tenant)
        ).one()
        session.delete(row)
    assert verify_chains(service, tenant_id=tenant)[0].report.ok
