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
        scaled = scaled.masked_fill(_outside_nucleus(scaled, settings.top_p), float("-inf"))
    return scaled


def _outside_nucleus(scaled: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask of the tokens outside each row's nucleus (rows with ``top_p == 1``: none).

    The nucleus is a prefix of the tokens sorted by value (ties by token id): keep a
    token while the probability mass before it is below ``top_p``. Sorting the whole
    vocabulary is slow, so the ``m`` largest values are taken first (``m`` = 64, then
    ×4): once the last kept token's value is strictly above every value left out,
    no token outside the candidates can belong to the nucleus or tie with its
    members, and the result is exactly that of the full sort.
    """
    vocab = scaled.shape[-1]
    enabled = top_p < 1
    log_total = scaled.logsumexp(dim=-1, keepdim=True)
    m = 64
    while True:
        if m * 8 >= vocab:  # candidates would be most of the vocabulary: sort it all
            values, ids = scaled.sort(dim=-1, descending=True, stable=True)
        else:
            values, ids = scaled.topk(m, dim=-1)
            # canonical order among the candidates: value descending, then token id
            ids, by_id = ids.sort(dim=-1)
            values = values.gather(1, by_id)
            values, by_value = values.sort(dim=-1, descending=True, stable=True)
            ids = ids.gather(1, by_value)
        probs = (values - log_total).exp()
        keep = (probs.cumsum(dim=-1) - probs) < top_p[:, None]
        last_kept = values.masked_fill(~keep, float("inf")).min(dim=-1).values
        settled = last_kept > values[:, -1]
        if ids.shape[-1] == vocab or bool((settled | ~enabled).all()):
            break
        m *= 16
    outside = torch.ones_like(scaled, dtype=torch.bool).scatter_(1, ids, ~keep)
    return outside & enabled[:, None]


def draw_tokens(
    logits: torch.Tensor, settings: RowSettings, generators: Sequence[torch.Generator | None]
) -> Draw:
    """Choose one token per row of ``logits`` (``(B, V)``).

    Greedy rows take the argmax (sampled logprob ``0.0``) and use no randomness;
    other rows draw ``u ~ U[0, 1)`` from their generator (a CPU ``torch.Generator``;
    ``None`` counts as ``u = 0``) and invert their cumulative distribution
    (:func:`inverse_cdf`).
    """
    logits = logits.float()
    model_lp = logits.log_softmax(dim=-1)
    sampled = torch.zeros_like(model_lp[:, 0])
    if not settings.any_sampled:
        tokens = logits.argmax(dim=-1)
    else:
        untouched = (
            not settings.any_top_k
            and not settings.any_top_p
            and bool((settings.temperature == 1).all())
        )
        dist_lp = model_lp if untouched else truncated_logits(logits, settings).log_softmax(-1)
        uniforms = torch.tensor(
            [
                0.0 if g is None else float(torch.rand((), generator=g, dtype=torch.float64))
                for g in generators
            ],
            dtype=torch.float64,
            device=logits.device,
        )
        tokens = inverse_cdf(dist_lp.exp(), uniforms)
        if bool(settings.greedy.any()):
            tokens = torch.where(settings.greedy, logits.argmax(dim=-1), tokens)
        chosen = dist_lp.gather(1, tokens[:, None]).squeeze(1)
        sampled = torch.where(settings.greedy, sampled, chosen)
    return Draw(
        tokens=tokens,
        sampled_logprobs=sampled,
        model_logprobs=model_lp.gather(1, tokens[:, None]).squeeze(1),
    )


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor, *, block: int = 256) -> torch.Tensor:
    """Per row, the first token whose cumulative probability exceeds ``u × total``.

    ``probs`` (``(B, V)``, ≥ 0, any positive total) need not be normalised. The
    cumulative sum is taken in two levels, in float64: over blocks of ``block``
    tokens, then inside the chosen block, which avoids a sequential scan of the
    whole vocabulary. The token returned always has a positive probability.
    """
    rows, vocab = probs.shape
    blocks = -(-vocab // block)
    padded = torch.nn.functional.pad(probs, (0, blocks * block - vocab)).view(rows, blocks, block)
    block_cdf = padded.double().sum(dim=-1).cumsum(dim=-1)
    target = uniforms * block_cdf[:, -1]
    b = torch.searchsorted(block_cdf, target[:, None], right=True).clamp(max=blocks - 1)
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)), 0.0)
    inside = padded[torch.arange(rows, device=probs.device), b.squeeze(1)]  # (B, block)
    inner_cdf = inside.double().cumsum(dim=-1) + before
    j = torch.searchsorted(inner_cdf, target[:, None], right=True)
    # Rounding can leave the target just past the block's own running sum: take the
    # block's last token with positive probability then.
    positions = torch.arange(block, device=probs.device)
    last_positive = torch.where(inside > 0, positions, -1).max(dim=-1, keepdim=True).values
    j = torch.minimum(j, last_positive)
    return (b * block + j).squeeze(1)


__all__ = ["Draw", "RowSettings", "draw_tokens", "inverse_cdf", "truncated_logits"]
