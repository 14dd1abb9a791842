"""Restart: stop and start the server on the same data dir and database; runs,
futures, artifacts and ε records are intact and the run resumes from its last
checkpoint with the privacy history of every step."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import create_engine, text
from tg_tinker import ServiceClient

from tests.integration.conftest import LiveServer
from tests.integration.test_end_to_end import random_batch, tiny_config

pytestmark = pytest.mark.integration


def _dp_rows(server: LiveServer, run_id: str) -> list[tuple[int, int, float]]:
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            query = "select seq, model_step, epsilon from dp_steps where run_id = :r order by seq"
            rows = conn.execute(text(query), {"r": run_id})
            return [tuple(row) for row in rows]  # type: ignore[misc]
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_restart_keeps_everything_and_resumes(
    fresh_server: Callable[[str], LiveServer], backend: str
) -> None:
    server = fresh_server(backend)
    tenant = server.create_tenant()
    headers = {"Authorization": f"Bearer {tenant['api_key']}"}
    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        tc = service.create_training_client(tiny_config())
        for i in range(2):
            tc.forward_backward(random_batch(i)).result(timeout=120)
            tc.optim_step().result(timeout=120)
        checkpoint = tc.save_state("two", metadata={"note": "before restart"}).result(timeout=120)
        tc.forward_backward(random_batch(2)).result(timeout=120)
        third = tc.optim_step()
        third_result = third.result(timeout=120)
        assert third_result.step == 3
        epsilon_before = third_result.dp_metrics.epsilon_spent
        run_id = tc.run_id
    rows_before = _dp_rows(server, run_id)
    assert [r[:2] for r in rows_before] == [(1, 1), (2, 2), (3, 3)]

    server.restart()

    with ServiceClient(server.url, api_key=tenant["api_key"]) as service:
        (run,) = service.list_training_runs()
        assert run.run_id == run_id and run.step == 3 and run.status == "READY"
        old = httpx.get(f"{server.url}/v1/futures/{third.future_id}", headers=headers).json()
        assert old["status"] == "completed" and old["result"]["step"] == 3
        assert old["result"]["dp_metrics"]["epsilon_spent"] == pytest.approx(epsilon_before)
        (artifact,) = service.list_artifacts(run_id)
        assert artifact.artifact_id == checkpoint.artifact_id
        assert artifact.content_hash == checkpoint.content_hash
        assert artifact.metadata == {"note": "before restart"}
        blob = service.pull_artifact(artifact.artifact_id, expected_sha256=artifact.content_hash)
        assert len(blob) == artifact.size_bytes
        assert _dp_rows(server, run_id) == rows_before

        tc = service.get_training_client(run_id)
        tc.forward_backward(random_batch(3)).result(timeout=120)
        resumed = tc.optim_step().result(timeout=120)
        assert resumed.step == 3  # weights resumed from the step-2 checkpoint
        assert resumed.dp_metrics.steps == 4  # but every noisy step is accounted
        assert resumed.dp_metrics.epsilon_spent > epsilon_before
    assert [r[0] for r in _dp_rows(server, run_id)] == [1, 2, 3, 4]
