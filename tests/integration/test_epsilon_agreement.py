"""One record of each noisy step: the ε the client is told, the ledger row and the
audit report are the same number — after training, after a server restart, and
after a ``load_state`` carries another run's history over (SQLite and PostgreSQL).

The run declares N = 100 000, so its own δ (min(1e-5, N^-1.1) ≈ 3.2e-6) differs
from the budget's (1e-6): the ledger must say which δ the reported ε is at.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from tg_tinker import ServiceClient, TrainingClient

from tensafe.privacy import PrivacyAccountant
from tests.integration.conftest import LiveServer, ledger_rows
from tests.integration.test_end_to_end import dp_config, random_batch, tiny_config

pytestmark = pytest.mark.integration

SIGMA, N, EBS = 1.0, 100_000, 1000  # q = 0.01
RUN_DELTA = min(1e-5, N**-1.1)


def _ledger(server: LiveServer, run_id: str) -> list[dict[str, object]]:
    return ledger_rows(server, column="run_id", value=run_id)


def _reported_in_audit(service: ServiceClient, dataset: str, run_id: str) -> float:
    report = service.audit_report(dataset)
    assert isinstance(report, dict)
    assert report["chain"]["ok"] and report["recompute"]["all_agree"], report["warnings"]
    exact = {c["subject"]: c for c in report["recompute"]["runs_exact"]}
    assert exact[run_id]["delta"] == pytest.approx(RUN_DELTA)
    (run,) = [r for r in report["runs"] if r["run_id"] == run_id]
    return float(run["epsilon"])


def _independent(steps: int) -> float:
    accountant = PrivacyAccountant(accountant="prv")
    for _ in range(steps):
        accountant.record_step(noise_multiplier=SIGMA, sample_rate=EBS / N)
    return accountant.epsilon(RUN_DELTA)


def _step(tc: TrainingClient, seed: int) -> float:
    tc.forward_backward(random_batch(seed)).result(timeout=120)
    result = tc.optim_step().result(timeout=120)
    assert result.dp_metrics is not None and result.dp_metrics.delta == pytest.approx(RUN_DELTA)
    return result.dp_metrics.epsilon_spent


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_told_ledger_and_report_agree(
    fresh_server: Callable[[str], LiveServer], backend: str
) -> None:
    server = fresh_server(backend)
    tenant = server.create_tenant()
    dataset = "agree-" + uuid.uuid4().hex[:6]
    server.cli(
        "admin",
        "create-budget",
        tenant["tenant_id"],
        dataset,
        "--epsilon-cap",
        "50",
        "--delta",
        "1e-6",
    )  # δ < 1/N
    config = tiny_config(dp_config=dp_config(dataset_id=dataset, dataset_size=N,
                                             expected_batch_size=EBS))  # fmt: skip

    # after training
    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        tc = service.create_training_client(config)
        told = [_step(tc, seed) for seed in range(3)]
        saved = tc.save_state("three").result(timeout=120)
        source = tc.run_id
        rows = _ledger(server, source)
        assert [r["epsilon_run_exact"] for r in rows] == told
        for row in rows:  # the run's δ and accountant, beside the budget's δ
            assert (row["run_delta"], row["run_accountant"], row["delta"]) == (
                pytest.approx(RUN_DELTA),
                "prv",
                1e-6,
            )
        assert _reported_in_audit(service, dataset, source) == told[-1]
        assert told[-1] == pytest.approx(_independent(3), rel=1e-9)

    # after a restart: the accountant is rebuilt from the ledger alone
    server.restart()
    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        assert _reported_in_audit(service, dataset, source) == told[-1]
        tc = service.get_training_client(source)
        after_restart = _step(tc, 3)
        assert _ledger(server, source)[-1]["epsilon_run_exact"] == after_restart
        assert _reported_in_audit(service, dataset, source) == after_restart
        assert after_restart == pytest.approx(_independent(4), rel=1e-9)

        # after a load_state carry-over: 3 steps of the source's lineage come along
        target = service.create_training_client(config)
        target.load_state(saved.path).result(timeout=120)
        carried = _ledger(server, target.run_id)
        assert [r["kind"] for r in carried] == ["dp_step_carried"] * 3
        assert [r["epsilon_run_exact"] for r in carried[:-1]] == [None, None]
        assert carried[-1]["epsilon_run_exact"] == pytest.approx(_independent(3), rel=1e-9)
        assert (
            _reported_in_audit(service, dataset, target.run_id) == carried[-1]["epsilon_run_exact"]
        )
        first_own = _step(target, 4)
        assert first_own == pytest.approx(_independent(4), rel=1e-9)
        assert _ledger(server, target.run_id)[-1]["epsilon_run_exact"] == first_own
        assert _reported_in_audit(service, dataset, target.run_id) == first_own
