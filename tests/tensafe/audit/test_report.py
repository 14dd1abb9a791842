"""The audit report: content, JSON round trip, and the HTML page."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest

from tensafe.audit.ledger import ChainHead, LedgerEvent
from tensafe.audit.render import render_html
from tensafe.audit.report import AuditReport, build_report
from tensafe.errors import ConfigError
from tests.tensafe.audit.simulate import KEY, Ledger
from tests.tensafe.audit.test_recompute import bulk_ledger, relinked


@pytest.fixture(scope="module")
def report(prv_ledger: Ledger) -> AuditReport:
    return build_report(
        prv_ledger.events,
        dataset_id=prv_ledger.budget.dataset_id,
        key=KEY,
        expected_head=prv_ledger.head,
        cap=prv_ledger.budget.epsilon_cap,
        generated_at="2026-03-05T09:00:00.000000Z",
    )


def test_report_content(report: AuditReport, prv_ledger: Ledger) -> None:
    budget = prv_ledger.budget
    assert report.ok and report.warnings == ()
    assert report.cap == budget.epsilon_cap
    assert report.epsilon_spent == budget.epsilon() <= report.cap
    assert report.epsilon_remaining == pytest.approx(report.cap - report.epsilon_spent)
    assert report.total_steps == 20 and report.ledger_rows == len(prv_ledger.events)
    assert [r.run_id for r in report.runs] == ["run-a", "run-b"]
    run_a = report.runs[0]
    assert run_a.steps == 10 and run_a.history == ((1.0, 0.05, 10),)
    assert run_a.refusals == 2 and run_a.epsilon == budget.run_epsilon("run-a")
    assert run_a.series.steps == tuple(range(1, 11))
    assert list(run_a.series.epsilon_dataset) == sorted(run_a.series.epsilon_dataset)
    assert len(report.refusals) == 4
    assert all(r.epsilon_requested > r.cap for r in report.refusals)
    assert [(c.kind, c.previous_cap, c.actor) for c in report.budget_changes] == [
        ("budget_created", None, "admin:dpo@st-marys.example"),
        ("budget_changed", report.budget_changes[0].new_cap, "admin:dpo"),
    ]
    assert report.chain is not None and report.chain.checked == len(prv_ledger.events)
    assert report.recompute is not None and report.recompute.all_agree
    assert report.replay is not None and report.replay.ok
    assert report.library_versions["epsilon_schedule"] == "geometric:0.0025"


def test_report_json_round_trip(report: AuditReport) -> None:
    again = AuditReport.from_json(report.to_json())
    assert again == report
    assert again.to_json() == report.to_json()
    with pytest.raises(ConfigError):
        AuditReport.from_json('{"format": 99}')


def test_html_is_self_contained_with_plots_and_the_cap(report: AuditReport) -> None:
    page = render_html(report)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing loaded from outside
    assert f"ε = {report.cap:.4g}" in page and "Remaining" in page
    for phrase in ("How to read this report", "Independent check", "Refused steps",
                   "Budget history", "Verified: all"):  # fmt: skip
        assert phrase in page
    HTMLParser().feed(page)  # parses


def test_tampered_ledger_is_reported_loudly(prv_ledger: Ledger) -> None:
    rows = [e.to_row() for e in prv_ledger.events]
    rows[5]["epsilon_dataset_total"] = 0.01
    events = [LedgerEvent.from_row(r) for r in rows]
    report = build_report(
        events, dataset_id="patients-2026", key=KEY, recompute=False, replay=False,
        expected_head=ChainHead.after(prv_ledger.events[-1]),
    )  # fmt: skip
    assert not report.ok and report.chain is not None
    assert report.chain.first_broken_seq == 6
    assert "entry 6" in report.warnings[0]
    assert "LEDGER INTEGRITY CHECK FAILED" in render_html(report)


def test_without_key_or_with_another_cap(prv_ledger: Ledger) -> None:
    report = build_report(
        prv_ledger.events, dataset_id="patients-2026", cap=99.0, recompute=False, replay=False
    )
    assert report.chain is None and not report.ok
    assert "99" in report.warnings[0]
    page = render_html(report)
    assert "Not verified" in page and "Not run." in page
    with pytest.raises(ConfigError):
        build_report(prv_ledger.events, dataset_id="nope")


@pytest.mark.parametrize(
    ("factor", "verdict", "warning"),
    [
        (1.05, "over-reported (safe side)", "never below it"),
        (0.97, "UNDER-REPORTED", "under-reports the privacy spent"),
    ],
)
def test_report_tells_an_over_report_from_an_under_report(
    factor: float, verdict: str, warning: str
) -> None:
    events = bulk_ledger({"a": [(1.0, 0.02, 300)]})
    last = events[-1]
    events = relinked(
        events, len(events) - 1, epsilon_dataset_total=last.epsilon_dataset_total * factor
    )
    report = build_report(events, dataset_id="d", replay=False)
    assert report.recompute is not None and not report.recompute.all_agree
    assert any(warning in w for w in report.warnings), report.warnings
    page = render_html(report)
    assert verdict in page and "agrees" in page  # the run's own total was left alone
