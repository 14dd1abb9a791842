"""Gram-route norms and clipped sums (embeddings, tied weights) equal materialised ones.

* Unit level: for random mixes of embedding and linear uses of one weight (repeated token
  ids, a ``(B, d)`` linear input), :func:`gram.squared_norms` and :func:`gram.clipped_sum`
  equal the same quantities computed from explicitly materialised per-example gradients.
* Model level: full fine-tuning of a tied Llama takes the Gram route for the tied
  embedding / LM head (no ``(B, vocab, hidden)`` buffer) and matches a slow per-example
  reference to 1e-6 in float32; a padding index and an untied embedding too; removing one
  example moves the clipped sum by at most C.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tensafe.privacy import gram
from tensafe.privacy.per_example import CLIP_EPS, PerExampleClipper

from .test_per_example import _batch, _engine_sums, _llama, _reference

ROWS, COLS = 11, 5


def _materialise(use: gram.Use) -> torch.Tensor:
    """The use's per-example gradients ``(B, ROWS, COLS)``, the slow way."""
    if isinstance(use, gram.LinearUse):
        b = use.inp.shape[0]
        a = use.inp.reshape(b, -1, COLS)
        g = use.grad_out.reshape(b, -1, ROWS)
        return torch.einsum("bto,bti->boi", g, a)
    out = torch.zeros(use.ids.shape[0], ROWS, COLS, dtype=use.grad_out.dtype)
    for i in range(use.ids.shape[0]):
        for t in range(use.ids.shape[1]):
            out[i, use.ids[i, t]] += use.grad_out[i, t]
    return out


def _uses(dtype: torch.dtype, seed: int) -> list[gram.Use]:
    g = torch.Generator().manual_seed(seed)
    B = 4
    ids = torch.randint(0, 4, (B, 7), generator=g)  # few distinct ids: many repeats
    return [
        gram.LinearUse(
            inp=torch.randn(B, 6, COLS, generator=g, dtype=dtype),
            grad_out=torch.randn(B, 6, ROWS, generator=g, dtype=dtype),
        ),
        gram.EmbeddingUse(ids=ids, grad_out=torch.randn(B, 7, COLS, generator=g, dtype=dtype)),
        gram.EmbeddingUse(
            ids=torch.randint(0, ROWS, (B, 3), generator=g),
            grad_out=torch.randn(B, 3, COLS, generator=g, dtype=dtype),
        ),
        gram.LinearUse(  # (B, d): one position per example
            inp=torch.randn(B, COLS, generator=g, dtype=dtype),
            grad_out=torch.randn(B, ROWS, generator=g, dtype=dtype),
        ),
    ]


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("subset", [[0], [1], [0, 1], [1, 2], [0, 1, 2, 3]])
def test_norms_and_sums_equal_materialised_per_example_gradients(dtype, rtol, subset):
    uses = [_uses(dtype, seed=3)[k] for k in subset]
    per_example = sum(_materialise(u).double() for u in uses)
    want_norms = per_example.reshape(per_example.shape[0], -1).norm(dim=1)
    got_norms = gram.squared_norms(uses).double().clamp(min=0).sqrt()
    torch.testing.assert_close(got_norms, want_norms, rtol=rtol, atol=0)
    factors = (0.7 / (want_norms + CLIP_EPS)).clamp(max=1.0)
    want = (per_example * factors.view(-1, 1, 1)).sum(0)
    got = gram.clipped_sum(
        uses, shape=torch.Size([ROWS, COLS]), factors=factors.to(dtype), finite=None
    )
    assert got.dtype == gram.compute_dtype(dtype)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * float(want.abs().max()))


