"""``privacy_audit`` ledger rows: validated, chained, tamper-evident, and in the report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tensafe.audit import build_report, canonical_bytes, render_html, verify_chain
from tensafe.audit.canary_render import render_canary_html
from tensafe.audit.canary_result import (
    CanaryAuditResult,
    best_guess,
    privacy_audit_fields,
    result_from_event,
)
from tensafe.audit.ledger import LedgerEvent
from tensafe.audit.report import AuditReport
from tensafe.errors import ConfigError
from tests.tensafe.audit.simulate import KEY, RunSpec, new_ledger, record_audit, run_steps


def audit_result(*, separation: float, fault: str | None = None) -> CanaryAuditResult:
    """A result whose guesses and bound are computed from its own scores."""
    rng = np.random.default_rng(5)
    included = rng.random(400) < 0.5
    scores = rng.normal(size=400) + separation * included
    guess = best_guess(scores, included, delta=1e-5)
    return CanaryAuditResult(
        run_id="audit-run",
        model="tiny-llama",
        canaries=400,
        steps=20,
        noise_multiplier=8.0,
        sample_rate=0.5,
        max_grad_norm=1.0,
        dataset_size=16,
        delta=1e-5,
        accountant="prv",
        canary_norm=10.0,
        confidence=0.95,
        guesses=guess.guesses,
        correct=guess.correct,
        epsilon_lower_bound=guess.epsilon_lower_bound,
        epsilon_upper=1.1,
        included_scores=tuple(scores[included]),
        excluded_scores=tuple(scores[~included]),
        test_fault=fault,
        created_at="2026-03-02T10:00:00.000000Z",
    )


@pytest.fixture(scope="module")
def ledger():
    ledger = new_ledger(cap=10.0)
    run_steps(ledger, [RunSpec("run-a", 1.0, 0.05, 5)])
    record_audit(ledger, audit_result(separation=0.3))
    record_audit(ledger, audit_result(separation=12.0, fault="sigma/10"))
    return ledger


def test_audit_rows_chain_and_charge_nothing(ledger) -> None:
    assert verify_chain(ledger.events, KEY).ok
    audits = [e for e in ledger.events if e.kind == "privacy_audit"]
    assert len(audits) == 2
    before = ledger.events[-3].epsilon_dataset_total
    assert all(e.epsilon_dataset_total == before for e in audits)
    assert b'"audit_scores":{"excluded":[' in canonical_bytes(audits[0])


def test_a_changed_score_breaks_the_chain(ledger) -> None:
    rows = [e.to_row() for e in ledger.events]
    target = next(r for r in rows if r["kind"] == "privacy_audit")
    target["audit_scores"]["included"][0] += 1e-9
    report = verify_chain(rows, KEY)
    assert not report.ok and report.first_broken_seq == target["seq"]


def test_rows_survive_a_database_round_trip(ledger) -> None:
    import json

    for event in ledger.events:
        again = LedgerEvent.from_row(json.loads(json.dumps(event.to_row())))
        assert canonical_bytes(again) == canonical_bytes(event)


def test_recorded_guesses_can_be_redone_from_the_row(ledger) -> None:
    for event in ledger.events:
        if event.kind != "privacy_audit":
            continue
        scores = event.audit_scores
        values = np.concatenate([scores["included"], scores["excluded"]])
        member = np.arange(values.size) < len(scores["included"])
        redo = best_guess(values, member, delta=event.run_delta, confidence=event.audit_confidence)
        assert (redo.guesses, redo.correct) == (event.audit_guesses, event.audit_correct)
        assert redo.epsilon_lower_bound == pytest.approx(event.epsilon_lower_bound, abs=1e-9)


def test_report_shows_both_audits_and_the_failure(ledger) -> None:
    report = build_report(ledger.events, dataset_id="patients-2026", key=KEY)
    honest, broken = report.privacy_audits
    assert honest.passed and not broken.passed
    assert broken.epsilon_lower_bound > broken.epsilon_upper
    assert not report.ok
    assert any("FAILED" in w and "audit-run" in w for w in report.warnings)
    assert any("sigma/10" in n for n in report.notices)
    assert report.replay is not None and report.replay.ok
    again = AuditReport.from_json(report.to_json())
    assert again.privacy_audits == report.privacy_audits
    page = render_html(report)
    assert "Empirical privacy audit" in page
    assert "AUDIT FAILED" in page and page.count("data:image/png;base64,") >= 3


def test_report_without_audits_is_unchanged() -> None:
    ledger = new_ledger(cap=10.0)
    run_steps(ledger, [RunSpec("run-a", 1.0, 0.05, 3)])
    report = build_report(ledger.events, dataset_id="patients-2026", key=KEY)
    assert report.privacy_audits == ()
    page = render_html(report)
    assert "Empirical privacy audit" not in page
    data = report.to_dict()
    del data["privacy_audits"]  # a report written before audits existed still reads
    assert AuditReport.from_dict(data) == report


def test_standalone_page() -> None:
    page = render_canary_html(audit_result(separation=12.0, fault="no-clipping"))
    assert "FAILED" in page and "no-clipping" in page


def base_audit_row(**change: object) -> dict[str, object]:
    fields = privacy_audit_fields(audit_result(separation=0.3))
    row = {
        "seq": 2,
        "tenant_id": "t",
        "dataset_id": "d",
        "delta": 1e-5,
        "accountant": "prv",
        "epsilon_dataset_total": 0.5,
        "cap": 10.0,
        "library_versions": {},
        "created_at": "2026-03-02T10:00:00.000000Z",
        "prev_link": "0" * 64,
        "link": "0" * 64,
        **fields,
    }
    row.update(change)
    return row


def test_a_valid_row_reads_back_as_its_result() -> None:
    result = audit_result(separation=0.3)
    event = LedgerEvent.from_row(base_audit_row())
    back = result_from_event(event)
    assert back == dataclasses.replace(result, model=None, canary_norm=None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"audit_correct": 999}, "audit_correct"),
        ({"audit_guesses": 401}, "audit_guesses"),
        ({"audit_canaries": 0}, "audit_canaries"),
        ({"epsilon_lower_bound": -1.0}, "epsilon_lower_bound"),
        ({"epsilon_lower_bound": None}, "epsilon_lower_bound"),
        ({"audit_confidence": 1.0}, "audit_confidence"),
        ({"audit_method": "vibes"}, "audit_method"),
        ({"audit_test_fault": "sigma/2"}, "audit_test_fault"),
        ({"audit_scores": {"included": [1.0]}}, "audit_scores"),
        ({"audit_scores": {"included": [1.0], "excluded": [float("nan")]}}, "audit_scores"),
        ({"audit_scores": {"included": ["1"], "excluded": []}}, "audit_scores"),
        ({"audit_scores": {"included": [1.0], "excluded": [2.0]}}, "audit_scores"),
        ({"epsilon_run_exact": None}, "epsilon_run_exact"),
        ({"model_step": None}, "model_step"),
        ({"step": 3}, "step"),
        ({"epsilon_run_total": 1.0}, "epsilon_run_total"),
    ],
)
def test_malformed_audit_rows_are_refused(change, field) -> None:
    with pytest.raises(ConfigError) as err:
        LedgerEvent.from_row(base_audit_row(**change))
    assert err.value.field == field


def test_audit_fields_only_on_audit_rows(ledger) -> None:
    step = next(e for e in ledger.events if e.kind == "dp_step").to_row()
    with pytest.raises(ConfigError) as err:
        LedgerEvent.from_row({**step, "epsilon_lower_bound": 0.1})
    assert err.value.field == "epsilon_lower_bound"
    budget = ledger.events[0].to_row()
    with pytest.raises(ConfigError) as err:
        LedgerEvent.from_row({**budget, "audit_canaries": 3})
    assert err.value.field == "audit_canaries"


AUDIT_CHANGES: dict[str, object] = {
    "audit_method": "gradient-canaries",  # the only method: changed by removal below
    "audit_canaries": 401,
    "audit_guesses": 399,
    "audit_correct": 1,
    "audit_confidence": 0.99,
    "epsilon_lower_bound": 0.25,
    "audit_scores": None,  # one score nudged, below
    "audit_test_fault": "no-clipping",
}


@pytest.mark.parametrize("name", sorted(AUDIT_CHANGES))
def test_changing_any_audit_field_changes_the_link(name: str) -> None:
    from tensafe.audit.ledger import FORMAT_3_FIELDS, GENESIS, append, compute_link

    assert set(AUDIT_CHANGES) == set(FORMAT_3_FIELDS)
    fields = {k: v for k, v in base_audit_row().items() if k not in ("seq", "prev_link", "link")}
    event = append(GENESIS, fields, KEY)
    row = event.to_row()
    if name == "audit_method":
        row["audit_test_fault"] = "sigma/10"  # the method has one value: change its neighbour
    elif name == "audit_scores":
        row["audit_scores"]["excluded"][-1] += 1e-12
    elif name == "audit_canaries":
        row["audit_scores"]["excluded"].append(0.0)
        row[name] = AUDIT_CHANGES[name]
    else:
        row[name] = AUDIT_CHANGES[name]
    changed = LedgerEvent.from_row(row)
    assert compute_link(KEY, GENESIS.link, changed) != event.link


def test_the_verifier_in_the_audit_guide_checks_audit_rows(ledger) -> None:
    from pathlib import Path

    guide = (Path(__file__).parents[3] / "docs" / "audit.md").read_text(encoding="utf-8")
    code = guide.split("An independent verifier", 1)[1].split("```python", 1)[1].split("```")[0]
    namespace: dict[str, object] = {}
    exec(code, namespace)  # the documented snippet itself
    rows = [e.to_row() for e in ledger.events]
    assert namespace["verify"](rows, KEY) == "ok"  # type: ignore[operator]
    seq = next(r["seq"] for r in rows if r["kind"] == "privacy_audit")
    rows[seq - 1] = rows[seq - 1] | {"epsilon_lower_bound": 0.0}
    assert namespace["verify"](rows, KEY) == f"broken at seq {seq}"  # type: ignore[operator]
