"""Training operations through the API: DP records, checkpoints, carry-over, TTL,
cancellation, and failures that stay contained."""

from __future__ import annotations

import hashlib
import io
import threading
from datetime import timedelta

import pytest
import torch
from sqlalchemy import select, update

from server.db.models import ArtifactRow, DPStepRow, utcnow
from server.services import dp_step
from tensafe.artifacts import TenantKey, open_checkpoint
from tensafe.privacy import PrivacyAccountant
from tests.server.harness import DP, Harness, batch


def _dp_rows(api: Harness, run_id: str) -> list[DPStepRow]:
    """The run's rows of the ``dp_steps`` view of the ledger."""
    with api.context.db.sessions() as session:
        return list(
            session.scalars(
                select(DPStepRow).where(DPStepRow.run_id == run_id).order_by(DPStepRow.seq)
            )
        )


def _epsilon(steps: int) -> float:
    accountant = PrivacyAccountant(accountant="rdp")
    for _ in range(steps):
        accountant.record_step(noise_multiplier=DP["noise_multiplier"], sample_rate=0.004)
    return accountant.epsilon(1e-5)


def test_dp_step_is_recorded_with_its_parameters(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    out = api.call(headers, run_id, "forward_backward", batch())
    assert out["grad_norm"] is not None and "dp/clip_fraction" in out["metrics"]
    step = api.call(headers, run_id, "optim_step", {"adam_params": {"learning_rate": 1e-3}})
    assert step["step"] == 1 and step["learning_rate"] == pytest.approx(1e-3)
    dp = step["dp_metrics"]
    assert dp["steps"] == 1 and dp["epsilon_spent"] == pytest.approx(_epsilon(1))
    (row,) = _dp_rows(api, run_id)
    assert (row.seq, row.model_step, row.origin_run_id) == (1, 1, None)
    assert row.noise_multiplier == 1.0 and row.sample_rate == pytest.approx(0.004)
    assert row.max_grad_norm == 1.0 and row.dataset_size == 1000 and row.delta == 1e-5
    assert row.accountant == "rdp" and row.epsilon == pytest.approx(dp["epsilon_spent"])
    assert "torch" in row.library_versions
    assert api.run(headers, run_id)["step"] == 1


def test_checkpoint_pull_and_local_decrypt(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward_backward", batch())
    api.call(headers, run_id, "optim_step", {})
    saved = api.call(
        headers, run_id, "save_state", {"name": "epoch1", "metadata": {"epoch": 1, "loss": 0.5}}
    )
    assert saved["path"] == f"tensafe://{run_id}/weights/epoch1"
    assert saved["metadata"] == {"epoch": 1, "loss": 0.5} and saved["step"] == 1
    info = api.client.get(f"/v1/artifacts/{saved['artifact_id']}", headers=headers).json()
    assert info["kind"] == "training_state" and info["size_bytes"] == saved["size_bytes"]
    listed = api.client.get("/v1/artifacts", params={"run_id": run_id}, headers=headers).json()
    assert [a["artifact_id"] for a in listed["artifacts"]] == [saved["artifact_id"]]

    content = api.client.get(f"/v1/artifacts/{saved['artifact_id']}/content", headers=headers)
    assert content.status_code == 200
    assert int(content.headers["content-length"]) == len(content.content) == saved["size_bytes"]
    assert content.headers["x-content-sha256"] == saved["content_hash"]
    assert hashlib.sha256(content.content).hexdigest() == saved["content_hash"]

    key = TenantKey.from_json(api.client.get("/v1/keys/export", headers=headers).content)
    opened = open_checkpoint(
        io.BytesIO(content.content),
        keys=key,
        tenant_id=key.tenant_id,
        artifact_id=saved["artifact_id"],
        expected_content_hash=saved["content_hash"],
    )
    assert opened.manifest.metadata == {"epoch": 1, "loss": 0.5}
    assert opened.manifest.dp is not None and opened.manifest.dp["epsilon"] > 0
    runtime = api.context.executor.runtime(run_id)
    assert runtime is not None
    weights = runtime.engine.state_dict()["weights"]
    for name, tensor in weights.items():
        assert torch.equal(opened.tensors["model." + name], tensor), name

    dup = api.client.post(
        f"/v1/training_runs/{run_id}/save_state", json={"name": "epoch1"}, headers=headers
    )
    assert dup.status_code == 409 and dup.json()["field"] == "name"
    sampler = api.call(headers, run_id, "save_weights_for_sampler", {"name": "epoch1"})
    assert sampler["path"] == f"tensafe://{run_id}/sampler_weights/epoch1"
    wrong_kind = api.fail(headers, run_id, "load_state", {"artifact_id": sampler["artifact_id"]})
    assert wrong_kind["field"] == "artifact_id" and "training_state" in wrong_kind["detail"]


def test_refused_operation_changes_nothing(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward_backward", batch())
    error = api.fail(headers, run_id, "save_state", {"name": "mid-batch"})
    assert error["error"] == "EngineStateError" and error["category"] == "user"
    assert api.client.get("/v1/artifacts", headers=headers).json()["artifacts"] == []
    assert api.run(headers, run_id)["step"] == 0
    step = api.call(headers, run_id, "optim_step", {})  # the accumulated batch is intact
    assert step["step"] == 1
    assert len(_dp_rows(api, run_id)) == 1


def test_load_rewinds_weights_but_never_epsilon(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward_backward", batch())
    api.call(headers, run_id, "optim_step", {})
    first = api.call(headers, run_id, "save_state", {"name": "s1"})
    for seed in (1, 2):
        api.call(headers, run_id, "forward_backward", batch(seed))
        api.call(headers, run_id, "optim_step", {})
    loaded = api.call(headers, run_id, "load_state", {"path": first["path"]})
    assert loaded["step"] == 1 and loaded["status"] == "loaded"
    assert api.run(headers, run_id)["step"] == 1
    api.call(headers, run_id, "forward_backward", batch(3))
    step = api.call(headers, run_id, "optim_step", {})
    assert step["step"] == 2
    assert step["dp_metrics"]["steps"] == 4  # all noisy steps ever taken count
    assert step["dp_metrics"]["epsilon_spent"] == pytest.approx(_epsilon(4))


def test_loading_another_runs_checkpoint_carries_its_history_once(api: Harness) -> None:
    headers = api.tenant()
    source = api.create_run(headers)
    for seed in (0, 1):
        api.call(headers, source, "forward_backward", batch(seed))
        api.call(headers, source, "optim_step", {})
    saved = api.call(headers, source, "save_state", {"name": "two-steps"})
    api.call(headers, source, "forward_backward", batch(5))
    api.call(headers, source, "optim_step", {})  # after the checkpoint: not carried

    target = api.create_run(headers)
    api.call(headers, target, "load_state", {"artifact_id": saved["artifact_id"]})
    rows = _dp_rows(api, target)
    assert [(r.origin_run_id, r.origin_seq, r.epsilon) for r in rows] == [
        (source, 1, None),
        (source, 2, None),
    ]
    api.call(headers, target, "load_state", {"artifact_id": saved["artifact_id"]})
    assert len(_dp_rows(api, target)) == 2  # the same lineage is not counted twice
    api.call(headers, target, "forward_backward", batch(7))
    step = api.call(headers, target, "optim_step", {})
    assert step["step"] == 3 and step["dp_metrics"]["steps"] == 3
    assert step["dp_metrics"]["epsilon_spent"] == pytest.approx(_epsilon(3))

    other_shape = api.create_run(headers, lora_config={"rank": 8})
    error = api.fail(headers, other_shape, "load_state", {"artifact_id": saved["artifact_id"]})
    assert error["error"] == "ValidationError" and error["field"] == "artifact_id"
    assert _dp_rows(api, other_shape) == []


def test_expired_artifacts_are_404_and_swept(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    saved = api.call(headers, run_id, "save_weights_for_sampler", {"name": "w"})
    artifact_id = saved["artifact_id"]
    assert api.context.store.exists(artifact_id)
    with api.context.db.transaction() as session:
        session.execute(
            update(ArtifactRow)
            .where(ArtifactRow.artifact_id == artifact_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    for url in (f"/v1/artifacts/{artifact_id}", f"/v1/artifacts/{artifact_id}/content"):
        assert api.client.get(url, headers=headers).status_code == 404
    assert api.client.get("/v1/artifacts", headers=headers).json()["artifacts"] == []
    assert api.context.sweep_now() >= 1
    with api.context.db.sessions() as session:
        assert session.get(ArtifactRow, artifact_id) is None
    assert not api.context.store.exists(artifact_id)


def test_cancel_queued_but_not_running(api: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward", batch())
    entered, release = threading.Event(), threading.Event()
    original = api.context.executor._handlers["forward"]

    def blocking(op, run, payload):  # type: ignore[no-untyped-def]
        entered.set()
        assert release.wait(30)
        return original(op, run, payload)

    monkeypatch.setitem(api.context.executor._handlers, "forward", blocking)
    running = api.submit(headers, run_id, "forward", batch())
    assert entered.wait(30)
    queued = api.submit(headers, run_id, "forward_backward", batch())
    response = api.client.post(f"/v1/futures/{running}/cancel", headers=headers).json()
    assert response == {"cancelled": False, "status": "running"}
    response = api.client.post(f"/v1/futures/{queued}/cancel", headers=headers).json()
    assert response == {"cancelled": True, "status": "cancelled"}
    release.set()
    assert api.wait(headers, running)["status"] == "completed"
    assert api.wait(headers, queued)["status"] == "cancelled"
    after = api.call(headers, run_id, "optim_step", {})  # the cancelled batch never ran
    assert after["metrics"].get("recent_loss:mean") is None


def test_a_crash_fails_one_operation_only(api: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = api.tenant()
    broken, healthy = api.create_run(headers), api.create_run(headers)
    api.call(headers, broken, "forward", batch())
    original = api.context.executor._handlers["forward_backward"]
    calls = {"n": 0}

    def crash_once(op, run, payload):  # type: ignore[no-untyped-def]
        if run.run_id == broken and calls["n"] == 0:
            calls["n"] += 1
            raise RuntimeError("simulated worker bug with a secret path /etc/x")
        return original(op, run, payload)

    monkeypatch.setitem(api.context.executor._handlers, "forward_backward", crash_once)
    error = api.fail(headers, broken, "forward_backward", batch())
    assert error["error"] == "ServerError" and error["category"] == "server"
    assert "/etc/x" not in error["detail"]
    assert api.call(headers, healthy, "forward_backward", batch())["loss"] > 0
    assert api.call(headers, broken, "forward_backward", batch())["loss"] > 0
    assert api.call(headers, broken, "optim_step", {})["step"] == 1


def test_dp_row_and_completion_commit_together(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the DP record cannot be written, the step is not visible and not kept."""
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward_backward", batch())

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("database write failed")

    monkeypatch.setattr(dp_step, "_advance_run", refuse)  # after the ledger row, same commit
    error = api.fail(headers, run_id, "optim_step", {})
    assert error["category"] == "server"
    assert _dp_rows(api, run_id) == [] and api.run(headers, run_id)["step"] == 0
    assert api.context.executor.runtime(run_id) is None  # engine discarded, not ahead of the DB
    monkeypatch.undo()
    with api.context.db.sessions() as session:
        assert session.scalar(select(DPStepRow).where(DPStepRow.run_id == run_id)) is None
