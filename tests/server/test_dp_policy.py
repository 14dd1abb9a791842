"""The tenant's DP policy: the tightening rule (pure), and ``/v1/dp_policy`` with the
native run path on a real app — only the privacy officer sets and reads it, another
tenant never sees it, a native run gets its settings and may only tighten them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from tg_tinker.types import DPPolicyInfo

from server.db.models import utcnow
from server.errors import ValidationError
from server.services.dp_policy import apply_dp_policy
from server.services.scopes import PRIVACY_OFFICER, TRAIN

from .harness import Harness, run_config


def _policy(**fields: Any) -> DPPolicyInfo:
    values: dict[str, Any] = {
        "dataset_id": "notes",
        "noise_multiplier": 1.0,
        "max_grad_norm": 0.5,
        "updated_by": "api:k",
        "updated_at": utcnow(),
    }
    values.update(fields)
    return DPPolicyInfo(**values)


def _apply(policy: DPPolicyInfo, **requested: Any) -> dict[str, Any]:
    return apply_dp_policy(policy, requested=requested, field=lambda f: f"key.{f}")


def test_the_policy_fills_in_what_the_client_leaves_out() -> None:
    settings = _apply(_policy(), dataset_size=1000, expected_batch_size=4, accountant="rdp")
    assert settings == {
        "dataset_id": "notes",
        "noise_multiplier": 1.0,
        "max_grad_norm": 0.5,
        "dataset_size": 1000,
        "expected_batch_size": 4,
        "accountant": "rdp",
    }
    # None counts as not given (a native client's full JSON)
    assert _apply(_policy(), dataset_id=None, noise_multiplier=None)["noise_multiplier"] == 1.0


@pytest.mark.parametrize(
    ("policy", "tighter"),
    [
        ({}, {"noise_multiplier": 2.0, "max_grad_norm": 0.25}),
        (
            {"noise_multiplier": None, "target_epsilon": 4.0, "planned_steps": 100},
            {"target_epsilon": 2.0, "planned_steps": 200},
        ),
        ({"target_delta": 1e-6}, {"target_delta": 1e-7}),
    ],
)
def test_a_client_may_tighten(policy: dict[str, Any], tighter: dict[str, Any]) -> None:
    settings = _apply(_policy(**policy), **tighter)
    assert {k: settings[k] for k in tighter} == tighter


@pytest.mark.parametrize(
    ("policy", "looser", "key", "says"),
    [
        ({}, {"noise_multiplier": 0.5}, "key.noise_multiplier", "at least 1.0"),
        ({}, {"max_grad_norm": 1.0}, "key.max_grad_norm", "at most 0.5"),
        ({}, {"dataset_id": "other"}, "key.dataset_id", "charges every run to dataset 'notes'"),
        ({}, {"enabled": False}, "key.enabled", "requires differential privacy"),
        ({}, {"target_epsilon": 1.0}, "key.target_epsilon", "sets noise_multiplier"),
        ({}, {"target_delta": 1e-9}, "key.target_delta", "server's default"),
        (
            {"noise_multiplier": None, "target_epsilon": 4.0, "planned_steps": 100},
            {"target_epsilon": 8.0},
            "key.target_epsilon",
            "at most 4.0",
        ),
        (
            {"noise_multiplier": None, "target_epsilon": 4.0, "planned_steps": 100},
            {"planned_steps": 10},
            "key.planned_steps",
            "at least 100",
        ),
        (
            {"noise_multiplier": None, "target_epsilon": 4.0, "planned_steps": 100},
            {"noise_multiplier": 5.0},
            "key.noise_multiplier",
            "sets target_epsilon",
        ),
        ({"client_overrides": "none"}, {"noise_multiplier": 2.0}, "key.noise_multiplier", "none"),
    ],
)
def test_a_client_may_not_loosen(
    policy: dict[str, Any], looser: dict[str, Any], key: str, says: str
) -> None:
    with pytest.raises(ValidationError, match=says) as refused:
        _apply(_policy(**policy), **looser)
    assert refused.value.field == key
    assert "privacy officer" in str(refused.value)


def test_repeating_the_policy_is_no_override() -> None:
    same = _apply(_policy(client_overrides="none"), noise_multiplier=1.0, dataset_id="notes")
    assert same["noise_multiplier"] == 1.0


# ------------------------------------------------------------------ over HTTP
def _tenant(api: Harness) -> tuple[dict[str, str], dict[str, str]]:
    """``(train headers, privacy-officer headers)`` of a fresh tenant."""
    train = api.tenant(scopes=(TRAIN,))
    _key_id, officer = api.key(api.last_tenant_id, scopes=(PRIVACY_OFFICER,))
    return train, officer


def test_only_the_privacy_officer_sets_and_reads_the_policy(api: Harness) -> None:
    train, officer = _tenant(api)
    policy = {"dataset_id": "notes-" + uuid.uuid4().hex[:6], "noise_multiplier": 1.5}
    refused = api.client.put("/v1/dp_policy", json=policy, headers=train)
    assert refused.status_code == 403 and "privacy-officer" in refused.json()["detail"]
    assert api.client.get("/v1/dp_policy", headers=train).status_code == 403
    assert api.client.get("/v1/dp_policy", headers=officer).status_code == 404
    put = api.client.put("/v1/dp_policy", json=policy, headers=officer)
    assert put.status_code == 200, put.text
    got = api.client.get("/v1/dp_policy", headers=officer).json()
    assert got["noise_multiplier"] == 1.5 and got["max_grad_norm"] == 1.0
    assert got["client_overrides"] == "tighten" and got["updated_by"].startswith("api:")
    # another tenant's privacy officer sees no policy, and cannot remove this one
    _other_train, other_officer = _tenant(api)
    assert api.client.get("/v1/dp_policy", headers=other_officer).status_code == 404
    assert api.client.delete("/v1/dp_policy", headers=other_officer).status_code == 404
    assert api.client.get("/v1/dp_policy", headers=officer).json()["noise_multiplier"] == 1.5
    assert api.client.delete("/v1/dp_policy", headers=train).status_code == 403
    assert api.client.delete("/v1/dp_policy", headers=officer).status_code == 204
    assert api.client.get("/v1/dp_policy", headers=officer).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset_id": "d"}, None),  # neither σ nor ε
        ({"dataset_id": "d", "noise_multiplier": 1.0, "target_epsilon": 2.0}, None),
        ({"dataset_id": "d", "target_epsilon": 2.0}, None),  # no planned_steps
        ({"dataset_id": "d", "noise_multiplier": 0.01}, "noise_multiplier"),
        ({"dataset_id": "d", "noise_multiplier": 1.0, "client_overrides": "any"}, None),
    ],
)
def test_an_invalid_policy_is_refused(api: Harness, body: dict[str, Any], field: str) -> None:
    _train, officer = _tenant(api)
    refused = api.client.put("/v1/dp_policy", json=body, headers=officer)
    assert refused.status_code == 422, refused.text
    if field is not None:
        assert refused.json()["field"] == field


def test_a_native_run_gets_the_policy_and_may_only_tighten_it(api: Harness) -> None:
    train, officer = _tenant(api)
    dataset = "notes-" + uuid.uuid4().hex[:6]
    policy = {"dataset_id": dataset, "noise_multiplier": 1.5, "max_grad_norm": 0.5}
    assert api.client.put("/v1/dp_policy", json=policy, headers=officer).status_code == 200
    dp = {"dataset_size": 1000, "expected_batch_size": 4}
    run_id = api.create_run(train, dp_config=dp)
    stored = api.run(train, run_id)["config"]["dp_config"]
    assert (stored["dataset_id"], stored["noise_multiplier"], stored["max_grad_norm"]) == (
        dataset,
        1.5,
        0.5,
    )
    tighter = api.create_run(train, dp_config={**dp, "noise_multiplier": 3.0})
    assert api.run(train, tighter)["config"]["dp_config"]["noise_multiplier"] == 3.0
    for looser, field in (
        ({"noise_multiplier": 1.0}, "dp_config.noise_multiplier"),
        ({"max_grad_norm": 1.0}, "dp_config.max_grad_norm"),
        ({"dataset_id": "elsewhere"}, "dp_config.dataset_id"),
        ({"enabled": False}, "dp_config.enabled"),
    ):
        refused = api.client.post(
            "/v1/training_runs", json=run_config(dp_config={**dp, **looser}), headers=train
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == field
    no_dp = api.client.post("/v1/training_runs", json=run_config(dp_config=None), headers=train)
    assert no_dp.status_code == 422 and no_dp.json()["field"] == "dp_config"
    # the run trains with exactly those settings: σ and C in the step's DP metrics
    api.call(train, run_id, "forward_backward", _batch())
    step = api.call(train, run_id, "optim_step", {})
    metrics = step["dp_metrics"]
    assert metrics["noise_multiplier"] == 1.5 and metrics["max_grad_norm"] == 0.5


def _batch() -> dict[str, Any]:
    from .harness import batch

    return batch(1, rows=2, length=8)


def test_a_target_epsilon_policy_calibrates_sigma_for_each_run(api: Harness) -> None:
    train, officer = _tenant(api)
    dataset = "target-" + uuid.uuid4().hex[:6]
    policy = {"dataset_id": dataset, "target_epsilon": 2.0, "planned_steps": 50}
    assert api.client.put("/v1/dp_policy", json=policy, headers=officer).status_code == 200
    dp = {"dataset_size": 1000, "expected_batch_size": 4, "accountant": "rdp"}
    loose = api.client.post(
        "/v1/training_runs",
        json=run_config(dp_config={**dp, "noise_multiplier": 5.0}),
        headers=train,
    )
    assert loose.status_code == 422 and loose.json()["field"] == "dp_config.noise_multiplier"
    wider = run_config(dp_config={**dp, "target_epsilon": 2.0, "planned_steps": 10})
    fewer = api.client.post("/v1/training_runs", json=wider, headers=train)
    assert fewer.status_code == 422 and fewer.json()["field"] == "dp_config.planned_steps"
    sigmas = []
    for target in (2.0, 1.0):  # the policy's ε, then a tighter one
        run_id = api.create_run(train, dp_config={**dp, "target_epsilon": target})
        api.call(train, run_id, "forward_backward", _batch())
        sigmas.append(api.call(train, run_id, "optim_step", {})["dp_metrics"]["noise_multiplier"])
    assert 0 < sigmas[0] < sigmas[1]  # a smaller ε over the same 50 steps needs more noise
