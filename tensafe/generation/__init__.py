"""Generation on the server: sampling and prompt logprobs from a model that may be training.

Public API::

    SamplingParams(max_tokens=None, temperature=1.0, top_p=1.0, top_k=-1, stop=None, seed=None)
    SampleRequest(prompt=[...], num_samples=1, params=SamplingParams(), adapter=None,
                  prompt_logprobs=False, topk_prompt_logprobs=0)
    Sampler(model=..., tokenizer=...) / Sampler.for_engine(engine)
        .sample(request) -> SampleResponse
        .sample_batch(requests) -> list[SampleResponse]
        .compute_logprobs(prompt=[...], adapter=None, topk=0) -> PromptLogprobs
        .load_adapter(name=..., tensors=..., lora_config=...) / .remove_adapter(name)
    SampleBatcher(sampler=..., window_s=0.01).submit(request) -> Future[SampleResponse]

``SampledSequence.logprobs`` are of the distribution actually sampled from (after
temperature, top-k, top-p); ``SampledSequence.model_logprobs`` are the raw model's
(temperature 1). See ``docs/generation.md``.

Example::

    >>> from tensafe.generation import SampleRequest, Sampler, SamplingParams
    >>> from tensafe.models import build_tiny_llama
    >>> tiny = build_tiny_llama()
    >>> sampler = Sampler(model=tiny.model, tokenizer=tiny.tokenizer)
    >>> response = sampler.sample(
    ...     SampleRequest(prompt=[1, 2, 3], params=SamplingParams(max_tokens=4, temperature=0))
    ... )
    >>> len(response.sequences[0].tokens) <= 4
    True
"""

from tensafe.generation.batching import SampleBatcher
from tensafe.generation.params import BASE_MODEL, SampleRequest, SamplingParams
from tensafe.generation.results import (
    PromptLogprobs,
    SampledSequence,
    SampleResponse,
    StopReason,
    TopLogprobs,
)
from tensafe.generation.sampler import Sampler, SamplerLimits

__all__ = [
    "BASE_MODEL",
    "PromptLogprobs",
    "SampleBatcher",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "Sampler",
    "SamplerLimits",
    "SamplingParams",
    "StopReason",
    "TopLogprobs",
]
