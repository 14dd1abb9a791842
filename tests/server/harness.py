"""A TestClient-driven server for API tests: tenants, runs, submit, long-poll."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from server.context import ServerContext
from server.services.scopes import TRAIN, Scope
from server.services.tenants import create_api_key, create_tenant

VOCAB = 49152  # tiny-llama uses the SmolLM2 tokenizer
# a key that both trains and manages budgets (tests that create or change budgets)
TRAIN_AND_OFFICER = ("train", "privacy-officer")
DP = {"noise_multiplier": 1.0, "dataset_size": 1000, "expected_batch_size": 4, "accountant": "rdp"}


def run_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_ref": "tiny-llama",
        "lora_config": {"rank": 4},
        "dp_config": dict(DP),
        "seed": 0,
    }
    config.update(overrides)
    return config


def batch(seed: int = 0, *, rows: int = 2, length: int = 12) -> dict[str, Any]:
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(rows, length)).tolist()
    return {"batch": {"input_ids": ids, "labels": ids}}


class Harness:
    """Drives one app through a TestClient."""

    def __init__(self, client: TestClient, context: ServerContext) -> None:
        self.client = client
        self.context = context

    def tenant(self, *, scopes: tuple[Scope, ...] = (TRAIN,)) -> dict[str, str]:
        """Headers of a fresh tenant's API key with ``scopes`` (a training key unless
        the test creates or changes budgets: :data:`TRAIN_AND_OFFICER`)."""
        with self.context.db.transaction() as session:
            issued = create_tenant(
                session,
                name="t-" + uuid.uuid4().hex[:10],
                hasher=self.context.hasher,
                scopes=scopes,
            )
        self.last_key = issued.api_key
        self.last_key_id = issued.key_id
        self.last_tenant_id = issued.tenant_id
        return {"Authorization": f"Bearer {issued.api_key}"}

    def key(self, tenant_id: str, *, scopes: tuple[Scope, ...]) -> tuple[str, dict[str, str]]:
        """``(key_id, headers)`` of another key of ``tenant_id`` with ``scopes``."""
        with self.context.db.transaction() as session:
            issued = create_api_key(
                session, tenant_id=tenant_id, hasher=self.context.hasher, scopes=scopes
            )
        return issued.key_id, {"Authorization": f"Bearer {issued.api_key}"}

    def create_run(self, headers: dict[str, str], **overrides: Any) -> str:
        config = run_config(**overrides)
        response = self.client.post("/v1/training_runs", json=config, headers=headers)
        assert response.status_code == 201, response.text
        return str(response.json()["run_id"])

    def submit(
        self, headers: dict[str, str], run_id: str, op: str, body: dict[str, Any] | None = None
    ) -> str:
        response = self.client.post(f"/v1/training_runs/{run_id}/{op}", json=body, headers=headers)
        assert response.status_code == 202, response.text
        return str(response.json()["future_id"])

    def wait(
        self, headers: dict[str, str], future_id: str, *, timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(
                f"/v1/futures/{future_id}", params={"wait": 10}, headers=headers
            )
            assert response.status_code == 200, response.text
            state = response.json()
            if state["status"] in ("completed", "failed", "cancelled"):
                return dict(state)
            assert time.monotonic() < deadline, f"future {future_id} still {state['status']}"

    def call(
        self, headers: dict[str, str], run_id: str, op: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        state = self.wait(headers, self.submit(headers, run_id, op, body))
        assert state["status"] == "completed", state
        return dict(state["result"])

    def fail(
        self, headers: dict[str, str], run_id: str, op: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        state = self.wait(headers, self.submit(headers, run_id, op, body))
        assert state["status"] == "failed", state
        return dict(state["error"])

    def run(self, headers: dict[str, str], run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/training_runs/{run_id}", headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())
