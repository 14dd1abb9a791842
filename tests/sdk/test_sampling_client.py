"""SamplingClient against a fake transport: requests on the wire, input refused
before sending (naming the field), errors from the future typed."""

from __future__ import annotations

import json

import httpx
import pytest
from tg_tinker import SamplingClient, SamplingParams, ServiceClient, ValidationError
from tg_tinker.types import ModelInput

from tests.sdk.fakes import FakeAPI, future_ref, future_state

SAMPLER = {
    "sampler_id": "smp-1",
    "source": "base",
    "base_model": "tiny-llama",
    "created_at": "2025-01-01T00:00:00Z",
}


@pytest.fixture
def sampler(service: ServiceClient, api: FakeAPI) -> SamplingClient:
    api.on("POST", "/v1/samplers", httpx.Response(201, json=SAMPLER))
    api.on("POST", "/v1/samplers/smp-1/[a-z_]+", httpx.Response(202, json=future_ref("fut-9")))
    return service.create_sampling_client(base_model="tiny-llama")


def test_create_sends_exactly_one_source(service: ServiceClient, api: FakeAPI) -> None:
    api.on("POST", "/v1/samplers", httpx.Response(201, json=SAMPLER))
    sc = service.create_sampling_client(run_id="run-1")
    sent_body = json.loads(api.requests[-1].content)
    assert {k: v for k, v in sent_body.items() if v is not None} == {"run_id": "run-1"}
    assert sc.sampler_id == "smp-1" and sc.get_base_model() == "tiny-llama"
    sent = len(api.requests)
    for kwargs in ({}, {"base_model": "m", "run_id": "r"}):
        with pytest.raises(ValidationError):
            service.create_sampling_client(**kwargs)  # type: ignore[arg-type]
    assert len(api.requests) == sent  # refused before sending


def test_sample_request_on_the_wire(sampler: SamplingClient, api: FakeAPI) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.5, stop=["\n", 2], seed=3)
    future = sampler.sample(ModelInput.from_ints([1, 2]), 3, params, topk_prompt_logprobs=2)
    assert future.future_id == "fut-9"
    body = json.loads(api.sent("POST", "/v1/samplers/smp-1/sample")[-1].content)
    assert body["num_samples"] == 3 and body["topk_prompt_logprobs"] == 2
    assert body["prompt"]["chunks"][0]["tokens"] == [1, 2]
    assert body["sampling_params"] == {
        "max_tokens": 4,
        "temperature": 0.5,
        "top_p": 1.0,
        "top_k": -1,
        "stop": ["\n", 2],
        "seed": 3,
    }


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda sc: sc.sample("text"), "prompt"),
        (lambda sc: sc.sample([]), "prompt"),
        (lambda sc: sc.sample([-1]), "prompt"),
        (lambda sc: sc.sample([1], 0), "num_samples"),
        (lambda sc: sc.sample([1], 2000), "num_samples"),
        (lambda sc: sc.sample([1], 1, {"stop": [""]}), "sampling_params.stop"),
        (lambda sc: sc.sample([1], 1, {"stop": ""}), "sampling_params.stop"),
        (lambda sc: sc.sample([1], 1, {"max_tokens": 0}), "sampling_params.max_tokens"),
        (lambda sc: sc.sample([1], 1, {"top_k": 0}), "sampling_params.top_k"),
        (lambda sc: sc.sample([1], 1, {"bogus": 1}), "sampling_params.bogus"),
        (lambda sc: sc.compute_logprobs([1], topk=99), "topk"),
    ],
)
def test_bad_input_is_refused_before_sending(sampler, api, call, field) -> None:
    sent = len(api.requests)
    with pytest.raises(ValidationError) as info:
        call(sampler)
    assert info.value.field == field
    assert len(api.requests) == sent


def test_server_refusal_from_the_future_is_typed(sampler: SamplingClient, api: FakeAPI) -> None:
    error = {
        "error": "ValidationError",
        "category": "user",
        "detail": "300 does not fit the context",
        "field": "sampling_params.max_tokens",
    }
    api.on("GET", "/v1/futures/fut-9", future_state("failed", future_id="fut-9", error=error))
    future = sampler.sample([1, 2], 1, {"max_tokens": 300})
    with pytest.raises(ValidationError) as info:
        future.result()
    assert info.value.field == "sampling_params.max_tokens"


def test_empty_stop_string_is_refused_by_the_params_type() -> None:
    with pytest.raises(ValueError, match="empty"):
        SamplingParams(stop=["\n", ""])
