"""Per-example clipping equals a slow reference loop (each example alone)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tensafe.errors import PrivacyError
from tensafe.privacy.per_example import CLIP_EPS, PerExampleClipper

VOCAB = 97


def _llama(*, tied: bool = True, dtype=torch.float64, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).to(dtype)
    # random (non-unit) norm gains so their gradients are not degenerate
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _per_example_loss(model, ids, mask, targets, weights):
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    lp = (
        torch.log_softmax(logits.to(torch.float64), -1)
        .gather(-1, targets.unsqueeze(-1))
        .squeeze(-1)
    )
    return -(lp * weights).sum(1) / weights.sum(1)


def _batch(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(0, VOCAB, (len(lengths), T), generator=g)
    targets = torch.randint(0, VOCAB, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    weights = mask.to(torch.float64)
    return ids, mask, targets, weights


def _reference(model, params, ids, mask, targets, weights, C):
    """Slow reference: each example's gradient computed alone, clipped, summed."""
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        loss = _per_example_loss(
            model,
            ids[i : i + 1, :n],
            mask[i : i + 1, :n],
            targets[i : i + 1, :n],
            weights[i : i + 1, :n],
        )
        grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
        ]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        norms.append(norm)
        factor = min(1.0, C / (float(norm) + CLIP_EPS))
        for t, g in zip(total, grads, strict=True):
            t.add_(g * factor)
    return total, torch.stack(norms)


def _engine_sums(model, clipper, ids, mask, targets, weights, C):
    with clipper.collect(batch_size=ids.shape[0]) as col:
        _per_example_loss(model, ids, mask, targets, weights).sum().backward()
    counts = dict(col.strategy_counts)
    if counts["ghost"]:
        counts["shared_input_grams"] = col.shared_input_grams
    res = col.clip(C)
    return res, counts


def _assert_close(params, got, want, rtol):
    for p, w in zip(params, want, strict=True):
        g = got.get(p, torch.zeros_like(p))
        scale = max(float(w.abs().max()), 1e-12)
        assert float((g - w).abs().max()) / scale <= rtol


