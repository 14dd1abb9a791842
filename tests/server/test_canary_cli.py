"""``tensafe audit canaries``: runs an audit on the tiny model, writes JSON and HTML,
records it in a dataset's ledger (then in its audit report), and exits 1 when the
audit fails; a deliberately broken engine is never recorded in a production ledger."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tensafe.audit.canary_result import CanaryAuditResult
from tensafe.cli import main

# small enough for a test (a few seconds), strong enough to bite (see test_canary_audit.py)
QUICK = ["--canaries", "1000", "--steps", "20", "--seed", "4"]


@pytest.fixture
def ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], str]:
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["admin", "create-tenant", "lab", "--json", *data]) == 0
    tenant = json.loads(capsys.readouterr().out)["tenant_id"]
    budget = ["admin", "create-budget", tenant, "ds", "--epsilon-cap", "5", "--sampling-policy"]
    assert main([*budget, "any", *data]) == 0
    capsys.readouterr()
    return data, tenant


def test_an_honest_audit_passes_and_is_recorded(
    tmp_path: Path, ledger: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, tenant = ledger
    out, page = tmp_path / "audit.json", tmp_path / "audit.html"
    args = ["audit", "canaries", *QUICK, "-o", str(out), "--html", str(page), "--dataset", "ds"]
    assert main([*args, *data]) == 0
    said = capsys.readouterr().out
    assert "passed" in said and f"recorded in the ledger of {tenant}/ds as row seq 2" in said
    result = CanaryAuditResult.from_dict(json.loads(out.read_text()))
    assert result.passed and result.epsilon_lower_bound <= result.epsilon_upper
    assert "Empirical privacy audit" in page.read_text()

    assert main(["audit", "verify", "--dataset", "ds", *data]) == 0
    capsys.readouterr()
    assert main(["audit", "report", "--dataset", "ds", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    (audit,) = report["privacy_audits"]
    assert audit["passed"] and audit["epsilon_lower_bound"] == result.epsilon_lower_bound
    assert len(audit["included_scores"]) + len(audit["excluded_scores"]) == 1000


def test_a_broken_engine_fails_the_audit(
    tmp_path: Path, ledger: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = ledger
    record = ["--dataset", "ds", "--environment", "development"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main(["audit", "canaries", *QUICK, "--test-fault", "sigma/10", *record, *data])
    assert status == 1
    assert "FAILED" in capsys.readouterr().out
    page = tmp_path / "report.html"
    assert main(["audit", "report", "--dataset", "ds", "--format", "html", "-o", str(page),
                 *data]) == 1  # fmt: skip
    text = page.read_text()
    assert "AUDIT FAILED" in text and "Needs attention" in text


def test_a_broken_audit_is_never_recorded_in_production(
    ledger: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = ledger
    args = ["audit", "canaries", *QUICK, "--test-fault", "no-clipping", "--dataset", "ds"]
    assert main([*args, "--environment", "production", *data]) == 2
    assert "--environment development" in capsys.readouterr().err
    assert main(["audit", "report", "--dataset", "ds", *data]) == 0  # nothing was recorded
    assert json.loads(capsys.readouterr().out)["privacy_audits"] == []


@pytest.mark.parametrize(
    "bad",
    [["--canaries", "0"], ["--canaries", "100000"], ["--sample-rate", "1.5"], ["--steps", "-1"]],
)
def test_bad_settings_exit_2(bad: list[str], tmp_path: Path) -> None:
    assert main(["audit", "canaries", *bad, "--data-dir", str(tmp_path)]) == 2


def test_an_unknown_dataset_is_refused(
    ledger: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = ledger
    assert main(["audit", "canaries", *QUICK, "--dataset", "nope", *data]) == 2


def test_audit_at_a_runs_own_setting(
    tmp_path: Path, ledger: tuple[list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from server.cli import _budget_service
    from tests.server.budget_steps import SIGMA, Q, RecordingEngine
    from tests.server.budget_steps import step as charged_step

    data, tenant = ledger
    args = argparse.Namespace(data_dir=data[1], database_url=None, environment=None,
                              log_level=None)  # fmt: skip
    engine = RecordingEngine()
    with _budget_service(args) as service:
        for _ in range(3):
            charged_step(service, engine, tenant_id=tenant, dataset_id="ds", run_id="run_a")
    assert main(["audit", "canaries", "--run", "run_a", "--canaries", "1000", "--seed", "2",
                 *data]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert f"recorded in the ledger of {tenant}/ds" in said
    assert main(["audit", "report", "--dataset", "ds", *data]) == 0
    (audit,) = json.loads(capsys.readouterr().out)["privacy_audits"]
    assert audit["run_id"] == "run_a" and audit["steps"] == 3
    assert (audit["noise_multiplier"], audit["sample_rate"]) == (SIGMA, Q)
    assert audit["epsilon_upper"] == pytest.approx(engine.engine.epsilon(), rel=1e-6)
    assert audit["passed"]
    # a run with no step, and a broken engine at a real run's setting, are refused
    assert main(["audit", "canaries", "--run", "run_none", *data]) == 2
    assert main(["audit", "canaries", "--run", "run_a", "--test-fault", "sigma/10", *data]) == 2
