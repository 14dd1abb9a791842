"""Privacy budgets end to end against a real server (SQLite and PostgreSQL):
exact enforcement, racing runs, recomputation, and a SIGKILL mid-run.

The race is the issue's: 8 runs × 50 steps from threads on a cap that allows 100
(about 30 s per database on 2 cores); the service-level race
(tests/server/test_budgets.py) runs 8 writers × 12 steps on both databases too.
"""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Callable

import pytest
from tg_tinker import ServiceClient
from tg_tinker.errors import BudgetExceededError, PermissionDeniedError, ValidationError

from tensafe.privacy.budget import DatasetBudget
from tests.integration.conftest import LiveServer, ledger_rows
from tests.integration.test_end_to_end import dp_config, random_batch, tiny_config

pytestmark = pytest.mark.integration

SIGMA, N, EBS = 1.0, 1000, 4  # q = 0.004: small ε, where recomputation is hardest


def cap_for(k: int) -> float:
    probe = DatasetBudget(dataset_id="probe", epsilon_cap=1e9, delta=1e-5, accountant="prv")
    for _ in range(k):
        probe.record_step(run_id="r", noise_multiplier=SIGMA, sample_rate=EBS / N)
    return probe.epsilon()


def ledger(server: LiveServer, dataset: str) -> list[dict[str, object]]:
    return ledger_rows(server, column="dataset_id", value=dataset)


def config(dataset: str, seed: int = 0):  # type: ignore[no-untyped-def]
    return tiny_config(dp_config=dp_config(dataset_id=dataset, expected_batch_size=EBS), seed=seed)


def test_exact_enforcement_leaves_the_model_unchanged(live_server: LiveServer) -> None:
    tenant = live_server.create_tenant()
    dataset = "exact-" + uuid.uuid4().hex[:6]
    k = 3
    live_server.cli(
        "admin", "create-budget", tenant["tenant_id"], dataset, "--epsilon-cap", repr(cap_for(k))
    )
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        tc = service.create_training_client(config(dataset))
        told = []
        for i in range(k):
            tc.forward_backward(random_batch(i)).result(timeout=120)
            told.append(tc.optim_step().result(timeout=120))
        probe = random_batch(99)
        loss_before = tc.forward(probe).result(timeout=120).loss
        tc.forward_backward(random_batch(k)).result(timeout=120)
        with pytest.raises(BudgetExceededError, match="budget exceeded"):
            tc.optim_step().result(timeout=120)
        assert tc.forward(probe).result(timeout=120).loss == loss_before
        run = service.get_training_client(tc.run_id)
        assert service.list_training_runs()[0].step == k
        budget = service.get_privacy_budget(dataset)
        assert budget.total_steps == k and budget.refusals == 1
        assert budget.epsilon_spent <= budget.epsilon_cap
        assert run.run_id == tc.run_id
        # the client was told exactly what the ledger holds
        rows = [r for r in ledger(live_server, dataset) if r["kind"] == "dp_step"]
        assert [r["epsilon_dataset_total"] for r in rows] == [
            s.metrics["dp/epsilon_dataset"] for s in told
        ]
        with ServiceClient(live_server.url, api_key=tenant["privacy_officer_api_key"]) as officer:
            raised = officer.raise_privacy_budget(dataset, epsilon_cap=cap_for(k + 1))
        assert raised.epsilon_cap == cap_for(k + 1)
        # the refusal changed nothing: the refused logical batch is still pending (sending
        # it again would put each example in twice, which the server refuses), and the
        # retried step applies it
        with pytest.raises(ValidationError, match="already in the logical batch"):
            tc.forward_backward(random_batch(k)).result(timeout=120)
        assert tc.optim_step().result(timeout=120).step == k + 1
        report = service.audit_report(dataset)
        assert isinstance(report, dict) and report["chain"]["ok"]
        assert report["recompute"]["all_agree"] and not report["warnings"]
        html = service.audit_report(dataset, format="html")
        assert isinstance(html, str) and "data:image/png;base64" in html
    out = json.loads(live_server.cli("audit", "report", "--dataset", dataset))
    assert out["total_steps"] == k + 1 and len(out["refusals"]) == 1


