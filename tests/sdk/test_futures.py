"""APIFuture: long polling, timeout, cancel, typed results and errors, forwarding."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time

import httpx
import pytest
from tg_tinker import (
    APIFuture,
    BudgetExceededError,
    ForwardBackwardOutput,
    FutureCancelledError,
    FutureTimeoutError,
    OptimStepResponse,
    ServerError,
    ValidationError,
)
from tg_tinker.types import Datum

from tests.sdk.fakes import FB_RESULT, OPTIM_RESULT, future_ref, future_state

FUT = r"/v1/futures/fut-1"
DATUM = Datum(model_input=[1, 2], loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]})


def _submit(api, training_client, operation="forward_backward"):
    api.on(
        "POST",
        rf"/v1/training_runs/run-1/{operation}",
        httpx.Response(202, json=future_ref(operation=operation)),
    )
    if operation == "optim_step":
        return training_client.optim_step()
    return training_client.forward_backward([DATUM])


def test_result_long_polls_until_completed(api, training_client):
    future = _submit(api, training_client)
    api.on(
        "GET",
        FUT,
        [
            future_state("pending"),
            future_state("running"),
            future_state("completed", result=FB_RESULT),
        ],
    )
    out = future.result()
    assert isinstance(out, ForwardBackwardOutput)
    assert out.loss == 4.96875
    polls = api.sent("GET", FUT)
    assert len(polls) == 3
    assert all(float(p.url.params["wait"]) == 30.0 for p in polls)


def test_a_resolved_future_is_cached(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("completed", result=FB_RESULT))
    assert future.result() is future.result()
    assert future.done()
    assert len(api.sent("GET", FUT)) == 1


def test_wait_is_bounded_by_the_remaining_timeout(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("completed", result=FB_RESULT))
    future.result(timeout=2.5)
    assert 2.0 < float(api.sent("GET", FUT)[0].url.params["wait"]) <= 2.5


def test_timeout_raises_and_the_future_stays_usable(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("running"))
    start = time.monotonic()
    with pytest.raises(FutureTimeoutError, match="keeps running") as info:
        future.result(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - start < 5
    api.on("GET", FUT, future_state("completed", result=FB_RESULT))
    assert future.result(timeout=1).loss == 4.96875


def test_a_server_answering_early_is_not_hammered(api, training_client, sleeps):
    future = _submit(api, training_client)
    api.on(
        "GET", FUT, [future_state("pending")] * 5 + [future_state("completed", result=FB_RESULT)]
    )
    future.result()
    # Every early "pending" answer was followed by a growing pause, capped at 1 s.
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8]


def test_timeout_zero_polls_once(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("running"))
    with pytest.raises(FutureTimeoutError):
        future.result(timeout=0)
    assert [p.url.params["wait"] for p in api.sent("GET", FUT)] == ["0"]


def test_negative_timeout_is_refused(api, training_client):
    future = _submit(api, training_client)
    with pytest.raises(ValueError):
        future.result(timeout=-1)


def test_failed_future_raises_the_named_error(api, training_client):
    future = _submit(api, training_client, "optim_step")
    error = {
        "error": "BudgetExceededError",
        "category": "user",
        "detail": "step 9 would take ε above 3",
        "field": None,
    }
    api.on("GET", FUT, future_state("failed", operation="optim_step", error=error))
    with pytest.raises(BudgetExceededError, match="ε above 3"):
        future.result()
    with pytest.raises(BudgetExceededError):  # and again, from the cached state
        future.result()
    assert len(api.sent("GET", FUT)) == 1


def test_failed_validation_keeps_the_field(api, training_client):
    future = _submit(api, training_client)
    error = {
        "error": "InvalidBatchError",
        "category": "user",
        "detail": "token id 99999 is outside the vocabulary",
        "field": "data[0].model_input",
    }
    api.on("GET", FUT, future_state("failed", error=error))
    with pytest.raises(ValidationError) as info:
        future.result()
    assert info.value.field == "data[0].model_input"


def test_a_malformed_result_is_a_server_error(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("completed", result={"loss": 1.0}))
    with pytest.raises(ServerError, match="ForwardBackwardOutput"):
        future.result()


def test_cancel_a_queued_operation(api, training_client):
    future = _submit(api, training_client)
    api.on(
        "POST",
        rf"{FUT}/cancel",
        httpx.Response(200, json={"cancelled": True, "status": "cancelled"}),
    )
    assert future.cancel() is True
    assert future.done()
    with pytest.raises(FutureCancelledError):
        future.result()
    assert not api.sent("GET", FUT)  # known locally, no poll needed


def test_cancel_too_late_returns_false(api, training_client):
    future = _submit(api, training_client)
    api.on(
        "POST",
        rf"{FUT}/cancel",
        httpx.Response(200, json={"cancelled": False, "status": "running"}),
    )
    assert future.cancel() is False
    api.on("GET", FUT, future_state("completed", result=FB_RESULT))
    assert future.result().loss == 4.96875
    assert future.cancel() is False  # finished: nothing to cancel, no request
    assert len(api.sent("POST", rf"{FUT}/cancel")) == 1


def test_server_side_cancelled_state_raises(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("cancelled"))
    with pytest.raises(FutureCancelledError):
        future.result()


def test_done_polls_without_waiting(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("running"))
    assert future.done() is False
    assert api.sent("GET", FUT)[-1].url.params["wait"] == "0"


def test_attribute_access_resolves_the_result(api, training_client):
    future = _submit(api, training_client, "optim_step")
    api.on("GET", FUT, future_state("completed", operation="optim_step", result=OPTIM_RESULT))
    assert future.operation == "optim_step"  # the future's own attribute: no request
    assert not api.sent("GET", FUT)
    assert future.learning_rate == 0.0001  # forwarded: blocks on the result
    assert future.dp_metrics.epsilon_spent == 0.25
    with pytest.raises(AttributeError, match="neither APIFuture nor OptimStepResponse"):
        _ = future.no_such_field


def test_an_unknown_attribute_fails_at_once_while_the_result_never_arrives(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("running"))  # never finishes
    outcome: list[BaseException] = []

    def read_typo() -> None:
        try:
            _ = future.reslt
        except BaseException as exc:  # handed back to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read_typo, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "a typo on an unresolved future blocked"
    (error,) = outcome
    assert isinstance(error, AttributeError)
    assert "'reslt'" in str(error) and ".result()" in str(error)
    assert error.name == "reslt"
    assert not hasattr(future, "no_such_field")
    assert not api.sent("GET", FUT)  # decided from the declared type, no request


def test_only_the_declared_result_type_is_forwarded(api, training_client):
    future = _submit(api, training_client)  # APIFuture[ForwardBackwardOutput]
    api.on("GET", FUT, future_state("completed", result=FB_RESULT))
    with pytest.raises(AttributeError, match="ForwardBackwardOutput"):
        _ = future.dp_metrics  # an OptimStepResponse field, not this future's
    with pytest.raises(AttributeError):
        _ = future.model_dump  # pydantic's API is not forwarded either
    assert not api.sent("GET", FUT)
    assert future.loss == 4.96875


def test_private_names_are_never_forwarded(api, training_client):
    future = _submit(api, training_client)
    with pytest.raises(AttributeError):
        _ = future._private
    assert not hasattr(future, "__array__")
    assert not api.sent("GET", FUT)
    assert "forward_backward" in repr(future)


def test_futures_do_not_pretend_to_pickle(api, training_client):
    future = _submit(api, training_client)
    with pytest.raises((TypeError, pickle.PicklingError, AttributeError)):
        pickle.dumps(future)
    assert not api.sent("GET", FUT)


def test_result_async_and_await(api, training_client):
    api.on("POST", r"/v1/training_runs/run-1/optim_step", httpx.Response(202, json=future_ref()))
    api.on("GET", FUT, [future_state("running"), future_state("completed", result=OPTIM_RESULT)])

    async def main():
        future = await training_client.optim_step_async()
        assert isinstance(future, APIFuture)
        first = await future.result_async(timeout=10)
        second = await future
        return first, second

    first, second = asyncio.run(main())
    assert isinstance(first, OptimStepResponse) and first is second


def test_result_async_times_out(api, training_client):
    future = _submit(api, training_client)
    api.on("GET", FUT, future_state("running"))
    with pytest.raises(FutureTimeoutError):
        asyncio.run(future.result_async(timeout=0.05))


def test_cancel_async(api, training_client):
    future = _submit(api, training_client)
    api.on(
        "POST",
        rf"{FUT}/cancel",
        httpx.Response(200, json={"cancelled": True, "status": "cancelled"}),
    )
    assert asyncio.run(future.cancel_async()) is True
    with pytest.raises(FutureCancelledError):
        asyncio.run(future.result_async())