@pytest.mark.parametrize("seq_len", [6, 48])  # short → ghost linears; long → instantiated ones
def test_full_finetune_matches_reference_fp64_with_tied_embeddings(seq_len):
    model = _llama(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    params = [p for p in model.parameters() if p.requires_grad]
    ids, mask, targets, weights = _batch([seq_len, seq_len - 3, 2, seq_len - 1])
    C = 0.5
    want, want_norms = _reference(model, params, ids, mask, targets, weights, C)
    clipper = PerExampleClipper(model)
    res, counts = _engine_sums(model, clipper, ids, mask, targets, weights, C)
    assert all(p.grad is None for p in params)  # autograd never built summed grads
    torch.testing.assert_close(res.norms.to(torch.float64), want_norms, rtol=1e-7, atol=1e-10)
    _assert_close(params, res.sums, want, rtol=1e-7)
    assert counts["instantiate"] > 0
    if seq_len == 6:
        assert counts["ghost"] > 0
        # q/k/v and gate/up of each layer share their input's Gram: 3 per layer
        assert counts["shared_input_grams"] == 3 * model.config.num_hidden_layers


def test_untied_full_finetune_matches_reference():
    model = _llama(tied=False)
    params = [p for p in model.parameters() if p.requires_grad]
    ids, mask, targets, weights = _batch([5, 3, 5])
    want, _ = _reference(model, params, ids, mask, targets, weights, 0.1)
    res, _ = _engine_sums(model, PerExampleClipper(model), ids, mask, targets, weights, 0.1)
    _assert_close(params, res.sums, want, rtol=1e-7)


def test_lora_matches_reference_fp32():
    base = _llama(tied=True, dtype=torch.float32)
    model = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    # LoRA B starts at zero, which would make lora_A's gradient zero: randomise it
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids, mask, targets, weights = _batch([12, 7, 12, 1, 9])
    weights = weights.float()
    want, _ = _reference(model, params, ids, mask, targets, weights, 1.0)
    res, _ = _engine_sums(model, PerExampleClipper(model), ids, mask, targets, weights, 1.0)
    _assert_close(params, res.sums, want, rtol=1e-5)


def test_removing_one_example_changes_clipped_sum_by_at_most_C():
    model = _llama(tied=True)
    clipper = PerExampleClipper(model)
    params = [p for p in model.parameters() if p.requires_grad]
    ids, mask, targets, weights = _batch([8, 8, 5, 8, 6], seed=3)
    C = 0.05
    full, _ = _engine_sums(model, clipper, ids, mask, targets, weights, C)
    for drop in range(ids.shape[0]):
        keep = [i for i in range(ids.shape[0]) if i != drop]
        part, _ = _engine_sums(
            model, clipper, ids[keep], mask[keep], targets[keep], weights[keep], C
        )
        diff_sq = sum(
            float(
                (full.sums.get(p, torch.zeros_like(p)) - part.sums.get(p, torch.zeros_like(p)))
                .pow(2)
                .sum()
            )
            for p in params
        )
        assert diff_sq**0.5 <= C * (1 + 1e-9)
        assert float(full.norms[drop]) > C  # the bound was active, so the test can fail


def test_unsupported_trainable_module_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with pytest.raises(PrivacyError, match=r"1\.weight"):
        PerExampleClipper(model)


def test_backward_without_collector_is_refused():
    model = _llama()
    PerExampleClipper(model)
    ids, mask, targets, weights = _batch([4, 4])
    with pytest.raises(PrivacyError, match="no active clip collector"):
        _per_example_loss(model, ids, mask, targets, weights).sum().backward()


def test_flattened_batch_dimension_is_refused():
    lin = torch.nn.Linear(3, 2).double()
    clipper = PerExampleClipper(lin)
    x = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(PrivacyError, match="leading dimension"), clipper.collect(batch_size=2):
        lin(x).sum().backward()


def test_detach_restores_plain_forward():
    model = _llama()
    clipper = PerExampleClipper(model)
    clipper.detach()
    ids, mask, targets, weights = _batch([4, 4])
    _per_example_loss(model, ids, mask, targets, weights).sum().backward()
    assert model.lm_head.weight.grad is not None


def _chunked_head_pass(clipper, lin, x, *, pieces, repeated):
    """A loss that calls ``lin`` once per slice of positions (a chunked output head)."""
    with clipper.collect(batch_size=x.shape[0], repeated=repeated) as col:
        outs = [lin(part) for part in torch.tensor_split(x, pieces, dim=1)]
        torch.cat(outs, dim=1).sin().sum(dim=(1, 2)).sum().backward()
    counts = dict(col.strategy_counts)
    return col.clip(0.5), counts


def test_repeated_module_is_instantiated_and_equals_one_call():
    lin = torch.nn.Linear(8, 300).double()  # 2T² < in·out: ghost-clipped when called once
    clipper = PerExampleClipper(lin)
    x = torch.randn(3, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    once, once_counts = _chunked_head_pass(clipper, lin, x, pieces=1, repeated=())
    split, split_counts = _chunked_head_pass(clipper, lin, x, pieces=3, repeated=(lin,))
    assert once_counts == {"ghost": 1, "instantiate": 0}
    assert split_counts == {"ghost": 0, "instantiate": 3}
    assert float(once.norms.min()) > 0.5  # clipping active, so a wrong norm would show
    torch.testing.assert_close(split.norms, once.norms, rtol=1e-12, atol=0)
    for p in (lin.weight, lin.bias):
        torch.testing.assert_close(split.sums[p], once.sums[p], rtol=1e-10, atol=1e-12)


def test_module_called_twice_without_being_named_repeated_is_refused():
    lin = torch.nn.Linear(8, 300).double()
    clipper = PerExampleClipper(lin)
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    with pytest.raises(PrivacyError, match="used twice"):
        _chunked_head_pass(clipper, lin, x, pieces=2, repeated=())


class _SharedInput(torch.nn.Module):
    """Three biased layers fed one tensor (like q/k/v), one narrow and one wide
    (the clipped sums scale the shared input once, or each output gradient)."""

    def __init__(self, *, wide: int) -> None:
        super().__init__()
        self.q, self.k = torch.nn.Linear(16, 8), torch.nn.Linear(16, 4)
        self.v = torch.nn.Linear(16, wide)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.q(x).tanh().sum(-1) * self.k(x).sum(-1) + self.v(x).cos().sum(-1)).sum(-1)


@pytest.mark.parametrize("wide", [2, 40])  # Σ out 14 < 16: scale each grad_out; 52: the input
@pytest.mark.parametrize("poison", [False, True])
def test_layers_sharing_an_input_match_reference(wide, poison):
    torch.manual_seed(0)
    model = _SharedInput(wide=wide).double()
    params = list(model.parameters())
    x = torch.randn(4, 3, 16, dtype=torch.float64)
    if poison:
        x[2, 1, 5] = float("nan")  # example 2 contributes nothing, the others exactly
    C = 0.3
    want = [torch.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        if poison and i == 2:
            continue
        grads = torch.autograd.grad(model(x[i : i + 1]).sum(), params)
        norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
        for t, g in zip(want, grads, strict=True):
            t.add_(g * min(1.0, C / (norm + CLIP_EPS)))
    clipper = PerExampleClipper(model)
    with clipper.collect(batch_size=x.shape[0]) as col:
        model(x).sum().backward()
    assert col.strategy_counts == {"ghost": 3, "instantiate": 0}
    assert col.shared_input_grams == 2
    res = col.clip(C)
    assert res.nonfinite.tolist() == [False, False, poison, False]
    assert float(res.norms[~res.nonfinite].min()) > C  # clipping active: wrong norms would show
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(res.sums[p], w, rtol=1e-10, atol=1e-12)
