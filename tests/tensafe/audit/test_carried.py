"""Carried steps through the whole audit: chain, budget, report, recomputation, replay."""

from __future__ import annotations

import pytest

from tensafe.audit import (
    accountant_history,
    budget_from_events,
    build_report,
    render_html,
    verify_chain,
)
from tensafe.audit.ledger import LedgerEvent
from tensafe.audit.recompute import recompute_epsilons, replay_ledger
from tensafe.audit.report import REPORT_FORMAT, AuditReport
from tensafe.privacy.epsilon import compute_epsilon
from tests.tensafe.audit.simulate import (
    KEY,
    Ledger,
    RunSpec,
    carry_into,
    new_ledger,
    run_steps,
)
from tests.tensafe.audit.test_recompute import relinked


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    """``base`` trains 6 steps; ``tuned`` loads it (6 carried) and trains 5; loading it
    again carries nothing; ``fresh`` loads ``tuned`` (11 carried) and never trains."""
    ledger = new_ledger(cap=100.0)
    run_steps(ledger, [RunSpec("base", 1.0, 0.05, 6)], exact=True)
    assert carry_into(ledger, source_run_id="base", target_run_id="tuned") == 6
    run_steps(ledger, [RunSpec("tuned", 1.2, 0.05, 5)], exact=True)
    assert carry_into(ledger, source_run_id="base", target_run_id="tuned") == 0
    assert carry_into(ledger, source_run_id="tuned", target_run_id="fresh") == 11
    return ledger


def test_carried_rows_charge_no_budget(ledger: Ledger) -> None:
    assert verify_chain(ledger.events, KEY, expected_head=ledger.head).ok
    budget = budget_from_events(ledger.events)
    assert (budget.steps("base"), budget.steps("tuned"), budget.steps("fresh")) == (6, 5, 0)
    assert budget.epsilon() == ledger.budget.epsilon()
    assert len(accountant_history(ledger.events, run_id="fresh")) == 11


def test_report_shows_reported_and_conservative_epsilon(ledger: Ledger) -> None:
    report = build_report(ledger.events, dataset_id="patients-2026", key=KEY,
                          expected_head=ledger.head)  # fmt: skip
    assert report.ok, (report.warnings, report.recompute, report.replay)
    assert report.total_steps == 11
    base, tuned, fresh = report.runs
    assert (base.steps, base.carried_steps, tuned.steps, tuned.carried_steps) == (6, 0, 5, 6)
    whole = compute_epsilon(history=[(1.0, 0.05, 6), (1.2, 0.05, 5)], delta=1e-5,
                            accountant="prv")  # fmt: skip
    assert tuned.epsilon == pytest.approx(whole, rel=1e-12)
    assert tuned.epsilon_budget == ledger.budget.run_epsilon("tuned") < tuned.epsilon
    assert tuned.series.epsilon_run[-1] == tuned.epsilon
    assert (fresh.steps, fresh.carried_steps, fresh.epsilon_budget) == (0, 11, 0.0)
    assert fresh.epsilon == pytest.approx(whole, rel=1e-12)
    assert fresh.series.seq == () and fresh.history == ()
    assert report.recompute is not None
    assert [c.subject for c in report.recompute.runs] == ["base", "tuned"]
    assert [(c.subject, c.steps) for c in report.recompute.runs_exact] == [
        ("base", 6), ("tuned", 11), ("fresh", 11),
    ]  # fmt: skip
    assert AuditReport.from_json(report.to_json()) == report
    page = render_html(report)
    assert "Carried" in page and "conservative" in page


def test_format_1_report_json_is_still_read(ledger: Ledger) -> None:
    report = build_report(ledger.events, dataset_id="patients-2026", recompute=False,
                          replay=False)  # fmt: skip
    old = report.to_dict() | {"format": 1}
    old["runs"] = [
        {k: v for k, v in r.items() if k not in {"epsilon_budget", "carried_steps"}}
        for r in old["runs"]  # type: ignore[attr-defined]
    ]
    again = AuditReport.from_dict(old)
    assert again.format == REPORT_FORMAT
    assert [(r.epsilon_budget, r.carried_steps) for r in again.runs] == [
        (r.epsilon, 0) for r in report.runs
    ]


def test_an_under_reported_exact_epsilon_is_flagged(ledger: Ledger) -> None:
    index = max(i for i, e in enumerate(ledger.events) if e.run_id == "tuned")
    event = ledger.events[index]
    assert event.epsilon_run_exact is not None
    bad = relinked(ledger.events, index, epsilon_run_exact=event.epsilon_run_exact * 0.97)
    result = recompute_epsilons(bad)
    checks = {c.subject: c for c in result.runs_exact}
    assert not checks["tuned"].agree_within_1pct and not checks["tuned"].upper_bound_holds
    assert checks["base"].agree_within_1pct and not result.all_agree


def test_replay_checks_that_a_carried_row_charges_nothing(ledger: Ledger) -> None:
    schedule = ledger.budget.schedule
    assert replay_ledger(ledger.events, schedule=schedule).ok
    index = next(i for i, e in enumerate(ledger.events) if e.kind == "dp_step_carried")
    charged = ledger.events[index].epsilon_dataset_total + 0.5
    bad = relinked(ledger.events, index, epsilon_dataset_total=charged)
    fields = {(m.seq, m.field) for m in replay_ledger(bad, schedule=schedule).mismatches}
    assert (ledger.events[index].seq, "epsilon_dataset_total") in fields
    as_row: LedgerEvent = ledger.events[index]
    assert as_row.step is None and as_row.origin_run_id == "base"
