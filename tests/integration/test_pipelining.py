"""Pipelining: five (forward_backward, optim_step) pairs queued before any wait run in
order and give exactly what the same run gives step by step."""

from __future__ import annotations

import numpy as np
import pytest
from tg_tinker import APIFuture, ServiceClient

from tests.integration.conftest import LiveServer
from tests.integration.test_end_to_end import random_batch, tiny_config

pytestmark = pytest.mark.integration

STEPS = 5


def _final_logprobs(tc) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = tc.forward(random_batch(99, rows=2)).result(timeout=120)
    return np.concatenate([np.asarray(o.logprobs.data) for o in out.loss_fn_outputs])


def test_pipelined_equals_sequential(live_server: LiveServer) -> None:
    tenant = live_server.create_tenant()
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        pipelined = service.create_training_client(tiny_config(seed=3))
        futures: list[tuple[str, APIFuture]] = []  # type: ignore[type-arg]
        for i in range(STEPS):
            futures.append(("fb", pipelined.forward_backward(random_batch(i))))
            futures.append(("opt", pipelined.optim_step()))
        seqs = [f.seq for _, f in futures]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        results = [(kind, f.result(timeout=300)) for kind, f in futures]
        pipelined_logprobs = _final_logprobs(pipelined)

        sequential = service.create_training_client(tiny_config(seed=3))
        reference = []
        for i in range(STEPS):
            fb = sequential.forward_backward(random_batch(i)).result(timeout=120)
            reference.append(("fb", fb))
            reference.append(("opt", sequential.optim_step().result(timeout=120)))
        sequential_logprobs = _final_logprobs(sequential)

    steps = [r.step for kind, r in results if kind == "opt"]
    assert steps == list(range(1, STEPS + 1))  # in submission order
    for (kind, got), (_, want) in zip(results, reference, strict=True):
        if kind == "fb":
            assert got.loss == pytest.approx(want.loss, rel=1e-6)
            assert got.metrics["step:max"] == want.metrics["step:max"]
        else:
            assert got.step == want.step
            assert got.dp_metrics.epsilon_spent == pytest.approx(want.dp_metrics.epsilon_spent)
    np.testing.assert_allclose(pipelined_logprobs, sequential_logprobs, rtol=1e-6, atol=1e-6)
