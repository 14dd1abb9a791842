"""From next-token logits to the distribution sampled from, and one draw per row.

Each row of a batch may have its own temperature, top-k and top-p. The order is
the usual one (HF, vLLM): divide by the temperature, keep the top-k, keep the
nucleus (top-p), renormalise. ``sampled_logprobs`` are the log-probabilities of
that final distribution (``-inf`` outside its support); ``model_logprobs`` are the
raw log-softmax at temperature 1.

A draw uses one uniform number per row from the row's own generator and inverts
the row's cumulative distribution, so a row's token depends only on its logits and
its generator, never on the other rows of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tensafe.generation.params import SamplingParams


@dataclass(frozen=True)
class RowSettings:
    """Per-row sampling settings as tensors on the logits' device.

    ``greedy`` (bool), ``temperature`` (float; 1 where greedy), ``top_k`` (long;
    0 where disabled), ``top_p`` (float; 1 where disabled).
    """

    greedy: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    any_sampled: bool
    any_top_k: bool
    any_top_p: bool

    @classmethod
    def from_params(cls, params: Sequence[SamplingParams], *, device: torch.device) -> RowSettings:
        """One row per entry of ``params``."""
        greedy = [p.is_greedy for p in params]
        temperature = [1.0 if p.is_greedy else float(p.temperature) for p in params]
        top_k = [0 if p.is_greedy or p.top_k == -1 else p.top_k for p in params]
        top_p = [1.0 if p.is_greedy else float(p.top_p) for p in params]
        return cls(
            greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            temperature=torch.tensor(temperature, dtype=torch.float32, device=device),
            top_k=torch.tensor(top_k, dtype=torch.long, device=device),
            top_p=torch.tensor(top_p, dtype=torch.float32, device=device),
            any_sampled=not all(greedy),
            any_top_k=any(k > 0 for k in top_k),
            any_top_p=any(p < 1.0 for p in top_p),
        )

    def select(self, rows: torch.Tensor) -> RowSettings:
        """The settings of the given rows (an index tensor), in that order."""
        greedy = self.greedy[rows]
        top_k = self.top_k[rows]
        top_p = self.top_p[rows]
        return RowSettings(
            greedy=greedy,
            temperature=self.temperature[rows],
            top_k=top_k,
            top_p=top_p,
            any_sampled=bool((~greedy).any()),
            any_top_k=bool((top_k > 0).any()),
            any_top_p=bool((top_p < 1).any()),
        )


@dataclass(frozen=True)
class Draw:
    """The chosen token per row and its two log-probabilities (all shaped ``(B,)``)."""

    tokens: torch.Tensor
    sampled_logprobs: torch.Tensor
    model_logprobs: torch.Tensor


def truncated_logits(logits: torch.Tensor, settings: RowSettings) -> torch.Tensor:
    """``logits / temperature`` with tokens outside top-k and top-p set to ``-inf``
    (float32, ``(B, V)``). Greedy rows are returned at temperature 1, untruncated."""
    scaled = logits.float() / settings.temperature[:, None]
    neg_inf = torch.tensor(float("-inf"), device=scaled.device)
    if settings.any_top_k:
        k = settings.top_k.clamp(max=scaled.shape[-1])
        top = scaled.topk(int(k.max()), dim=-1).values
        kth = top.gather(1, (k - 1).clamp(min=0)[:, None])
        kth = torch.where(k[:, None] > 0, kth, neg_inf)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if settings.any_top_p:
        # Stable sort: ties keep their token-id order, so the nucleus of a row is
        # the same whatever else is in the batch.
        ordered, order = scaled.sort(dim=-1, descending=True, stable=True)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # Rows without top-p keep everything (rounding could push the cumulative
        # mass of their tail past 1).
        enabled = (settings.top_p < 1)[:, None]
        drop_sorted = (mass_before >= settings.top_p[:, None]) & enabled
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def draw_tokens(
    logits: torch.Tensor, settings: RowSettings, generators: Sequence[torch.Generator | None]
) -> Draw:
    """Choose one token per row of ``logits`` (``(B, V)``).

    Greedy rows take the argmax (sampled logprob ``0.0``) and use no randomness;
    other rows draw ``u ~ U[0, 1)`` from their generator (a CPU ``torch.Generator``)
    and take the first token whose cumulative probability exceeds ``u`` times the
    total.
    """
    logits = logits.float()
    model_lp = logits.log_softmax(dim=-1)
    tokens = logits.argmax(dim=-1)
    sampled = torch.zeros_like(model_lp[:, 0])
    if settings.any_sampled:
        dist_lp = truncated_logits(logits, settings).log_softmax(dim=-1)
        cdf = dist_lp.exp().double().cumsum(dim=-1)
        uniforms = [
            0.0 if g is None else float(torch.rand((), generator=g, dtype=torch.float64))
            for g in generators
        ]
        target = torch.tensor(uniforms, dtype=torch.float64, device=cdf.device) * cdf[:, -1]
        drawn = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1)
        drawn = drawn.clamp(max=logits.shape[-1] - 1)
        tokens = torch.where(settings.greedy, tokens, drawn)
        chosen = dist_lp.gather(1, tokens[:, None]).squeeze(1)
        sampled = torch.where(settings.greedy, sampled, chosen)
    return Draw(
        tokens=tokens,
        sampled_logprobs=sampled,
        model_logprobs=model_lp.gather(1, tokens[:, None]).squeeze(1),
    )


__all__ = ["Draw", "RowSettings", "draw_tokens", "truncated_logits"]
