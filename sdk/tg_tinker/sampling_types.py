"""Wire types of sampling: samplers, ``sample`` and ``compute_logprobs``.

One pydantic model per message, as in :mod:`tg_tinker.types` (the server validates
requests with them, the SDK parses responses with them). Field names follow Tinker
(``SamplingParams``, ``sample(prompt, num_samples, sampling_params)``,
``response.sequences[i].tokens``).

Which log-probabilities are returned (see ``docs/generation.md``):

* ``SampledSequence.logprobs`` — of the distribution each token was **actually drawn
  from** (logits ÷ temperature, top-k, top-p, renormalised): what importance sampling
  and PPO need as the behaviour policy. ``0.0`` per token when greedy.
* ``SampledSequence.model_logprobs`` and prompt logprobs — the **raw model**
  (temperature 1, no truncation), as ``forward`` computes them.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tg_tinker.types import ModelInput, _Wire

#: Bounds every server enforces on the wire (a server may set lower ones).
MAX_PROMPT_TOKENS = 32768
MAX_SAMPLE_TOKENS = 32768
MAX_NUM_SAMPLES = 1024
MAX_STOP_ENTRIES = 16
MAX_STOP_STRING_CHARS = 256
MAX_TOPK_LOGPROBS = 20

SamplerSource = Literal["run", "checkpoint", "base"]
StopReason = Literal["stop", "length"]


class SamplingParams(_Wire):
    """How tokens are drawn and when a sequence ends (Tinker's ``SamplingParams``).

    Attributes:
        max_tokens: most tokens to generate per sequence (≥ 1); ``None`` fills the
            model's context. A prompt plus ``max_tokens`` beyond the context is
            refused (``field="sampling_params.max_tokens"``), never cut.
        temperature: ≥ 0; 0 is greedy.
        top_p: in (0, 1]; 1 is off.
        top_k: ``-1`` (off) or ≥ 1.
        stop: ``None`` stops at the model's end-of-sequence token; a string, or a list
            of strings and/or token ids, stops at any of those instead (``[]`` never
            stops early). The returned tokens include the stop token or the token that
            completed a stop string (a stop string may span tokens). Strings must be
            non-empty; at most 16 entries of at most 256 characters.
        seed: the same prompt, params, seed and weights give the same tokens.

    Example:
        >>> SamplingParams(max_tokens=32, temperature=0.7, stop=["\\n"]).top_k
        -1
    """

    max_tokens: int | None = Field(None, ge=1, le=MAX_SAMPLE_TOKENS)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1
    stop: str | list[str | int] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)

    @field_validator("temperature")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number ≥ 0")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("must be -1 (no limit) or an integer ≥ 1")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str | int] | None) -> str | list[str | int] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if len(items) > MAX_STOP_ENTRIES:
            raise ValueError(f"at most {MAX_STOP_ENTRIES} entries")
        for i, item in enumerate(items):
            if isinstance(item, str):
                if not item:
                    raise ValueError(f"stop string {i} is empty")
                if len(item) > MAX_STOP_STRING_CHARS:
                    raise ValueError(f"stop string {i} is longer than {MAX_STOP_STRING_CHARS}")
            elif item < 0:
                raise ValueError(f"token id {i} must be ≥ 0")
        return value


class CreateSamplerRequest(_Wire):
    """``POST /v1/samplers``: exactly one of

    * ``run_id`` — a training run's **current** weights (they change as it trains);
    * ``model_path`` — a saved sampler checkpoint, ``tensafe://{run}/sampler_weights/{name}``;
    * ``artifact_id`` — the same checkpoint by id;
    * ``base_model`` — the base model alone (e.g. ``smollm2-135m-instruct``).
    """

    run_id: str | None = Field(None, max_length=64)
    model_path: str | None = Field(None, max_length=300)
    artifact_id: str | None = Field(None, max_length=64)
    base_model: str | None = Field(None, min_length=1, max_length=500)

    @model_validator(mode="after")
    def _one_source(self) -> CreateSamplerRequest:
        given = [self.run_id, self.model_path, self.artifact_id, self.base_model]
        if sum(v is not None for v in given) != 1:
            raise ValueError(
                "give exactly one of 'run_id', 'model_path', 'artifact_id' or 'base_model'"
            )
        return self


class SamplerInfo(_Wire):
    """A sampler: what it samples from. ``base_model`` is the model's canonical name."""

    sampler_id: str
    source: SamplerSource
    base_model: str
    run_id: str | None = None
    model_path: str | None = None
    artifact_id: str | None = None
    created_at: datetime
    type: Literal["sampler"] = "sampler"


class SampleRequest(_Wire):
    """``POST /v1/samplers/{id}/sample``: ``num_samples`` completions of ``prompt``.

    ``prompt_logprobs`` / ``topk_prompt_logprobs`` (0–20) also return the raw model's
    logprobs of the prompt tokens (and the top-k per position)."""

    prompt: ModelInput
    num_samples: int = Field(1, ge=1, le=MAX_NUM_SAMPLES)
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = Field(0, ge=0, le=MAX_TOPK_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: ModelInput) -> ModelInput:
        return _check_prompt(value)


class ComputeLogprobsRequest(_Wire):
    """``POST /v1/samplers/{id}/compute_logprobs``: the raw model's logprob of each
    prompt token given the ones before it; ``topk`` (0–20) adds the top tokens."""

    prompt: ModelInput
    topk: int = Field(0, ge=0, le=MAX_TOPK_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: ModelInput) -> ModelInput:
        return _check_prompt(value)


def _check_prompt(value: ModelInput) -> ModelInput:
    n = value.length
    if n == 0:
        raise ValueError("must contain at least one token")
    if n > MAX_PROMPT_TOKENS:
        raise ValueError(f"has {n} tokens; at most {MAX_PROMPT_TOKENS}")
    if any(t < 0 for t in value.to_ints()):
        raise ValueError("token ids must be ≥ 0")
    return value


#: ``[token_id, logprob]`` pairs, most probable first.
TopLogprobs = list[tuple[int, float]]


class SampledSequence(_Wire):
    """One completion: ``tokens`` (ending with the stop token when ``stop_reason`` is
    ``"stop"``), ``logprobs`` of the sampled distribution, ``model_logprobs`` raw."""

    tokens: list[int]
    logprobs: list[float]
    model_logprobs: list[float]
    stop_reason: StopReason


class SampleResponse(_Wire):
    """The result of ``sample``: ``num_samples`` sequences in sample order."""

    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[TopLogprobs | None] | None = None
    type: Literal["sample"] = "sample"


class ComputeLogprobsResponse(_Wire):
    """The result of ``compute_logprobs``: ``logprobs[0]`` is ``None``."""

    logprobs: list[float | None]
    topk: list[TopLogprobs | None] | None = None
    type: Literal["compute_logprobs"] = "compute_logprobs"


__all__ = [
    "MAX_NUM_SAMPLES",
    "MAX_PROMPT_TOKENS",
    "MAX_SAMPLE_TOKENS",
    "MAX_STOP_ENTRIES",
    "MAX_STOP_STRING_CHARS",
    "MAX_TOPK_LOGPROBS",
    "ComputeLogprobsRequest",
    "ComputeLogprobsResponse",
    "CreateSamplerRequest",
    "SampleRequest",
    "SampleResponse",
    "SampledSequence",
    "SamplerInfo",
    "SamplerSource",
    "SamplingParams",
    "StopReason",
    "TopLogprobs",
]
