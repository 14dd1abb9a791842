"""The HTTP surface: health, docs, auth, runs, futures, limits and bad input."""

from __future__ import annotations

import json
import logging
import time

import pytest
from sqlalchemy import func, select

from server.db.models import OperationRow
from tests.server.harness import DP, Harness, batch, run_config


def test_health_and_docs(api: Harness) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/docs").status_code == 200
    spec = api.client.get("/openapi.json").json()
    assert "/v1/training_runs/{run_id}/forward_backward" in spec["paths"]
    assert "ApiKey" in json.dumps(spec["components"]["securitySchemes"])


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nonsense", "Bearer ts_0123456789abcdef_" + "A" * 43, "Basic dXNlcjpwYXNz"],
)
def test_missing_or_wrong_key_is_401(api: Harness, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = api.client.get("/v1/training_runs", headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "AuthenticationError" and body["category"] == "user"


def test_run_lifecycle(api: Harness) -> None:
    headers = api.tenant()
    response = api.client.post("/v1/training_runs", json=run_config(), headers=headers)
    assert response.status_code == 201
    run = response.json()
    assert run["status"] == "INITIALIZING" and run["step"] == 0
    run_id = run["run_id"]
    # operations queue behind the model load: no need to wait for READY
    out = api.call(headers, run_id, "forward", batch(1))
    assert len(out["loss_fn_outputs"]) == 2 and out["tokens_processed"] == 24
    assert api.run(headers, run_id)["status"] == "READY"
    listed = api.client.get("/v1/training_runs", headers=headers).json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    beat = api.client.post(f"/v1/training_runs/{run_id}/heartbeat", headers=headers).json()
    assert beat["last_heartbeat_at"] is not None
    info = api.client.get(f"/v1/training_runs/{run_id}/info", headers=headers).json()
    assert info["is_lora"] and info["lora_rank"] == 4 and info["model_data"]["arch"] == "llama"
    assert info["trainable_params"] > 0
    files = api.client.get(f"/v1/training_runs/{run_id}/tokenizer", headers=headers).json()
    assert "tokenizer.json" in files["files"]
    api.context.executor.evict(run_id)  # as after a restart: served from the kept copy
    again = api.client.get(f"/v1/training_runs/{run_id}/tokenizer", headers=headers).json()
    assert again == files
    unloaded = api.call(headers, run_id, "unload")
    assert unloaded == {"model_id": run_id, "type": "unload_model"}
    assert api.run(headers, run_id)["status"] == "TERMINATED"
    refused = api.client.post(
        f"/v1/training_runs/{run_id}/forward_backward", json=batch(), headers=headers
    )
    assert refused.status_code == 409 and "unloaded" in refused.json()["detail"]
    assert run_id not in api.context.executor.loaded_runs()


def test_model_load_failure_sets_error(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers, model_ref="acme/no-such-model")  # hub is offline
    url = f"/v1/training_runs/{run_id}/forward"
    response = api.client.post(url, json=batch(), headers=headers)
    if response.status_code == 202:  # queued before the load failed: refused when run
        error = api.wait(headers, response.json()["future_id"])["error"]
    else:  # the load failed first: refused at once
        assert response.status_code == 409
        error = response.json()
    assert error["error"] == "ConflictError" and "failed" in error["detail"]
    run = api.run(headers, run_id)
    assert run["status"] == "ERROR" and "acme/no-such-model" in run["error"]
    # the loader's details (cache directories, the data dir) stay in the server log
    settings = api.context.settings
    for secret_path in (str(settings.data_dir), "/models", "cache"):
        assert secret_path not in run["error"] and secret_path not in error["detail"]


def _ops(api: Harness) -> int:
    with api.context.db.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(OperationRow)) or 0)


