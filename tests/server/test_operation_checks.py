"""Submission-time checks of the training operations (``server/api/runs.py``): each
refuses with a 4xx naming the field and queues nothing."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from sqlalchemy import func, select
from tg_tinker.types import LossFnName

from server.db.models import OperationRow
from tensafe.artifacts.manifest import MAX_METADATA_BYTES
from tensafe.losses.functions import LOSS_FUNCTIONS
from tests.server.harness import Harness, batch


def _ops(api: Harness) -> int:
    with api.context.db.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(OperationRow)) or 0)


def _refused(
    api: Harness, headers: dict[str, str], run_id: str, op: str, body: dict[str, Any]
) -> dict[str, Any]:
    before = _ops(api)
    response = api.client.post(f"/v1/training_runs/{run_id}/{op}", json=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert _ops(api) == before
    return {"status": response.status_code, **response.json()}


def test_the_wire_loss_names_are_the_registered_losses() -> None:
    # The SDK cannot import tensafe, so its Literal is a copy of the registry's keys.
    assert set(get_args(LossFnName)) == set(LOSS_FUNCTIONS)


def test_an_unknown_loss_fn_is_a_422_naming_the_field_and_the_allowed_names(
    api: Harness,
) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    body = {"batch": {"input_ids": [[1, 2]]}, "loss_fn": "nope"}
    error = _refused(api, headers, run_id, "forward_backward", body)
    assert error["status"] == 422 and error["field"] == "loss_fn"
    assert error["category"] == "user"
    for name in LOSS_FUNCTIONS:
        assert name in error["detail"]


def test_save_state_metadata_too_large(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    body = {"name": "big", "metadata": {"x": "a" * MAX_METADATA_BYTES}}
    error = _refused(api, headers, run_id, "save_state", body)
    assert error["status"] == 422 and error["field"] == "metadata"


@pytest.mark.parametrize(
    ("op", "body"),
    [
        ("save_state", {"name": "ckpt"}),
        ("save_weights_for_sampler", {"name": "ckpt"}),
    ],
)
def test_checkpoint_name_taken(api: Harness, op: str, body: dict[str, Any]) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward_backward", batch())
    api.call(headers, run_id, "optim_step", {})
    api.call(headers, run_id, op, body)
    error = _refused(api, headers, run_id, op, body)
    assert error["status"] == 409 and error["field"] == "name"
    assert "already has a checkpoint named 'ckpt'" in error["detail"]


def test_unnamed_checkpoints_are_never_refused(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "save_state")  # no body: the default request
    api.call(headers, run_id, "save_state", {})
