"""The sampler: generation and prompt logprobs from a model that may also be training.

Concurrency contract
--------------------
Every operation that runs or changes the model (``sample_batch``,
``compute_logprobs``, ``load_adapter``, ``remove_adapter``) holds
:func:`~tensafe.models.model_lock` from start to end, as
:class:`~tensafe.engine.TrainingEngine`'s ``forward``, ``forward_backward``,
``optim_step``, ``state_dict`` and ``load_state_dict`` do. So on one model:

* training and sampling never interleave; whichever comes second waits for the
  other to finish (a batch of generation runs to its end);
* a request sees the weights as they were when its batch started, for all its
  tokens (between two ``optim_step`` calls, pending gradients don't change them);
* the sampler may be called from any number of threads; calls are serialised.
  To run concurrent requests as *one* batch, use
  :class:`~tensafe.generation.SampleBatcher`.

Generation leaves training state as it found it: the model's train/eval mode per
module, every ``requires_grad`` flag and the active adapter are restored; the
optimizer, the DP accumulator and the DP noise generator are never touched, and
neither is torch's global RNG (sampling uses its own per-sequence generators).
It runs in eval mode (no dropout) under ``torch.inference_mode``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tensafe.errors import ConfigError
from tensafe.generation.adapters import AdapterSet
from tensafe.generation.decoding import ModelCaller, Row, decode
from tensafe.generation.params import SampleRequest, validate_prompt
from tensafe.generation.prompt_logprobs import prompt_logprobs
from tensafe.generation.results import PromptLogprobs, SampleResponse
from tensafe.generation.stopping import StopChecker
from tensafe.models.locking import model_lock

if TYPE_CHECKING:
    from tensafe.engine import TrainingEngine


@dataclass(frozen=True, kw_only=True)
class SamplerLimits:
    """Sizes the sampler works within.

    Attributes:
        context_length: tokens the model can attend to (prompt + generated);
            ``None`` reads ``config.max_position_embeddings``.
        max_batch_sequences: most sequences decoded together; larger batches run
            in several passes (whole requests are never split).
        prompt_chunk_tokens: prompt logprobs are computed this many positions at a
            time (with the KV cache), bounding the logits held in memory.
        max_adapters: most LoRA adapters loaded at once.
    """

    context_length: int | None = None
    max_batch_sequences: int = 64
    prompt_chunk_tokens: int = 512
    max_adapters: int = 8

    def __post_init__(self) -> None:
        for name in ("max_batch_sequences", "prompt_chunk_tokens", "max_adapters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be an integer ≥ 1, got {value!r}")
        if self.context_length is not None and (
            not isinstance(self.context_length, int) or self.context_length < 2
        ):
            raise ConfigError("context_length", "must be an integer ≥ 2 or None")


class Sampler:
    """Samples from a model's current weights, its base, or loaded LoRA adapters.

    Example::

        from tensafe.generation import Sampler, SampleRequest, SamplingParams
        sampler = Sampler.for_engine(engine)            # a TrainingEngine
        request = SampleRequest(prompt=[1, 4093, 198], num_samples=2,
                                params=SamplingParams(max_tokens=16, temperature=0.8, seed=7))
        response = sampler.sample(request)
        response.sequences[0].tokens, response.sequences[0].logprobs

    Args:
        model: a Hugging Face causal LM, or a peft model wrapping one.
        tokenizer: its tokenizer (stop strings, EOS, padding).
        model_name: the base model's name (checked against adapter configs).
        allow_adapters: whether LoRA adapters and :data:`BASE_MODEL` may be used;
            ``False`` for a model whose base weights are trained (full fine-tuning).
        limits: see :class:`SamplerLimits`.

    Raises:
        ConfigError: the context length is unknown.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        model_name: str | None = None,
        allow_adapters: bool = True,
        limits: SamplerLimits = SamplerLimits(),
    ) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        config = getattr(model, "config", None)
        context = limits.context_length or getattr(config, "max_position_embeddings", None)
        if not isinstance(context, int) or context < 2:
            raise ConfigError("context_length", "the model config has none; set it in limits")
        self.context_length = context
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])
        self.eos_token_ids = _eos_ids(model, tokenizer)
        # Padding sits under attention mask 0, so its id never matters.
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else (self.eos_token_ids or (0,))[0]
        self._adapters = AdapterSet(
            model,
            allow_adapters=allow_adapters,
            model_name=model_name,
            max_adapters=limits.max_adapters,
        )
        self._lock = model_lock(model)

    @classmethod
    def for_engine(
        cls, engine: TrainingEngine, *, limits: SamplerLimits = SamplerLimits()
    ) -> Sampler:
        """A sampler on a :class:`~tensafe.engine.TrainingEngine`'s model (its
        current weights are ``adapter=None``; adapters and :data:`BASE_MODEL` only
        for LoRA runs)."""
        return cls(
            model=engine.model,
            tokenizer=engine.tokenizer,
            model_name=engine.name,
            allow_adapters=engine.lora_config is not None,
            limits=limits,
        )

    @property
    def model(self) -> nn.Module:
        """The model sampled from (a peft wrapper once adapters were loaded on a
        plain model)."""
        return self._adapters.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --------------------------------------------------------------- adapters
    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the loaded adapters, least recently used first."""
        with self._lock:
            return self._adapters.names

    def load_adapter(
        self, *, name: str, tensors: Mapping[str, torch.Tensor], lora_config: Mapping[str, object]
    ) -> None:
        """Load a LoRA adapter (e.g. a decrypted ``lora_adapter`` sampler checkpoint:
        ``get_peft_model_state_dict`` tensors and ``LoraConfig.to_dict()``) under
        ``name`` onto this model's base weights, without copying the base model.
        The tensors are copied into the adapter; the caller may drop them.

        Raises:
            ConfigError: see :meth:`AdapterSet.load`; nothing is loaded then.
        """
        with self._lock:
            self._adapters.load(name=name, tensors=tensors, lora_config=lora_config)

    def remove_adapter(self, name: str) -> None:
        """Unload adapter ``name``. Raises ConfigError (``name``) if not loaded."""
        with self._lock:
            self._adapters.remove(name)

    # --------------------------------------------------------------- sampling
    def validate(self, request: SampleRequest) -> None:
        """Check ``request`` against this model (prompt fits the context with its
        token budget, token ids in the vocabulary, adapter available, stop strings
        decodable).

        Raises:
            ConfigError: naming the field (``prompt``, ``max_tokens``, ``adapter``...).
        """
        if not isinstance(request, SampleRequest):
            raise ConfigError("request", "must be a SampleRequest")
        self._check_prompt(request.prompt)
        room = self.context_length - len(request.prompt)
        if room < 1:
            raise ConfigError(
                "prompt",
                f"has {len(request.prompt)} tokens; the model's context is "
                f"{self.context_length}, which leaves no room to generate",
            )
        max_tokens = request.params.max_tokens
        if max_tokens is not None and max_tokens > room:
            raise ConfigError(
                "max_tokens",
                f"{max_tokens} does not fit: prompt {len(request.prompt)} + max_tokens "
                f"exceeds the context of {self.context_length} tokens (at most {room})",
            )
        for token in request.params.stop_token_ids:
            if token >= self.vocab_size:
                raise ConfigError("stop", f"token id {token} is outside the vocabulary")
        self._adapters.check(request.adapter)

    def sample(self, request: SampleRequest) -> SampleResponse:
        """Generate ``request.num_samples`` completions. See :meth:`sample_batch`."""
        return self.sample_batch([request])[0]

    def sample_batch(self, requests: Sequence[SampleRequest]) -> list[SampleResponse]:
        """Generate all requests' completions, batching the sequences that use the
        same weights into shared forward passes; one response per request, in order.

        Raises:
            ConfigError: any request is invalid (checked before anything runs).
        """
        requests = list(requests)
        for request in requests:
            self.validate(request)
        responses: list[SampleResponse | None] = [None] * len(requests)
        with self._lock:
            by_adapter: dict[str | None, list[int]] = {}
            for i, request in enumerate(requests):
                by_adapter.setdefault(request.adapter, []).append(i)
            for adapter, indices in by_adapter.items():
                with self._adapters.activate(adapter) as model, torch.inference_mode():
                    caller = ModelCaller(model)
                    for chunk in self._chunks([requests[i] for i in indices], indices):
                        for i, response in self._run(caller, chunk):
                            responses[i] = response
        return [r for r in responses if r is not None]

    def compute_logprobs(
        self, *, prompt: Sequence[int], adapter: str | None = None, topk: int = 0
    ) -> PromptLogprobs:
        """Raw model log-probabilities of each prompt token given the ones before it
        (``None`` for the first), and optionally the top-``topk`` tokens per position.

        Raises:
            ConfigError: (``prompt``, ``topk``, ``adapter``) invalid input.
        """
        tokens = validate_prompt(prompt)
        self._check_prompt(tokens)
        if len(tokens) > self.context_length:
            raise ConfigError(
                "prompt", f"has {len(tokens)} tokens; the context is {self.context_length}"
            )
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 0:
            raise ConfigError("topk", f"must be an integer ≥ 0, got {topk!r}")
        self._adapters.check(adapter)
        with self._lock, self._adapters.activate(adapter) as model, torch.inference_mode():
            return prompt_logprobs(
                ModelCaller(model),
                tokens,
                topk=topk,
                chunk_tokens=self.limits.prompt_chunk_tokens,
                device=self.device,
            )

    # ---------------------------------------------------------------- helpers
    def _check_prompt(self, tokens: Sequence[int]) -> None:
        too_big = [t for t in tokens if t >= self.vocab_size]
        if too_big:
            raise ConfigError(
                "prompt", f"token id {too_big[0]} is outside the vocabulary ({self.vocab_size})"
            )

    def _chunks(
        self, requests: list[SampleRequest], indices: list[int]
    ) -> list[list[tuple[int, SampleRequest]]]:
        chunks: list[list[tuple[int, SampleRequest]]] = [[]]
        size = 0
        for i, request in zip(indices, requests, strict=True):
            if chunks[-1] and size + request.num_samples > self.limits.max_batch_sequences:
                chunks.append([])
                size = 0
            chunks[-1].append((i, request))
            size += request.num_samples
        return chunks

    def _run(
        self, caller: ModelCaller, chunk: list[tuple[int, SampleRequest]]
    ) -> list[tuple[int, SampleResponse]]:
        prompts = [request.prompt for _, request in chunk]
        rows_per_request = [self._rows(p, request) for p, (_, request) in enumerate(chunk)]
        decode(
            caller,
            prompts=prompts,
            rows=[row for rows in rows_per_request for row in rows],
            pad_token_id=self.pad_token_id,
            device=self.device,
        )
        out = []
        for (i, request), rows in zip(chunk, rows_per_request, strict=True):
            plp = None
            if request.wants_prompt_logprobs:
                plp = prompt_logprobs(
                    caller,
                    request.prompt,
                    topk=request.topk_prompt_logprobs,
                    chunk_tokens=self.limits.prompt_chunk_tokens,
                    device=self.device,
                )
            out.append(
                (
                    i,
                    SampleResponse(
                        sequences=tuple(row.result() for row in rows),
                        prompt_logprobs=plp.logprobs if plp and request.prompt_logprobs else None,
                        topk_prompt_logprobs=plp.topk if plp else None,
                    ),
                )
            )
        return out

    def _rows(self, prompt_index: int, request: SampleRequest) -> list[Row]:
        params = request.params
        budget = self.context_length - len(request.prompt)
        max_tokens = budget if params.max_tokens is None else params.max_tokens
        stop_ids = frozenset(self.eos_token_ids if params.stops_at_eos else params.stop_token_ids)
        rows = []
        for i in range(request.num_samples):
            generator = None
            if not params.is_greedy:
                generator = torch.Generator().manual_seed(_sequence_seed(params.seed, i))
            checker = StopChecker(
                tokenizer=self.tokenizer,
                prompt=request.prompt,
                stop_token_ids=stop_ids,
                stop_strings=params.stop_strings,
                max_tokens=max_tokens,
            )
            rows.append(Row(prompt_index, params, generator, checker))
        return rows


def _sequence_seed(seed: int | None, index: int) -> int:
    """The generator seed of sample ``index``: derived from ``(seed, index)``, or
    fresh from the OS CSPRNG without a seed."""
    if seed is None:
        return secrets.randbits(63)
    digest = hashlib.sha256(f"tensafe-sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    generation = getattr(model, "generation_config", None)
    configured = getattr(generation, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif isinstance(configured, (list, tuple)):
        ids += [int(t) for t in configured]
    return tuple(dict.fromkeys(ids))


__all__ = ["Sampler", "SamplerLimits"]
