"""Operation results are purged after ``result_ttl_s``: the future then answers 410,
the operation stays applied, and nothing else about it changes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from tg_tinker.errors import NotFoundError, error_class

from server.app import create_app
from server.context import build_context
from server.db.models import OperationRow, Tenant, TrainingRunRow
from server.db.session import Database
from server.errors import ResultExpiredError
from server.services.operations import purge_results, read_future
from server.settings import Settings
from tests.server.harness import Harness, batch


def test_results_are_purged_after_the_ttl(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(default_epsilon_cap=100.0, result_ttl_s=3600.0)
    context = build_context(settings)
    with TestClient(create_app(settings, context=context)) as client:
        api = Harness(client, context)
        headers = api.tenant()
        run_id = api.create_run(headers)
        done = api.wait(headers, api.submit(headers, run_id, "forward_backward", batch(1)))
        assert done["status"] == "completed" and done["result"]["loss"] > 0
        fresh = api.wait(headers, api.submit(headers, run_id, "forward", batch(2)))
        assert context.purge_results_now() == 0  # nothing is an hour old yet
        time.sleep(0.01)
        purged = purge_results(context.db, older_than=timedelta(0))  # as if an hour passed
        assert purged == 3  # load_model, forward_backward, forward
        response = client.get(f"/v1/futures/{done['future_id']}", headers=headers)
        assert response.status_code == 410, response.text
        body = response.json()
        assert body["error"] == "ResultExpiredError" and "applied" in body["detail"]
        assert "TENSAFE_RESULT_TTL_S" in body["detail"]
        assert client.get(f"/v1/futures/{fresh['future_id']}", headers=headers).status_code == 410
        assert purge_results(context.db, older_than=timedelta(0)) == 0  # idempotent
        # the run itself is untouched: it trains on
        after = api.wait(headers, api.submit(headers, run_id, "optim_step", {}))
        assert after["status"] == "completed"
        assert client.get(f"/v1/futures/{after['future_id']}", headers=headers).status_code == 200
    assert error_class("ResultExpiredError", 410) is NotFoundError  # what the SDK raises


def test_no_ttl_keeps_results(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(default_epsilon_cap=100.0, result_ttl_s=None)
    context = build_context(settings)
    with TestClient(create_app(settings, context=context)):
        assert context.purge_results_now() == 0


def test_result_ttl_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(environment="development").result_ttl_s == 7 * 24 * 3600.0
    monkeypatch.setenv("TENSAFE_RESULT_TTL_S", "none")
    assert Settings(environment="development").result_ttl_s is None
    monkeypatch.setenv("TENSAFE_RESULT_TTL_S", "86400")
    assert Settings(environment="development").result_ttl_s == 86400.0


FAILURE = {"error": "X", "category": "user", "detail": "d"}


def test_purge_on_both_databases_drops_only_old_completed_results(database: Database) -> None:

    tag = uuid.uuid4().hex[:10]
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    with database.transaction() as session:
        session.add(Tenant(tenant_id=f"ten_{tag}", name=f"purge-{tag}"))
        session.flush()
        session.add(
            TrainingRunRow(
                run_id=f"run_{tag}",
                tenant_id=f"ten_{tag}",
                status="READY",
                config={},
                model_ref="tiny-llama",
                dp_enabled=True,
            )
        )
        session.flush()
        for seq, (status, result, completed) in enumerate(
            [
                ("completed", {"loss": 1.0}, long_ago),  # purged
                ("completed", {"loss": 2.0}, None),  # recent: kept
                ("failed", None, long_ago),  # errors are not results: kept as they are
            ]
        ):
            session.add(
                OperationRow(
                    future_id=f"fut_{tag}_{seq}",
                    run_id=f"run_{tag}",
                    tenant_id=f"ten_{tag}",
                    seq=seq,
                    operation="forward",
                    status=status,
                    result=result,
                    error=None
                    if status == "completed"
                    else {"error": "X", "category": "user", "detail": "d"},
                    completed_at=completed or datetime.now(UTC),
                )
            )
    assert purge_results(database, older_than=timedelta(days=365 * 20)) == 1
    assert purge_results(database, older_than=timedelta(days=365 * 20)) == 0  # SQL NULL now
    with pytest.raises(ResultExpiredError):
        read_future(database, tenant_id=f"ten_{tag}", future_id=f"fut_{tag}_0")
    kept = read_future(database, tenant_id=f"ten_{tag}", future_id=f"fut_{tag}_1")
    assert kept.result == {"loss": 2.0}
    failed = read_future(database, tenant_id=f"ten_{tag}", future_id=f"fut_{tag}_2")
    assert failed.status == "failed" and failed.error is not None
