"""Non-finite input and refused non-finite updates through the API: a 422 naming
the field for bad input, and never a ledger row, an ε charge or an evicted engine
for a step the engine refused before changing anything."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from server.db.models import LedgerEventRow, OperationRow
from server.worker.executor import leaves_engine_unchanged
from tensafe import errors as ts
from tests.server.harness import VOCAB, Harness, batch


def _datum(seed: int, *, weights: list[float] | None = None, dtype: str = "float64") -> dict:
    tokens = np.random.default_rng(seed).integers(0, VOCAB, size=6).tolist()
    inputs = {"target_tokens": {"data": [*tokens[1:], 0], "dtype": "int64", "shape": [6]}}
    if weights is not None:
        inputs["weights"] = {"data": weights, "dtype": dtype, "shape": [len(weights)]}
    return {"model_input": {"chunks": [{"tokens": tokens}]}, "loss_fn_inputs": inputs}


def _count(api: Harness, model: type, **where: object) -> int:
    query = select(func.count()).select_from(model)
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    with api.context.db.sessions() as session:
        return int(session.scalar(query) or 0)


def _charged_steps(api: Harness, run_id: str) -> int:
    return _count(api, LedgerEventRow, run_id=run_id, kind="dp_step")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weight_of_1e39_is_a_422_naming_the_field_and_charges_nothing(
    api: Harness, dtype: str
) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward", batch())  # loaded: vocabulary known
    ops, ledger = _count(api, OperationRow), _count(api, LedgerEventRow)
    body = {"data": [_datum(1), _datum(2, weights=[1.0, 1.0, 1e39, 1.0, 1.0, 1.0], dtype=dtype)]}
    response = api.client.post(
        f"/v1/training_runs/{run_id}/forward_backward", json=body, headers=headers
    )
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == "data[1].loss_fn_inputs.weights" and error["category"] == "user"
    assert "position 2" in error["detail"]
    assert _count(api, OperationRow) == ops  # nothing queued
    assert _count(api, LedgerEventRow) == ledger and _charged_steps(api, run_id) == 0
    # the run is untouched: a clean batch and step work, and only that step is charged
    api.call(headers, run_id, "forward_backward", {"data": [_datum(3, weights=[1.0] * 6)]})
    step = api.call(headers, run_id, "optim_step", {})
    assert step["step"] == 1 and step["dp_metrics"]["steps"] == 1
    assert _charged_steps(api, run_id) == 1


def test_refused_non_finite_update_is_not_charged_and_keeps_the_engine(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine refuses a non-finite update before changing anything (tested in
    tests/tensafe/engine/test_nonfinite.py); here: the server charges nothing for it
    and keeps the run's engine and its pending batch."""
    assert leaves_engine_unchanged(ts.NonFiniteUpdateError("x"))
    assert not leaves_engine_unchanged(ts.PrivacyError("weights no longer finite"))
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.call(headers, run_id, "forward_backward", batch())
    runtime = api.context.executor.runtime(run_id)
    assert runtime is not None

    def refuse(*args: object, **kwargs: object) -> None:
        raise ts.NonFiniteUpdateError("optim_step: the noisy update is not finite")

    monkeypatch.setattr(runtime.engine, "optim_step", refuse)
    error = api.fail(headers, run_id, "optim_step", {})
    assert error["error"] == "NonFiniteUpdateError" and error["category"] == "user"
    assert _charged_steps(api, run_id) == 0 and api.run(headers, run_id)["step"] == 0
    assert api.context.executor.runtime(run_id) is runtime  # not evicted
    monkeypatch.undo()
    step = api.call(headers, run_id, "optim_step", {})  # the pending batch is still there
    assert step["step"] == 1 and step["metrics"]["recent_loss:mean"] is not None
    assert _charged_steps(api, run_id) == 1
