"""Raw model log-probabilities of a prompt's tokens (Tinker's ``compute_logprobs``).

The prompt runs in chunks of ``chunk_tokens`` positions, each chunk attending to
the earlier ones through the KV cache, so at most ``chunk_tokens × vocabulary``
logits are held at once whatever the prompt length. The values are the model's
log-softmax at temperature 1, as ``forward`` computes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tensafe.generation.decoding import ModelCaller
from tensafe.generation.results import PromptLogprobs, TopLogprobs


def prompt_logprobs(
    caller: ModelCaller,
    tokens: Sequence[int],
    *,
    topk: int,
    chunk_tokens: int,
    device: torch.device,
) -> PromptLogprobs:
    """``log p(tokens[i] | tokens[:i])`` for every ``i`` (``None`` at 0), and the
    top-``topk`` ``(token, logprob)`` per position when ``topk > 0``.

    The caller holds the model lock, eval mode and inference mode.
    """
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
    n = ids.shape[1]
    logprobs: list[float | None] = [None]
    top: list[TopLogprobs | None] = [None]
    cache: Any = None
    for start in range(0, n - 1, chunk_tokens):
        stop = min(start + chunk_tokens, n - 1)  # positions start..stop-1 predict start+1..stop
        more = stop < n - 1
        logits, cache = caller(
            input_ids=ids[:, start:stop],
            attention_mask=None,
            position_ids=torch.arange(start, stop, device=device)[None],
            cache=cache,
            use_cache=more,
            logits_to_keep=0,
        )
        lsm = logits[0].float().log_softmax(dim=-1)
        targets = ids[0, start + 1 : stop + 1]
        logprobs += lsm.gather(1, targets[:, None]).squeeze(1).tolist()
        if topk:
            values, indices = lsm.topk(min(topk, lsm.shape[-1]), dim=-1)
            top += [
                tuple(zip(row_ids, row_values, strict=True))
                for row_ids, row_values in zip(indices.tolist(), values.tolist(), strict=True)
            ]
    return PromptLogprobs(logprobs=tuple(logprobs), topk=tuple(top) if topk else None)


__all__ = ["prompt_logprobs"]
