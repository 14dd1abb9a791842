"""What happens when a run's engine is gone (restart, eviction): rebuild from the last
checkpoint with ε from the DP rows, or refuse until load_state; interrupted operations
are failed at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import update
from tg_tinker.types import TrainingConfig

from server.context import build_context
from server.db.migrate import upgrade_database
from server.db.models import OperationRow, TrainingRunRow, utcnow
from server.services.operations import RESTART_ERROR
from server.services.runs import create_run
from server.services.tenants import create_tenant
from server.settings import Settings
from tests.server.harness import Harness, batch, run_config


def test_rebuild_from_checkpoint_with_all_dp_rows(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    for seed in (0, 1):
        api.call(headers, run_id, "forward_backward", batch(seed))
        api.call(headers, run_id, "optim_step", {})
    saved = api.call(headers, run_id, "save_state", {"name": "at-2"})
    live = api.context.executor.runtime(run_id)
    assert live is not None
    at_checkpoint = {k: v.clone() for k, v in live.engine.state_dict()["weights"].items()}
    api.call(headers, run_id, "forward_backward", batch(2))
    api.call(headers, run_id, "optim_step", {})  # step 3: after the checkpoint

    api.context.executor.evict(run_id)  # what a restart does to memory
    forward = api.call(headers, run_id, "forward", batch(9))
    assert forward["metrics"]["step:max"] == 2  # resumed from the checkpoint
    rebuilt = api.context.executor.runtime(run_id)
    assert rebuilt is not None and rebuilt is not live
    for name, tensor in rebuilt.engine.state_dict()["weights"].items():
        assert torch.equal(tensor, at_checkpoint[name]), name
    run = api.run(headers, run_id)
    assert run["step"] == 2 and run["status"] == "READY"
    api.call(headers, run_id, "forward_backward", batch(3))
    step = api.call(headers, run_id, "optim_step", {})
    assert step["step"] == 3
    assert step["dp_metrics"]["steps"] == 4  # the 3rd step's ε survived, not the checkpoint's
    assert saved["step"] == 2


def test_without_checkpoint_training_is_refused_until_load_state(api: Harness) -> None:
    headers = api.tenant()
    donor = api.create_run(headers)
    api.call(headers, donor, "forward_backward", batch())
    api.call(headers, donor, "optim_step", {})
    saved = api.call(headers, donor, "save_state", {"name": "donor"})

    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward_backward", batch())
    api.call(headers, run_id, "optim_step", {})
    api.context.executor.evict(run_id)
    for op, body in (("forward_backward", batch()), ("save_weights_for_sampler", {"name": "x"})):
        error = api.fail(headers, run_id, op, body)
        assert error["error"] == "ConflictError" and "load_state" in error["detail"]
    api.call(headers, run_id, "load_state", {"artifact_id": saved["artifact_id"]})
    api.call(headers, run_id, "forward_backward", batch(1))
    step = api.call(headers, run_id, "optim_step", {})
    assert step["step"] == 2 and step["dp_metrics"]["steps"] == 3  # own 1 + carried 1 + new 1


def test_never_trained_run_restarts_from_fresh_weights(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    before = api.call(headers, run_id, "forward", batch(4))
    api.context.executor.evict(run_id)
    after = api.call(headers, run_id, "forward", batch(4))
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-6)


def test_lost_gradients_refuse_the_next_operation_once(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward_backward", batch())
    api.context.executor.evict(run_id)
    error = api.fail(headers, run_id, "optim_step", {})
    assert error["error"] == "ConflictError" and "resubmit" in error["detail"]
    api.call(headers, run_id, "forward_backward", batch())
    assert api.call(headers, run_id, "optim_step", {})["step"] == 1


def test_start_fails_interrupted_operations(tmp_path: Path) -> None:
    settings = Settings(
        environment="development", data_dir=tmp_path, worker_threads=1, sweep_interval_s=3600
    )
    context = build_context(settings)
    upgrade_database(context.db.url)
    with context.db.transaction() as session:
        issued = create_tenant(session, name="acme", hasher=context.hasher)
        run, load = create_run(
            session,
            tenant_id=issued.tenant_id,
            config=TrainingConfig.model_validate(run_config()),
            settings=settings,
            idempotency_key=None,
        )
        assert load is not None
        running = OperationRow(
            future_id="fut_running",
            run_id=run.run_id,
            tenant_id=issued.tenant_id,
            seq=1,
            operation="optim_step",
            status="running",
            created_at=utcnow(),
        )
        session.add(running)
        session.execute(
            update(TrainingRunRow).where(TrainingRunRow.run_id == run.run_id).values(status="BUSY")
        )
    context.start()
    try:
        with context.db.sessions() as session:
            for future_id in (load.future_id, "fut_running"):
                op = session.get(OperationRow, future_id)
                assert op is not None and op.status == "failed"
                assert op.error == RESTART_ERROR.model_dump(mode="json")
            row = session.get(TrainingRunRow, run.run_id)
            assert row is not None and row.status == "READY"
    finally:
        context.stop()
