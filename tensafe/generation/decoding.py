"""Batched incremental decoding with the model's own KV cache.

One call decodes several prompts, each with one or more sequences ("rows"):

1. **Prefill.** The distinct prompts are left-padded into one batch (attention
   mask 0 on the padding, position ids counting from 0 at each prompt's first
   real token) and run once; only the last position's logits are computed.
2. **Expand.** The cache, mask and logits are repeated per row (a prompt with
   ``num_samples = n`` becomes ``n`` rows), so a prompt is encoded once.
3. **Step.** Each row draws its next token (:mod:`tensafe.generation.distribution`),
   its :class:`~tensafe.generation.stopping.StopChecker` decides whether it ended,
   and the unfinished rows feed their token back for one more forward pass with
   the cache. Once a quarter of the batch has finished, the finished rows are
   dropped from the cache so they cost nothing more.

Callers hold the model lock, eval mode and inference mode (see ``sampler.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tensafe.generation.distribution import RowSettings, draw_tokens
from tensafe.generation.params import SamplingParams
from tensafe.generation.results import SampledSequence, StopReason
from tensafe.generation.stopping import StopChecker
from tensafe.models.locking import lock_owner

COMPACT_FRACTION = 0.25  # drop finished rows from the cache once they are this share


@dataclass(eq=False)
class Row:
    """One sequence being generated, and what it has produced so far."""

    prompt_index: int
    params: SamplingParams
    generator: torch.Generator | None
    checker: StopChecker
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    model_logprobs: list[float] = field(default_factory=list)
    stop_reason: StopReason | None = None

    def result(self) -> SampledSequence:
        """The finished sequence."""
        if self.stop_reason is None:
            raise RuntimeError("row has not finished")
        return SampledSequence(
            tokens=tuple(self.tokens),
            logprobs=tuple(self.logprobs),
            model_logprobs=tuple(self.model_logprobs),
            stop_reason=self.stop_reason,
        )


class ModelCaller:
    """Calls a causal LM (or a peft wrapper of one) with a KV cache, whatever the
    transformers version names the cache argument (``cache`` from 5.x on,
    ``past_key_values`` before)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        base = lock_owner(model)
        forward_params = inspect.signature(type(base).forward).parameters
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"

    def __call__(
        self,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Any,
        use_cache: bool,
        logits_to_keep: int,
    ) -> tuple[torch.Tensor, Any]:
        """``(logits, cache)``: logits ``(B, T', V)`` for the last ``logits_to_keep``
        positions (all positions when 0), and the updated cache."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **{self._cache_arg: cache},
        )
        return out.logits, getattr(out, self._cache_arg, None)


def left_pad(
    prompts: Sequence[Sequence[int]], *, pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` of the prompts, left-padded."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def decode(
    caller: ModelCaller,
    *,
    prompts: Sequence[Sequence[int]],
    rows: Sequence[Row],
    pad_token_id: int,
    device: torch.device,
) -> None:
    """Generate every row to completion (fills ``row.tokens`` etc. in place).

    Every row must have a finite token budget in its checker (the caller sets it so
    that prompt + budget fits the context).
    """
    ids, mask, positions = left_pad(prompts, pad_token_id=pad_token_id, device=device)
    logits, cache = caller(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        cache=None,
        use_cache=True,
        logits_to_keep=1,
    )
    expand = torch.tensor([row.prompt_index for row in rows], dtype=torch.long, device=device)
    if not torch.equal(expand, torch.arange(len(prompts), device=device)):
        cache.reorder_cache(expand)
    logits = logits[:, -1][expand]
    mask = mask[expand]
    next_position = positions[expand, -1] + 1
    settings = RowSettings.from_params([row.params for row in rows], device=device)
    batch = list(rows)  # the rows in the cache, in batch order (finished ones included)
    while True:
        draw = draw_tokens(
            logits, settings, [None if r.stop_reason else r.generator for r in batch]
        )
        tokens = draw.tokens.tolist()
        for row, token, lp, mlp in zip(
            batch,
            tokens,
            draw.sampled_logprobs.tolist(),
            draw.model_logprobs.tolist(),
            strict=True,
        ):
            if row.stop_reason is None:
                row.tokens.append(token)
                row.logprobs.append(lp)
                row.model_logprobs.append(mlp)
                row.stop_reason = row.checker.push(token)
        finished = sum(row.stop_reason is not None for row in batch)
        if finished == len(batch):
            return
        next_tokens = draw.tokens
        if finished >= max(1.0, COMPACT_FRACTION * len(batch)):
            keep = torch.tensor(
                [i for i, row in enumerate(batch) if row.stop_reason is None],
                dtype=torch.long,
                device=device,
            )
            cache.reorder_cache(keep)
            mask, next_position, next_tokens = mask[keep], next_position[keep], next_tokens[keep]
            settings = settings.select(keep)
            batch = [batch[i] for i in keep.tolist()]
        mask = torch.cat([mask, mask.new_ones((len(batch), 1))], dim=1)
        logits, cache = caller(
            input_ids=next_tokens[:, None],
            attention_mask=mask,
            position_ids=next_position[:, None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = logits[:, -1]
        next_position = next_position + 1


__all__ = ["COMPACT_FRACTION", "ModelCaller", "Row", "decode", "left_pad"]
