"""SamplingParams / SampleRequest validation, and the checks that need the model."""

from __future__ import annotations

import math

import pytest

from tensafe.errors import ConfigError
from tensafe.generation import BASE_MODEL, SampleRequest, SamplerLimits, SamplingParams


def _field(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    return exc.value.field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"stop": ""}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop": [-1]}, "stop"),
        ({"stop": [None]}, "stop"),
        ({"stop": [True]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"seed": 1.0}, "seed"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_sampling_params_refuse_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as exc:
        SamplingParams(**kwargs)
    assert _field(exc) == field
    assert isinstance(exc.value, ValueError)


def test_sampling_params_defaults_and_stop_normalisation():
    default = SamplingParams()
    assert (default.max_tokens, default.temperature, default.top_p, default.top_k) == (
        None,
        1.0,
        1.0,
        -1,
    )
    assert default.stops_at_eos and not default.is_greedy
    assert SamplingParams(temperature=0).is_greedy
    single = SamplingParams(stop="\n\n")
    assert single.stop_strings == ("\n\n",) and single.stop_token_ids == ()
    mixed = SamplingParams(stop=["User:", 2, "User:", 7, 2])
    assert mixed.stop_strings == ("User:",) and mixed.stop_token_ids == (2, 7)
    assert not mixed.stops_at_eos
    empty = SamplingParams(stop=[])
    assert empty.stop_strings == () and empty.stop_token_ids == () and not empty.stops_at_eos
    assert SamplingParams(stop=["a"]) == SamplingParams(stop=("a",))  # lists become tuples


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": "hello"}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [1, 2.0]}, "prompt"),
        ({"prompt": [1], "num_samples": 0}, "num_samples"),
        ({"prompt": [1], "num_samples": 5000}, "num_samples"),
        ({"prompt": [1], "params": {"max_tokens": 3}}, "params"),
        ({"prompt": [1], "adapter": ""}, "adapter"),
        ({"prompt": [1], "prompt_logprobs": 1}, "prompt_logprobs"),
        ({"prompt": [1], "topk_prompt_logprobs": -1}, "topk_prompt_logprobs"),
    ],
)
def test_sample_request_refuses_bad_values(kwargs, field):
    with pytest.raises(ConfigError) as exc:
        SampleRequest(**kwargs)
    assert _field(exc) == field


def test_sampler_validate_checks_context_vocabulary_and_adapter(tiny_sampler):
    context = tiny_sampler.context_length
    assert context == 256  # tiny Llama's max_position_embeddings
    tiny_sampler.validate(SampleRequest(prompt=[1] * 200, params=SamplingParams(max_tokens=56)))
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.validate(SampleRequest(prompt=[1] * 200, params=SamplingParams(max_tokens=57)))
    assert _field(exc) == "max_tokens" and "256" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.validate(SampleRequest(prompt=[1] * context))
    assert _field(exc) == "prompt"
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.validate(SampleRequest(prompt=[1, 49152]))
    assert _field(exc) == "prompt"
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.validate(SampleRequest(prompt=[1], params=SamplingParams(stop=[49152])))
    assert _field(exc) == "stop"
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.validate(SampleRequest(prompt=[1], adapter="nope"))
    assert _field(exc) == "adapter"
    tiny_sampler.validate(SampleRequest(prompt=[1], adapter=BASE_MODEL))
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.sample(SampleRequest(prompt=[1] * 250, params=SamplingParams(max_tokens=10)))
    assert _field(exc) == "max_tokens"


def test_compute_logprobs_validates(tiny_sampler):
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.compute_logprobs(prompt=[])
    assert _field(exc) == "prompt"
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.compute_logprobs(prompt=[1] * 257)
    assert _field(exc) == "prompt"
    with pytest.raises(ConfigError) as exc:
        tiny_sampler.compute_logprobs(prompt=[1, 2], topk=-1)
    assert _field(exc) == "topk"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_batch_sequences": 0}, "max_batch_sequences"),
        ({"prompt_chunk_tokens": 0}, "prompt_chunk_tokens"),
        ({"max_adapters": 0}, "max_adapters"),
        ({"context_length": 1}, "context_length"),
    ],
)
def test_sampler_limits_validate(kwargs, field):
    with pytest.raises(ConfigError) as exc:
        SamplerLimits(**kwargs)
    assert _field(exc) == field