def test_only_the_privacy_officer_key_changes_budgets(live_server: LiveServer) -> None:
    """Over HTTP with the keys ``tensafe admin create-tenant`` printed: the train key is
    refused (403, nothing written), the privacy-officer key's changes name its key id."""
    tenant = live_server.create_tenant()
    dataset = "roles-" + uuid.uuid4().hex[:6]
    with (
        ServiceClient(live_server.url, api_key=tenant["api_key"], max_retries=0) as train,
        ServiceClient(live_server.url, api_key=tenant["privacy_officer_api_key"]) as officer,
    ):
        with pytest.raises(PermissionDeniedError, match="'privacy-officer'") as refused:
            train.create_privacy_budget(dataset, epsilon_cap=5.0)
        assert refused.value.status_code == 403
        assert tenant["api_key"] not in str(refused.value)
        assert ledger(live_server, dataset) == []
        officer.create_privacy_budget(dataset, epsilon_cap=5.0)
        with pytest.raises(PermissionDeniedError):
            train.raise_privacy_budget(dataset, epsilon_cap=50.0)
        assert train.get_privacy_budget(dataset).epsilon_cap == 5.0  # train may read
        assert officer.raise_privacy_budget(dataset, epsilon_cap=6.0).epsilon_cap == 6.0
    rows = ledger(live_server, dataset)
    assert [(r["kind"], r["actor"]) for r in rows] == [
        ("budget_created", f"api:{tenant['privacy_officer_key_id']}"),
        ("budget_changed", f"api:{tenant['privacy_officer_key_id']}"),
    ]


def test_racing_runs_never_exceed_the_cap(live_server: LiveServer) -> None:
    tenant = live_server.create_tenant()
    dataset = "race-" + uuid.uuid4().hex[:6]
    runs, steps, allowed = 8, 50, 100
    with ServiceClient(live_server.url, api_key=tenant["privacy_officer_api_key"]) as officer:
        officer.create_privacy_budget(dataset, epsilon_cap=cap_for(allowed))
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        clients = [service.create_training_client(config(dataset, seed=i)) for i in range(runs)]
        told: list[tuple[int, float]] = []
        refused: list[str] = []
        errors: list[BaseException] = []

        def train(i: int) -> None:
            tc = clients[i]
            pending = False  # a refused step leaves its logical batch pending
            for s in range(steps):
                try:
                    if not pending:
                        tc.forward_backward(random_batch(100 * i + s, rows=2, length=8)).result(
                            timeout=300
                        )
                    pending = True
                    out = tc.optim_step().result(timeout=300)
                    pending = False
                    told.append(
                        (int(out.metrics["dp/ledger_seq"]), out.metrics["dp/epsilon_dataset"])
                    )
                except BudgetExceededError:
                    refused.append(tc.run_id)
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=train, args=(i,)) for i in range(runs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(told) == allowed and len(refused) == runs * steps - allowed
        budget = service.get_privacy_budget(dataset)
        assert budget.epsilon_spent <= budget.epsilon_cap
        assert budget.total_steps == allowed and budget.refusals == len(refused)
    rows = ledger(live_server, dataset)
    steps_rows = {r["seq"]: r for r in rows if r["kind"] == "dp_step"}
    assert len(steps_rows) == allowed  # one ledger row per accepted step
    assert sum(r["kind"] == "step_refused" for r in rows) == len(refused)
    for seq, epsilon in told:  # the ledger says what each client was told
        assert steps_rows[seq]["epsilon_dataset_total"] == epsilon
    assert "0 row(s)" not in live_server.cli("audit", "verify", "--dataset", dataset)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_never_undercounts(fresh_server: Callable[[str], LiveServer], backend: str) -> None:
    server = fresh_server(backend)
    tenant = server.create_tenant()
    dataset = "crash-" + uuid.uuid4().hex[:6]
    server.cli("admin", "create-budget", tenant["tenant_id"], dataset, "--epsilon-cap", "50")
    seen: list[float] = []
    stop = threading.Event()
    service = ServiceClient(server.url, api_key=tenant["api_key"], max_retries=0)
    tc = service.create_training_client(config(dataset))

    def train() -> None:
        for i in range(1000):
            if stop.is_set():
                return
            try:
                tc.forward_backward(random_batch(i, rows=2, length=8)).result(timeout=60)
                seen.append(tc.optim_step().result(timeout=60).metrics["dp/epsilon_dataset"])
            except Exception:
                return

    worker = threading.Thread(target=train)
    worker.start()
    while len(seen) < 4:
        assert worker.is_alive()
        threading.Event().wait(0.05)
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(30)
    stop.set()
    worker.join(120)
    service.close()
    server.process = None
    server.start()
    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        budget = service.get_privacy_budget(dataset)
        assert budget.epsilon_spent >= max(seen)
        assert budget.total_steps >= len(seen)
    out = server.cli("audit", "verify", "--dataset", dataset)
    assert "BROKEN" not in out
