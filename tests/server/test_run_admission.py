"""Run creation and privacy budgets: every DP run is charged to a dataset budget, and
a run its budget cannot afford is refused before it exists."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.context import build_context
from server.services.runs import DEFAULT_DATASET_ID
from server.settings import Settings
from tensafe.privacy.delta import default_delta
from tests.server.harness import DP, TRAIN_AND_OFFICER, Harness, batch, run_config


def _dp(**extra: Any) -> dict[str, Any]:
    return {**DP, **extra}


def _run_count(api: Harness, headers: dict[str, str]) -> int:
    return len(api.client.get("/v1/training_runs", headers=headers).json()["runs"])


def test_a_dp_run_without_dataset_id_is_charged_to_the_default_budget(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)  # dp_config names no dataset_id
    api.wait(headers, api.submit(headers, run_id, "forward_backward", batch(1)))
    out = api.wait(headers, api.submit(headers, run_id, "optim_step", {}))
    assert out["status"] == "completed", out
    assert out["result"]["metrics"]["dp/ledger_seq"] >= 1
    budget = api.client.get(f"/v1/budgets/{DEFAULT_DATASET_ID}", headers=headers).json()
    assert budget["total_steps"] == 1
    assert budget["epsilon_cap"] == 1000.0  # created on first use by the server's default


def test_a_run_the_budget_cannot_afford_is_refused_at_creation(api: Harness) -> None:
    headers = api.tenant(scopes=TRAIN_AND_OFFICER)
    dataset = "tiny-" + uuid.uuid4().hex[:6]
    created = api.client.post(
        "/v1/budgets", json={"dataset_id": dataset, "epsilon_cap": 1e-4}, headers=headers
    )
    assert created.status_code == 201, created.text
    before = _run_count(api, headers)
    response = api.client.post(
        "/v1/training_runs",
        json=run_config(dp_config=_dp(dataset_id=dataset)),
        headers=headers,
    )
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "BudgetExceededError"
    assert dataset in body["detail"] and "the run was not created" in body["detail"]
    assert _run_count(api, headers) == before  # nothing half-created
    ledger = api.client.get(f"/v1/budgets/{dataset}", headers=headers).json()
    assert ledger["total_steps"] == 0


def test_an_exhausted_budget_refuses_a_calibrated_run(api: Harness) -> None:
    headers = api.tenant(scopes=TRAIN_AND_OFFICER)
    dataset = "spent-" + uuid.uuid4().hex[:6]
    api.client.post(
        "/v1/budgets", json={"dataset_id": dataset, "epsilon_cap": 0.0}, headers=headers
    )
    calibrated = {
        "dataset_size": 1000,
        "expected_batch_size": 4,
        "target_epsilon": 1.0,
        "planned_steps": 10,
        "dataset_id": dataset,
    }
    response = api.client.post(
        "/v1/training_runs", json=run_config(dp_config=calibrated), headers=headers
    )
    assert response.status_code == 409, response.text
    assert "exhausted" in response.json()["detail"]


def test_an_affordable_run_is_created(api: Harness) -> None:
    headers = api.tenant(scopes=TRAIN_AND_OFFICER)
    dataset = "ok-" + uuid.uuid4().hex[:6]
    api.client.post(
        "/v1/budgets", json={"dataset_id": dataset, "epsilon_cap": 5.0}, headers=headers
    )
    api.create_run(headers, dp_config=_dp(dataset_id=dataset))


def test_no_budget_and_no_default_cap_refuses_creation_naming_the_field(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()  # default_epsilon_cap unset, as in production
    context = build_context(settings)
    with TestClient(create_app(settings, context=context)) as client:
        harness = Harness(client, context)
        headers = harness.tenant(scopes=TRAIN_AND_OFFICER)
        response = client.post("/v1/training_runs", json=run_config(), headers=headers)
        assert response.status_code == 409, response.text
        body = response.json()
        assert body["field"] == "dp_config.dataset_id"
        assert repr(DEFAULT_DATASET_ID) in body["detail"] and "create-budget" in body["detail"]
        assert client.get("/v1/training_runs", headers=headers).json()["runs"] == []
        created = client.post(
            "/v1/budgets",
            json={"dataset_id": DEFAULT_DATASET_ID, "epsilon_cap": 5.0},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        assert (
            client.post("/v1/training_runs", json=run_config(), headers=headers).status_code == 201
        )


def test_a_retried_creation_returns_its_run_even_after_the_budget_is_spent(api: Harness) -> None:
    headers = api.tenant(scopes=TRAIN_AND_OFFICER)
    dataset = "retry-" + uuid.uuid4().hex[:6]
    api.client.post(
        "/v1/budgets", json={"dataset_id": dataset, "epsilon_cap": 5.0}, headers=headers
    )
    config = run_config(dp_config=_dp(dataset_id=dataset))
    keyed = {**headers, "Idempotency-Key": "create-" + dataset}
    first = api.client.post("/v1/training_runs", json=config, headers=keyed)
    assert first.status_code == 201, first.text
    lowered = api.client.patch(f"/v1/budgets/{dataset}", json={"epsilon_cap": 0.0}, headers=headers)
    assert lowered.status_code == 200, lowered.text
    again = api.client.post("/v1/training_runs", json=config, headers=keyed)
    assert again.status_code == 201, again.text
    assert again.json()["run_id"] == first.json()["run_id"]
    fresh = api.client.post("/v1/training_runs", json=config, headers=headers)
    assert fresh.status_code == 409 and fresh.json()["error"] == "BudgetExceededError"


# ------------------------------------------------------------------- δ against N


def _post_run(api: Harness, headers: dict[str, str], **dp: Any) -> Any:
    """The response to creating a run with the harness's DP config changed by ``dp``."""
    return api.client.post(
        "/v1/training_runs", json=run_config(dp_config=_dp(**dp)), headers=headers
    )


