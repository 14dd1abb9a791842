"""Hostile values are refused at the boundary with a 4xx naming the field, the same on
SQLite and PostgreSQL — never a 500 from the accountant, the model loader or the
database driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.context import build_context
from server.settings import Settings

from .harness import DP, TRAIN_AND_OFFICER, Harness, run_config


@pytest.fixture
def server(database_url: str, make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    settings = make_settings(database_url=database_url, default_epsilon_cap=100.0)
    context = build_context(settings)
    app = create_app(settings, context=context)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Harness(client, context)


@pytest.mark.parametrize(
    ("dp", "field"),
    [
        ({"noise_multiplier": 1e-300}, "dp_config.noise_multiplier"),
        ({"noise_multiplier": 1e300}, "dp_config.noise_multiplier"),
        (
            {"noise_multiplier": None, "target_epsilon": 1e300, "planned_steps": 10},
            "target_epsilon",
        ),
    ],
)
def test_extreme_noise_is_a_422(server: Harness, dp: dict[str, object], field: str) -> None:
    headers = server.tenant()
    config = run_config(dp_config={**DP, **dp})
    response = server.client.post("/v1/training_runs", json=config, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["field"].endswith(field)


@pytest.mark.parametrize("seed", [2**63, 2**64 + 1, -1])
def test_seeds_outside_signed_64_bits_are_a_422(server: Harness, seed: int) -> None:
    headers = server.tenant()
    response = server.client.post("/v1/training_runs", json=run_config(seed=seed), headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "seed"


NUL_PATHS = [
    ("GET", "/v1/training_runs/run%00x", "run_id"),
    ("GET", "/v1/training_runs/run%00x/info", "run_id"),
    ("POST", "/v1/training_runs/run%00x/heartbeat", "run_id"),
    ("GET", "/v1/futures/fut%00x", "future_id"),
    ("POST", "/v1/futures/fut%00x/cancel", "future_id"),
    ("GET", "/v1/artifacts/art%00x", "artifact_id"),
    ("GET", "/v1/artifacts/art%00x/content", "artifact_id"),
    ("GET", "/v1/budgets/d%00x", "dataset_id"),
    ("PATCH", "/v1/budgets/d%00x", "dataset_id"),
    ("GET", "/v1/audit/d%00x/report", "dataset_id"),
    ("GET", "/v1/datasets/d%00x", "dataset_id"),
    ("DELETE", "/v1/datasets/d%00x", "dataset_id"),
    ("GET", "/v1/audit/verify?dataset_id=d%00x", "dataset_id"),
]
NUL_BODIES = [
    ("/v1/budgets", {"dataset_id": "a\x00b", "epsilon_cap": 1.0}),
    ("/v1/datasets", {"name": "n\x00m"}),
    ("/v1/training_runs", run_config(dp_config={**DP, "dataset_id": "x\x00y"})),
    ("/v1/training_runs", run_config(metadata={"note": "a\x00b"})),
    ("/v1/training_runs", run_config(model_ref="tiny\x00llama")),
]


@pytest.mark.parametrize(("method", "path", "field"), NUL_PATHS)
def test_nul_in_an_id_is_a_422(server: Harness, method: str, path: str, field: str) -> None:
    headers = server.tenant(scopes=TRAIN_AND_OFFICER)
    body = {"epsilon_cap": 1.0} if method == "PATCH" else None
    response = server.client.request(method, path, headers=headers, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert "NUL" in response.json()["detail"]


@pytest.mark.parametrize(("path", "body"), NUL_BODIES)
def test_nul_in_a_body_is_a_422(server: Harness, path: str, body: dict[str, object]) -> None:
    headers = server.tenant(scopes=TRAIN_AND_OFFICER)
    response = server.client.post(path, json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "body"


def test_an_escaped_backslash_before_u0000_is_data_not_nul(server: Harness) -> None:
    headers = server.tenant(scopes=TRAIN_AND_OFFICER)
    config = run_config(metadata={"note": "C:\\u0000 is six characters"})
    response = server.client.post("/v1/training_runs", json=config, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["config"]["metadata"]["note"] == "C:\\u0000 is six characters"
