"""SampleBatcher: concurrent requests coalesced into one batch, errors kept per request."""

from __future__ import annotations

import threading

import pytest

from tensafe.errors import ConfigError, EngineStateError
from tensafe.generation import SampleBatcher, Sampler, SampleRequest, SamplingParams
from tensafe.models import build_tiny_llama

MAX_TOKENS = 6
POISON = 49151  # a prompt containing this id makes the model fail (see _counting_sampler)


def _counting_sampler() -> tuple[Sampler, list[int]]:
    """A sampler whose model counts its forward passes (each call's batch size), and
    raises, like a failing device would, for any batch that holds the POISON token."""
    tiny = build_tiny_llama(seed=3)
    calls: list[int] = []

    def hook(module, args, kwargs):
        ids = kwargs["input_ids"]
        if (ids == POISON).any():
            raise RuntimeError("device failure")
        calls.append(ids.shape[0])

    tiny.model.register_forward_pre_hook(hook, with_kwargs=True)
    return Sampler(model=tiny.model, tokenizer=tiny.tokenizer), calls


def _request(i: int, **params) -> SampleRequest:
    settings = {"max_tokens": MAX_TOKENS, "temperature": 0, "stop": []} | params
    return SampleRequest(prompt=[10 + i] * (1 + i % 3), params=SamplingParams(**settings))


def _submit_concurrently(batcher: SampleBatcher, requests: list[SampleRequest]) -> list:
    barrier = threading.Barrier(len(requests))
    futures: list = [None] * len(requests)

    def submit(i: int) -> None:
        barrier.wait()
        futures[i] = batcher.submit(requests[i])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return futures


def test_concurrent_requests_share_forward_passes():
    sampler, calls = _counting_sampler()
    requests = [_request(i) for i in range(8)]
    alone = [sampler.sample(r) for r in requests]
    assert len(calls) == 8 * MAX_TOKENS  # one by one: one pass per token per request
    calls.clear()
    with SampleBatcher(sampler=sampler, window_s=0.5) as batcher:
        futures = _submit_concurrently(batcher, requests)
        results = [f.result(timeout=60) for f in futures]
    assert batcher.batches_run == 1
    assert calls == [8] * MAX_TOKENS  # prefill + 5 decoding steps, all 8 rows together
    assert [r.sequences[0].tokens for r in results] == [r.sequences[0].tokens for r in alone]


def test_batch_size_cap_splits_batches():
    sampler, calls = _counting_sampler()
    with SampleBatcher(sampler=sampler, window_s=0.5, max_batch_sequences=4) as batcher:
        futures = _submit_concurrently(batcher, [_request(i) for i in range(8)])
        for f in futures:
            f.result(timeout=60)
    assert batcher.batches_run >= 2 and max(calls) <= 4


def test_invalid_request_fails_alone():
    sampler, _ = _counting_sampler()
    too_long = SampleRequest(prompt=[1] * 250, params=SamplingParams(max_tokens=10))
    with SampleBatcher(sampler=sampler, window_s=0.5) as batcher:
        futures = _submit_concurrently(batcher, [_request(0), too_long, _request(1)])
        with pytest.raises(ConfigError) as exc:
            futures[1].result(timeout=60)
        assert exc.value.field == "max_tokens"
        assert len(futures[0].result(timeout=60).sequences[0].tokens) == MAX_TOKENS
        assert len(futures[2].result(timeout=60).sequences[0].tokens) == MAX_TOKENS
    assert batcher.batches_run == 1


def test_a_failure_while_running_is_isolated_to_its_request():
    sampler, _ = _counting_sampler()
    poisoned = SampleRequest(prompt=[POISON], params=SamplingParams(max_tokens=3))
    requests = [_request(0, temperature=0.8, seed=5), poisoned, _request(2)]
    with SampleBatcher(sampler=sampler, window_s=0.5) as batcher:
        futures = _submit_concurrently(batcher, requests)
        with pytest.raises(RuntimeError, match="device failure"):
            futures[1].result(timeout=60)
        good = [futures[0].result(timeout=60), futures[2].result(timeout=60)]
    assert good[0] == sampler.sample(requests[0])  # same seed, same result
    assert good[1].sequences[0].tokens == sampler.sample(requests[2]).sequences[0].tokens


def test_close_finishes_queued_work_and_refuses_more():
    sampler, _ = _counting_sampler()
    batcher = SampleBatcher(sampler=sampler, window_s=0.0)
    futures = [batcher.submit(_request(i)) for i in range(3)]
    batcher.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(EngineStateError):
        batcher.submit(_request(0))
    batcher.close()  # idempotent


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"window_s": -1}, "window_s"), ({"max_batch_sequences": 0}, "max_batch_sequences")],
)
def test_batcher_validates_settings(kwargs, field):
    sampler, _ = _counting_sampler()
    with pytest.raises(ConfigError) as exc:
        SampleBatcher(sampler=sampler, **kwargs)
    assert exc.value.field == field


def test_requests_with_different_params_share_a_batch():
    sampler, calls = _counting_sampler()
    requests = [_request(0), _request(1, temperature=0.7, top_k=10, seed=1)]
    with SampleBatcher(sampler=sampler, window_s=0.5) as batcher:
        futures = _submit_concurrently(batcher, requests)
        results = [f.result(timeout=60) for f in futures]
    alone = sampler.sample(requests[1]).sequences[0]
    assert results[1].sequences[0].tokens == alone.tokens
    assert list(results[1].sequences[0].logprobs) == pytest.approx(list(alone.logprobs), abs=1e-5)
    assert calls[:MAX_TOKENS] == [2] * MAX_TOKENS  # greedy and sampled rows in one batch