@pytest.mark.parametrize(
    ("op", "body", "status", "field"),
    [
        ("forward_backward", {"batch": {"input_ids": [[1, 2, 99_999]]}}, 422, "batch.input_ids[0]"),
        ("forward_backward", {"batch": {"input_ids": [[1, 2], [3]]}}, 422, "batch.input_ids"),
        ("forward_backward", {"batch": {"input_ids": [[1] * 65]}}, 422, "batch.input_ids"),
        ("forward_backward", {"batch": {"input_ids": [[1, 2]] * 17}}, 422, "batch.input_ids"),
        ("forward_backward", {"batch": {"input_ids": [[1, 2]]}, "data": []}, 422, "body"),
        ("forward_backward", {"batch": {"input_ids": "x"}}, 422, "batch.input_ids"),
        ("forward_backward", {"batch": {"input_ids": [[1, 2]]}, "loss_fn": "nope"}, 422, "loss_fn"),
        (
            "forward",
            {
                "data": [
                    {
                        "model_input": {"chunks": [{"tokens": [1, 2, 3]}]},
                        "loss_fn_inputs": {
                            "target_tokens": {"data": [2, 3], "dtype": "int64", "shape": [2]}
                        },
                    }
                ]
            },
            422,
            "data[0].loss_fn_inputs.target_tokens",
        ),
        ("optim_step", {"apply_dp_noise": False}, 422, "apply_dp_noise"),
        ("optim_step", {"adam_params": {"learning_rate": -1}}, 422, "adam_params.learning_rate"),
        ("save_state", {"name": "../escape"}, 422, "name"),
        ("load_state", {"artifact_id": "art_nope"}, 404, "artifact_id"),
        ("load_state", {"path": "s3://x"}, 422, "path"),
    ],
)
def test_bad_input_is_4xx_naming_the_field_and_queues_nothing(
    api: Harness, op: str, body: dict[str, object], status: int, field: str
) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward", batch())  # loaded: vocabulary known
    before = _ops(api)
    response = api.client.post(f"/v1/training_runs/{run_id}/{op}", json=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["category"] == "user", error
    assert error["field"] == field or error["field"].startswith(field + "["), error
    assert error["detail"]
    assert _ops(api) == before
    assert api.client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dp_config": None}, "dp_config"),
        ({"dp_config": {**DP, "enabled": False}}, "dp_config"),
        ({"dp_config": {**DP, "noise_multiplier": 0.0}}, "dp_config.noise_multiplier"),
        ({"dp_config": {"noise_multiplier": 1.0, "sample_rate": 0.1}}, "dp_config.dataset_size"),
        ({"lora_config": {"rank": 4, "target_modules": []}}, "lora_config.target_modules"),
        ({"lora_config": {"rank": 0}}, "lora_config.rank"),
        ({"optimizer": {"betas": [0.9, 1.5]}}, "optimizer.betas[1]"),
        ({"batch_size": 1000}, "batch_size"),
        ({"model_ref": "/etc"}, "model_ref"),
        ({"model_ref": "../models/x"}, "model_ref"),
    ],
)
def test_bad_training_config(api: Harness, overrides: dict[str, object], field: str) -> None:
    headers = api.tenant()
    response = api.client.post("/v1/training_runs", json=run_config(**overrides), headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert api.client.get("/v1/training_runs", headers=headers).json()["runs"] == []


def test_body_size_limit(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    big = {"batch": {"input_ids": [[1] * 60] * 16}, "loss_fn_config": None}
    payload = json.dumps(big).encode() + b" " * (300 * 1024)
    response = api.client.post(
        f"/v1/training_runs/{run_id}/forward_backward",
        content=payload,
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "PayloadTooLargeError"

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(40):
            yield b" " * 8192

    response = api.client.post(
        f"/v1/training_runs/{run_id}/forward_backward",
        content=chunks(),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert api.client.get("/healthz").status_code == 200


def test_idempotency_key(api: Harness) -> None:
    headers = api.tenant()
    key = {"Idempotency-Key": "create-1"}
    first = api.client.post("/v1/training_runs", json=run_config(), headers={**headers, **key})
    again = api.client.post("/v1/training_runs", json=run_config(), headers={**headers, **key})
    assert first.json()["run_id"] == again.json()["run_id"]
    other = api.client.post(
        "/v1/training_runs", json=run_config(seed=5), headers={**headers, **key}
    )
    assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key"
    run_id = first.json()["run_id"]
    url = f"/v1/training_runs/{run_id}/forward"
    a = api.client.post(url, json=batch(), headers={**headers, "Idempotency-Key": "op-1"}).json()
    b = api.client.post(url, json=batch(), headers={**headers, "Idempotency-Key": "op-1"}).json()
    assert a == b
    c = api.client.post(url, json=batch(2), headers={**headers, "Idempotency-Key": "op-1"})
    assert c.status_code == 409
    # a retried save is answered with the original future, although its name is taken now
    save = f"/v1/training_runs/{run_id}/save_state"
    key = {**headers, "Idempotency-Key": "save-1"}
    first_save = api.client.post(save, json={"name": "ckpt"}, headers=key).json()
    api.wait(headers, first_save["future_id"])
    retry = api.client.post(save, json={"name": "ckpt"}, headers=key)
    assert retry.status_code == 202 and retry.json() == first_save
    fresh = api.client.post(save, json={"name": "ckpt"}, headers=headers)
    assert fresh.status_code == 409 and fresh.json()["field"] == "name"


def test_long_poll_returns_when_done_and_is_capped(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward", batch())
    future = api.submit(headers, run_id, "forward", batch(3))
    started = time.monotonic()
    state = api.client.get(f"/v1/futures/{future}", params={"wait": 60}, headers=headers).json()
    assert state["status"] == "completed"
    assert time.monotonic() - started < 30
    assert api.context.notifier.waiting() == 0
    done = time.monotonic()
    api.client.get(f"/v1/futures/{future}", params={"wait": 60}, headers=headers)
    assert time.monotonic() - done < 1  # already final: no wait
    bad = api.client.get(f"/v1/futures/{future}", params={"wait": -1}, headers=headers)
    assert bad.status_code == 422 and bad.json()["field"] == "wait"


def test_raw_api_key_not_in_database_or_logs(
    api: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = api.tenant()
    key = api.last_key
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward", batch())
    data_dir = api.context.settings.data_dir
    raw = b"".join(p.read_bytes() for p in data_dir.glob("tensafe.db*"))
    secret = key.split("_", 2)[2]
    assert key.encode() not in raw and secret.encode() not in raw
    assert key not in caplog.text and secret not in caplog.text


def test_training_batches_are_not_stored(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    marker = [48111, 48112, 48113, 48114, 48115, 48116]
    body = {"batch": {"input_ids": [marker], "labels": [marker]}}
    future = api.submit(headers, run_id, "forward_backward", body)
    assert api.wait(headers, future)["status"] == "completed"
    with api.context.db.sessions() as session:
        op = session.get(OperationRow, future)
        assert op is not None
        assert op.request == {
            "form": "batch",
            "examples": 1,
            "tokens": 6,
            "loss_fn": "cross_entropy",
            "loss_fn_config": None,
        }
    raw = b"".join(p.read_bytes() for p in api.context.settings.data_dir.glob("tensafe.db*"))
    assert b"48111" not in raw