@pytest.mark.parametrize(
    ("budget_delta", "dataset_size"),
    [
        (None, 100_000),  # the budget's default δ, 1e-5, is 1/N here
        (0.005, 1000),  # a budget δ above 1/N = 0.001
    ],
)
def test_a_budget_whose_delta_is_not_below_one_over_n_refuses_the_run(
    api: Harness, budget_delta: float | None, dataset_size: int
) -> None:
    headers = api.tenant(scopes=TRAIN_AND_OFFICER)
    dataset = "delta-" + uuid.uuid4().hex[:6]
    body: dict[str, Any] = {"dataset_id": dataset, "epsilon_cap": 100.0}
    if budget_delta is not None:
        body["delta"] = budget_delta
    assert api.client.post("/v1/budgets", json=body, headers=headers).status_code == 201
    delta = api.client.get(f"/v1/budgets/{dataset}", headers=headers).json()["delta"]
    response = _post_run(api, headers, dataset_id=dataset, dataset_size=dataset_size)
    assert response.status_code == 409, response.text
    error = response.json()
    assert error["field"] == "dp_config.dataset_id"
    assert (
        f"delta (δ) must be < 1/N = {1.0 / dataset_size:.3g} (N = {dataset_size})"
        in error["detail"]
        and repr(delta) in error["detail"]
    )
    assert "the run was not created" in error["detail"]
    assert _run_count(api, headers) == 0
    # A budget with a δ below 1/N for that N admits the same run.
    fine = f"{dataset}-ok"
    small = {"dataset_id": fine, "epsilon_cap": 100.0, "delta": default_delta(dataset_size)}
    assert api.client.post("/v1/budgets", json=small, headers=headers).status_code == 201
    api.create_run(headers, dp_config=_dp(dataset_id=fine, dataset_size=dataset_size))


def test_a_run_delta_at_or_above_one_over_n_is_422_naming_target_delta(api: Harness) -> None:
    headers = api.tenant()
    for target in (1e-3, 0.09):  # N = 1000
        response = _post_run(api, headers, target_delta=target)
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["field"] == "dp_config.target_delta" and "N = 1000" in error["detail"]
    assert _run_count(api, headers) == 0


def test_a_budget_delta_no_dataset_could_use_is_refused_at_creation(api: Harness) -> None:
    headers = api.tenant(scopes=TRAIN_AND_OFFICER)
    response = api.client.post(
        "/v1/budgets",
        json={"dataset_id": "typo", "epsilon_cap": 1.0, "delta": 0.09},
        headers=headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "delta"
    assert api.client.get("/v1/budgets/typo", headers=headers).status_code == 404


def test_a_budget_created_on_first_use_takes_the_runs_default_delta(api: Harness) -> None:
    headers = api.tenant()
    dataset = "first-use-" + uuid.uuid4().hex[:6]
    run_id = api.create_run(headers, dp_config=_dp(dataset_id=dataset, dataset_size=100_000))
    api.wait(headers, api.submit(headers, run_id, "forward_backward", batch(1)))
    out = api.wait(headers, api.submit(headers, run_id, "optim_step", {}))
    assert out["status"] == "completed", out
    budget = api.client.get(f"/v1/budgets/{dataset}", headers=headers).json()
    assert budget["delta"] == default_delta(100_000) == pytest.approx(10**-5.5)
