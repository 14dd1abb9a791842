"""Sampling through the SDK against a live server (SQLite and PostgreSQL): samplers of a
run, a saved checkpoint and a base model; every SamplingParams field; stop strings that
span tokens; seeds; compute_logprobs; tenant isolation; no ε charged."""

from __future__ import annotations

import asyncio

import pytest
from tg_tinker import (
    NotFoundError,
    SamplingParams,
    ServiceClient,
    TrainingClient,
    ValidationError,
)

from tests.integration.conftest import LiveServer
from tests.integration.test_end_to_end import random_batch, tiny_config

pytestmark = pytest.mark.integration

PROMPT = [1, 504, 3303, 314, 253, 1136]


@pytest.fixture(scope="module")
def trained(live_server: LiveServer):
    tenant = live_server.create_tenant()
    service = ServiceClient(live_server.url, api_key=tenant["api_key"])
    tc = service.create_training_client(tiny_config())
    tc.forward_backward(random_batch(0))
    tc.optim_step().result(timeout=300)
    yield service, tc
    service.close()


def test_sampling_client_of_a_snapshot(trained: tuple[ServiceClient, TrainingClient]) -> None:
    service, tc = trained
    sc = tc.save_weights_and_get_sampling_client()
    assert sc.model_path is not None and "/sampler_weights/sampler-1-" in sc.model_path
    assert sc.get_base_model() == "tiny-llama"
    tokenizer = sc.get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"
    params = SamplingParams(max_tokens=10, temperature=0.8, top_p=0.9, top_k=40, seed=5, stop=[])
    first = sc.sample(PROMPT, 4, params).result(timeout=120)
    assert len(first.sequences) == 4
    assert len({tuple(s.tokens) for s in first.sequences}) > 1  # num_samples are independent
    assert all(len(s.tokens) == 10 and s.stop_reason == "length" for s in first.sequences)
    again = sc.sample(PROMPT, 4, params).result(timeout=120)
    assert again == first  # the seed makes the request reproducible
    # the same snapshot by artifact id, and the run's current weights: same greedy tokens
    greedy = SamplingParams(max_tokens=8, temperature=0.0, stop=[])
    run_sc = service.create_sampling_client(run_id=tc.run_id)
    by_id = service.create_sampling_client(artifact_id=sc.info.artifact_id)
    outputs = [c.sample(PROMPT, 1, greedy).result().sequences[0] for c in (sc, by_id, run_sc)]
    assert outputs[0].tokens == outputs[1].tokens == outputs[2].tokens
    assert outputs[0].logprobs == [0.0] * 8  # greedy: the point mass
    assert all(lp < 0 for lp in outputs[0].model_logprobs)


def test_stop_strings_and_token_ids(trained: tuple[ServiceClient, TrainingClient]) -> None:
    service, tc = trained
    sc = service.create_sampling_client(run_id=tc.run_id)
    tokenizer = sc.get_tokenizer()
    free = sc.sample(PROMPT, 1, SamplingParams(max_tokens=24, temperature=0.0, stop=[]))
    tokens = free.result().sequences[0].tokens
    # a stop string made of the end of one generated token and the start of the next
    for k in range(1, len(tokens)):
        before, with_next = tokenizer.decode(tokens[:k]), tokenizer.decode(tokens[: k + 1])
        if len(with_next) > len(before) >= 1 and before[-1:].strip() and with_next[len(before)]:
            stop = before[-1] + with_next[len(before)]
            if stop not in before:
                break
    else:
        pytest.skip("no token boundary with a fresh two-character string")
    spanned = sc.sample(PROMPT, 1, SamplingParams(max_tokens=24, temperature=0.0, stop=[stop]))
    seq = spanned.result().sequences[0]
    assert seq.stop_reason == "stop" and seq.tokens == tokens[: k + 1]
    assert stop in tokenizer.decode(seq.tokens)
    by_id = sc.sample(PROMPT, 1, SamplingParams(max_tokens=24, temperature=0.0, stop=[tokens[3]]))
    seq = by_id.result().sequences[0]
    assert seq.stop_reason == "stop" and seq.tokens[-1] == tokens[3]
    assert seq.tokens == tokens[: tokens.index(tokens[3]) + 1]


def test_compute_logprobs_and_prompt_logprobs(
    trained: tuple[ServiceClient, TrainingClient],
) -> None:
    service, tc = trained
    sc = service.create_sampling_client(run_id=tc.run_id)
    result = sc.compute_logprobs(PROMPT, topk=3).result()
    assert result.logprobs[0] is None and all(lp < 0 for lp in result.logprobs[1:])
    assert result.topk is not None and len(result.topk[1]) == 3
    sampled = sc.sample(PROMPT, 1, {"max_tokens": 2}, include_prompt_logprobs=True).result()
    assert sampled.prompt_logprobs == pytest.approx(result.logprobs, abs=1e-5)


def test_async_twins(trained: tuple[ServiceClient, TrainingClient]) -> None:
    service, tc = trained

    async def go() -> list[list[int]]:
        sc = await service.create_sampling_client_async(run_id=tc.run_id)
        futures = [
            await sc.sample_async(PROMPT, 2, SamplingParams(max_tokens=4, seed=i)) for i in range(4)
        ]
        responses = await asyncio.gather(*(f.result_async() for f in futures))
        logprobs = await (await sc.compute_logprobs_async(PROMPT)).result_async()
        assert logprobs.logprobs[0] is None
        return [s.tokens for r in responses for s in r.sequences]

    sequences = asyncio.run(go())
    assert len(sequences) == 8 and all(len(s) == 4 for s in sequences)


def test_bad_input_and_other_tenants(
    trained: tuple[ServiceClient, TrainingClient], live_server: LiveServer
) -> None:
    service, tc = trained
    sc = service.create_sampling_client(run_id=tc.run_id)
    with pytest.raises(ValidationError) as info:
        sc.sample(PROMPT, 1, {"max_tokens": 251}).result()  # 6 + 251 > 256
    assert info.value.field == "sampling_params.max_tokens"
    with pytest.raises(ValidationError) as info:
        sc.sample([1] * 300, 1, {"max_tokens": 1}).result()
    assert info.value.field == "prompt"
    with pytest.raises(ValidationError) as info:
        sc.sample(PROMPT, 65)  # the server's default limit is 64
    assert info.value.field == "num_samples"
    with pytest.raises(ValidationError) as info:
        sc.sample(PROMPT, 1, {"stop": ["\n", ""]})
    assert info.value.field == "sampling_params.stop"
    saved = tc.save_weights_for_sampler("isolation").result()
    other = live_server.create_tenant()
    with ServiceClient(live_server.url, api_key=other["api_key"]) as intruder:
        for source in (
            {"model_path": saved.path},
            {"artifact_id": saved.artifact_id},
            {"run_id": tc.run_id},
        ):
            with pytest.raises(NotFoundError):
                intruder.create_sampling_client(**source)  # type: ignore[arg-type]


def test_sampling_charges_no_epsilon(trained: tuple[ServiceClient, TrainingClient]) -> None:
    service, tc = trained
    dataset_id = tc.config.dp_config.dataset_id or "default"  # type: ignore[union-attr]
    before = service.get_privacy_budget(dataset_id)
    sc = service.create_sampling_client(run_id=tc.run_id)
    sc.sample(PROMPT, 8, {"max_tokens": 8, "seed": 0}).result()
    sc.compute_logprobs(PROMPT).result()
    after = service.get_privacy_budget(dataset_id)
    assert after.epsilon_spent == before.epsilon_spent and after.total_steps == before.total_steps