def test_a_nan_reaches_only_its_own_example_and_is_zeroed_in_the_sum():
    uses = _uses(torch.float32, seed=4)
    uses[1].grad_out[2, 3, 0] = float("nan")
    norms = gram.squared_norms(uses)
    assert not bool(norms[2].isfinite())
    assert bool(norms[[0, 1, 3]].isfinite().all())
    finite = torch.tensor([True, True, False, True])
    factors = torch.tensor([0.5, 1.0, 0.0, 0.25])
    got = gram.clipped_sum(uses, shape=torch.Size([ROWS, COLS]), factors=factors, finite=finite)
    clean = [
        type(u)(*(t[[0, 1, 3]] for t in (u.inp, u.grad_out)))
        if isinstance(u, gram.LinearUse)
        else gram.EmbeddingUse(ids=u.ids[[0, 1, 3]], grad_out=u.grad_out[[0, 1, 3]])
        for u in uses
    ]
    want = gram.clipped_sum(
        clean, shape=torch.Size([ROWS, COLS]), factors=factors[[0, 1, 3]], finite=None
    )
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("seq_len", "route"), [(8, "gram"), (60, "instantiate")])
def test_tied_full_finetune_matches_reference_fp32(seq_len, route):
    # T·(97 + 64) < 97·64 picks the Gram route for the tied weight at T = 8, not at T = 60
    model = _llama(tied=True, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    ids, mask, targets, weights = _batch([seq_len, seq_len - 3, 2, seq_len - 1], seed=5)
    weights = weights.float()
    C = 0.5
    want, want_norms = _reference(model, params, ids, mask, targets, weights, C)
    res, counts = _engine_sums(model, PerExampleClipper(model), ids, mask, targets, weights, C)
    assert (counts.get("gram", 0) == 2) == (
        route == "gram"
    )  # LM head + embedding, both on one route
    torch.testing.assert_close(res.norms, want_norms.float(), rtol=1e-6, atol=0)
    for p, w in zip(params, want, strict=True):
        got = res.sums[p]
        assert float((got - w).abs().max()) <= 1e-6 * max(float(w.abs().max()), 1e-12)


class _TiedPadded(nn.Module):
    """Embedding with a padding index whose table is also the output layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Embedding(13, 6, padding_idx=0).double()
        self.mix = nn.Linear(6, 6).double()
        self.head = nn.Linear(6, 13, bias=False).double()
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))))


def test_padding_index_and_cross_terms_match_reference():
    model = _TiedPadded()
    ids = torch.tensor([[0, 3, 3, 5], [2, 2, 0, 0], [7, 1, 12, 3]])
    targets = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    params = list(model.parameters())

    def losses(rows):  # per-example mean token losses, one batched forward
        logp = torch.log_softmax(model(ids[rows]), -1)
        return -logp.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1).mean(dim=1)

    C = 0.3
    want = [torch.zeros_like(p) for p in params]
    for i in range(ids.shape[0]):
        grads = torch.autograd.grad(losses([i]).sum(), params)
        norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
        for w, g in zip(want, grads, strict=True):
            w += g * min(1.0, C / (norm + CLIP_EPS))
    clipper = PerExampleClipper(model)
    with clipper.collect(batch_size=3) as collector:
        losses([0, 1, 2]).sum().backward()
    res = collector.clip(C)
    assert collector.strategy_counts.get("gram", 0) == 2
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(res.sums[p], w, rtol=1e-10, atol=1e-12)
    assert float(res.sums[model.embed.weight][0].abs().max()) > 0  # head row 0 still trains


def test_removing_one_example_moves_the_gram_route_sum_by_at_most_C_fp32():
    model = _llama(tied=True, dtype=torch.float32)
    clipper = PerExampleClipper(model)
    ids, mask, targets, weights = _batch([8, 8, 5, 8, 6], seed=3)
    weights = weights.float()
    C = 0.05
    full, counts = _engine_sums(model, clipper, ids, mask, targets, weights, C)
    assert counts.get("gram", 0) == 2
    for drop in range(ids.shape[0]):
        keep = [i for i in range(ids.shape[0]) if i != drop]
        part, _ = _engine_sums(
            model, clipper, ids[keep], mask[keep], targets[keep], weights[keep], C
        )
        moved = sum(
            float((s.double() - part.sums[p].double()).pow(2).sum()) for p, s in full.sums.items()
        )
        assert moved**0.5 <= C * (1 + 1e-6)
        assert float(full.norms[drop]) > C  # the bound was active, so the test can fail
