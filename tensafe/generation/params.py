"""What a caller asks of the sampler: :class:`SamplingParams` and :class:`SampleRequest`.

Both are frozen dataclasses validated on construction; every error is a
:class:`~tensafe.errors.ConfigError` naming the offending field. Checks that need
the model (prompt length against the context, token ids against the vocabulary,
adapter names) are made by :meth:`tensafe.generation.Sampler.validate`.

The fields follow Tinker's ``SamplingParams`` and ``asample`` request.

Example::

    >>> from tensafe.generation import SampleRequest, SamplingParams
    >>> params = SamplingParams(max_tokens=32, temperature=0.7, top_p=0.9, stop=["\\n\\n", 2])
    >>> params.stop_strings, params.stop_token_ids
    (('\\n\\n',), (2,))
    >>> request = SampleRequest(prompt=[1, 4093, 198], num_samples=4, params=params)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from tensafe.errors import ConfigError

BASE_MODEL: Final = "__base__"
"""``SampleRequest.adapter`` value that samples from the base model with every LoRA
adapter switched off."""

MAX_NUM_SAMPLES: Final = 1024

StopSpec = str | Sequence[str | int] | None


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How tokens are drawn and when a sequence ends.

    Attributes:
        max_tokens: most tokens to generate per sequence (≥ 1). ``None`` fills the
            model's context: ``context_length - len(prompt)``. A value that does not
            fit the context together with the prompt is refused, never cut.
        temperature: ≥ 0. The logits are divided by it before top-k and top-p.
            ``0`` means greedy decoding: the token with the highest logit (the lowest
            token id among exact ties), and the sampled distribution is the point
            mass on it, so its sampled logprob is exactly ``0.0``.
        top_p: nucleus sampling, in (0, 1]: keep the smallest set of most probable
            tokens (after temperature and top-k) whose probability mass reaches
            ``top_p``; the most probable token is always kept. ``1`` disables it.
        top_k: keep the ``top_k`` most probable tokens (after temperature; tokens
            tied with the k-th are kept too); ``-1`` disables it. ``0`` is refused.
        stop: when a sequence ends besides ``max_tokens``, as in Tinker:

            * ``None`` (default): at the model's end-of-sequence token(s);
            * a string, or a list of strings and/or token ids: at any of them, and
              *not* at end-of-sequence unless its id is listed (``[]`` never stops
              early).

            The returned tokens include the stop token, or the token that completed
            a stop string. A stop string is matched in the decoded text of the
            generated tokens (not the prompt), so it may span token boundaries; the
            decoded output then contains the stop string and may end with the rest
            of the last token's text after it. Strings must be non-empty.
        seed: makes sampling reproducible: the same prompt, params, seed and weights
            give the same tokens, whatever else is batched with the request (up to
            floating-point differences between batch shapes, which can change a
            draw only when it falls within rounding distance of a boundary between
            two tokens' cumulative probabilities). Sample ``i`` of a request uses a
            generator seeded from ``(seed, i)``. ``None`` draws fresh seeds from the
            operating system. Never touches torch's global RNG or the DP noise.

    Raises:
        ConfigError: naming the field, on construction.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: StopSpec = None
    seed: int | None = None
    stop_strings: tuple[str, ...] = field(init=False, repr=False)
    stop_token_ids: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise ConfigError(
                "max_tokens", f"must be an integer ≥ 1 or None, got {self.max_tokens!r}"
            )
        if not _is_real(self.temperature) or not 0 <= self.temperature < math.inf:
            raise ConfigError(
                "temperature", f"must be a finite number ≥ 0, got {self.temperature!r}"
            )
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be a number in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or not (self.top_k == -1 or self.top_k >= 1):
            raise ConfigError(
                "top_k", f"must be -1 (no limit) or an integer ≥ 1, got {self.top_k!r}"
            )
        if self.seed is not None and not _is_int(self.seed):
            raise ConfigError("seed", f"must be an integer or None, got {self.seed!r}")
        strings, ids = _split_stop(self.stop)
        object.__setattr__(self, "stop_strings", strings)
        object.__setattr__(self, "stop_token_ids", ids)
        if self.stop is not None and not isinstance(self.stop, str):
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def is_greedy(self) -> bool:
        """Whether ``temperature == 0`` (argmax decoding)."""
        return self.temperature == 0

    @property
    def stops_at_eos(self) -> bool:
        """Whether the model's end-of-sequence tokens end a sequence (``stop is None``)."""
        return self.stop is None


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """One ``sample`` call: a prompt, how many completions, and how to draw them.

    Attributes:
        prompt: the prompt's token ids (non-empty; each ≥ 0). Stored as a tuple.
        num_samples: independent completions of the prompt, 1 to 1024.
        params: the sampling parameters, shared by the samples.
        adapter: which weights to sample from: ``None`` for the model's current
            weights (a training run's, as ``forward`` would use them), the name of
            an adapter loaded with :meth:`Sampler.load_adapter`, or
            :data:`BASE_MODEL` for the base model without any LoRA adapter.
        prompt_logprobs: also return the model's log-probability of each prompt
            token given the ones before it (``None`` for the first).
        topk_prompt_logprobs: also return, for each prompt position, the ``k`` most
            probable tokens and their log-probabilities (0 = none).

    Raises:
        ConfigError: naming the field, on construction.
    """

    prompt: Sequence[int]
    num_samples: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", validate_prompt(self.prompt))
        if not _is_int(self.num_samples) or not 1 <= self.num_samples <= MAX_NUM_SAMPLES:
            raise ConfigError(
                "num_samples",
                f"must be an integer from 1 to {MAX_NUM_SAMPLES}, got {self.num_samples!r}",
            )
        if not isinstance(self.params, SamplingParams):
            raise ConfigError("params", "must be a SamplingParams")
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter):
            raise ConfigError("adapter", "must be None, BASE_MODEL or a loaded adapter's name")
        if not isinstance(self.prompt_logprobs, bool):
            raise ConfigError("prompt_logprobs", "must be True or False")
        if not _is_int(self.topk_prompt_logprobs) or self.topk_prompt_logprobs < 0:
            raise ConfigError(
                "topk_prompt_logprobs",
                f"must be an integer ≥ 0, got {self.topk_prompt_logprobs!r}",
            )

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Whether the response carries prompt logprobs of either kind."""
        return self.prompt_logprobs or self.topk_prompt_logprobs > 0


def validate_prompt(prompt: Sequence[int], *, field_name: str = "prompt") -> tuple[int, ...]:
    """``prompt`` as a tuple of token ids, after checking it is a non-empty
    sequence of integers ≥ 0.

    Raises:
        ConfigError: (``field_name``) empty, not a sequence, or a bad element.
    """
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
        raise ConfigError(field_name, "must be a sequence of token ids")
    tokens = tuple(prompt)
    if not tokens:
        raise ConfigError(field_name, "must contain at least one token")
    for i, token in enumerate(tokens):
        if not _is_int(token) or token < 0:
            raise ConfigError(field_name, f"token {i} must be an integer ≥ 0, got {token!r}")
    return tuple(int(t) for t in tokens)


def _split_stop(stop: StopSpec) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if stop is None:
        return (), ()
    items: Sequence[str | int] = (stop,) if isinstance(stop, str) else stop
    if not isinstance(items, Sequence):
        raise ConfigError("stop", "must be a string, a list of strings and/or token ids, or None")
    strings: list[str] = []
    ids: list[int] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise ConfigError("stop", f"stop string {i} is empty")
            strings.append(item)
        elif _is_int(item) and item >= 0:
            ids.append(int(item))
        else:
            raise ConfigError(
                "stop", f"entry {i} must be a non-empty string or a token id ≥ 0, got {item!r}"
            )
    return tuple(dict.fromkeys(strings)), tuple(dict.fromkeys(ids))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = [
    "BASE_MODEL",
    "MAX_NUM_SAMPLES",
    "SampleRequest",
    "SamplingParams",
    "StopSpec",
    "validate_prompt",
]
