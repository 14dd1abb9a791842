"""What the sampler returns: :class:`SampleResponse`, :class:`SampledSequence`,
:class:`PromptLogprobs`.

Two kinds of log-probabilities appear, and the names say which:

* ``SampledSequence.logprobs`` — of the distribution each token was **actually
  drawn from**: the model's logits divided by the temperature, restricted by top-k
  and top-p, renormalised. This is the behaviour policy's probability, the one
  importance sampling and PPO need. Greedy (temperature 0): ``0.0`` for every token.
* ``SampledSequence.model_logprobs`` and all prompt logprobs — the **raw model**
  distribution: log-softmax of the logits at temperature 1, no truncation, as
  ``forward``/``forward_backward`` compute them for the same tokens.

The two agree when ``temperature == 1``, ``top_k == -1`` and ``top_p == 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StopReason = Literal["stop", "length"]
"""``"stop"``: a stop token or stop string ended the sequence (it is included);
``"length"``: ``max_tokens`` (or the end of the context) was reached."""

TopLogprobs = tuple[tuple[int, float], ...]
"""``(token_id, logprob)`` pairs, most probable first."""


@dataclass(frozen=True)
class SampledSequence:
    """One completion.

    Attributes:
        tokens: the generated token ids, ending with the stop token (or the token
            that completed a stop string) when ``stop_reason == "stop"``.
        logprobs: per token, its log-probability under the distribution it was
            sampled from (after temperature, top-k, top-p); ``0.0`` when greedy.
        model_logprobs: per token, its raw model log-probability (temperature 1,
            no truncation).
        stop_reason: see :data:`StopReason`.
    """

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    model_logprobs: tuple[float, ...]
    stop_reason: StopReason


@dataclass(frozen=True)
class PromptLogprobs:
    """Raw model log-probabilities of a prompt's tokens.

    Attributes:
        logprobs: ``logprobs[i]`` is log p(prompt[i] | prompt[:i]); ``None`` for
            ``i = 0`` (nothing precedes it).
        topk: ``None`` unless requested; else ``topk[i]`` holds the ``k`` most
            probable tokens at position ``i`` given ``prompt[:i]`` (``None`` for
            ``i = 0``).
    """

    logprobs: tuple[float | None, ...]
    topk: tuple[TopLogprobs | None, ...] | None = None


@dataclass(frozen=True)
class SampleResponse:
    """The answer to one :class:`~tensafe.generation.SampleRequest`.

    Attributes:
        sequences: ``num_samples`` completions, in sample order.
        prompt_logprobs: the prompt's raw logprobs (first ``None``) if requested.
        topk_prompt_logprobs: the top-k per prompt position (first ``None``) if
            ``topk_prompt_logprobs > 0``.
    """

    sequences: tuple[SampledSequence, ...]
    prompt_logprobs: tuple[float | None, ...] | None = None
    topk_prompt_logprobs: tuple[TopLogprobs | None, ...] | None = None


__all__ = ["PromptLogprobs", "SampleResponse", "SampledSequence", "StopReason", "TopLogprobs"]
