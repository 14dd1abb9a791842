"""The clipped sum's sensitivity bound in floating point.

* Exactness: removing one of 48 aligned examples (identical records, the worst case
  for rounding) moves the clipped sum by at most ``C·(1 + 1e-6)`` plus the float32
  rounding of the two sums themselves (``2^-24·(‖S(D)‖ + ‖S(D')‖)``) in bfloat16 and
  float32, for LoRA (adapters in float32 as peft makes them, or cast to bfloat16)
  and for full fine-tuning.
* NaN-proofing: an example whose per-example gradient has NaN or infinite entries,
  or whose norm overflows float32, contributes exactly zero and is reported.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tensafe.errors import PrivacyError
from tensafe.privacy.per_example import PerExampleClipper, clip_factors, clipped_sum

from .test_per_example import VOCAB, _llama, _per_example_loss


def _model(kind: str, dtype: torch.dtype) -> torch.nn.Module:
    model = _llama(tied=True, dtype=dtype)
    if kind == "full":
        return model
    model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    if kind == "lora-cast":
        model = model.to(dtype)
    with torch.no_grad():  # LoRA B starts at zero, which would zero lora_A's gradient
        g = torch.Generator().manual_seed(5)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=g) * 0.1).to(p.dtype))
    return model


def _sums(model, clipper, ids, C, *, scale=None):
    weights = torch.ones(ids.shape, dtype=torch.float32)
    mask = torch.ones_like(ids)
    targets = torch.roll(ids, -1, dims=1)
    with clipper.collect(batch_size=ids.shape[0]) as collector:
        losses = _per_example_loss(model, ids, mask, targets, weights)
        (losses if scale is None else losses * scale).sum().backward()
    return collector.clip(C)


def _norm(sums) -> float:
    return sum(float(t.double().pow(2).sum()) for t in sums.values()) ** 0.5


@pytest.mark.parametrize("seq_len", [4, 12])  # LoRA: ghost at 4, instantiated at 12
@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        ("lora", torch.bfloat16),
        ("lora-cast", torch.bfloat16),
        ("full", torch.bfloat16),
        ("lora", torch.float32),
        ("full", torch.float32),
    ],
)
def test_removing_one_of_48_aligned_examples_moves_the_sum_by_at_most_C(kind, dtype, seq_len):
    model = _model(kind, dtype)
    clipper = PerExampleClipper(model)
    record = torch.randint(0, VOCAB, (1, seq_len), generator=torch.Generator().manual_seed(2))
    C = float(_sums(model, clipper, record, 1.0).norms[0]) / 10
    full = _sums(model, clipper, record.repeat(48, 1), C)
    part = _sums(model, clipper, record.repeat(47, 1), C)
    assert bool((full.norms > C).all())  # every example is clipped: the bound is active
    assert all(s.dtype in (torch.float32, torch.float64) for s in full.sums.values())
    moved = sum(
        float((s.double() - part.sums[p].double()).pow(2).sum()) for p, s in full.sums.items()
    )
    # Each float32 sum is itself rounded: its stored coordinates are off by up to half an
    # ulp, i.e. by at most 2^-24 of the sum's norm, so no float32 representation of
    # S(D) and S(D minus x) can promise better than C·(1 + 1e-6) + 2^-24·(‖S(D)‖ + ‖S(D')‖)
    # (with 48 aligned examples, about 2.9e-6·C). Within that, the bound holds.
    representation = 2**-24 * (_norm(full.sums) + _norm(part.sums))
    assert moved**0.5 <= C * (1 + 1e-6) + representation
    assert moved**0.5 >= C * (1 - 1e-3)  # and the example really was in the sum


@pytest.mark.parametrize("kind", ["full", "lora"])
@pytest.mark.parametrize("seq_len", [4, 12])
def test_non_finite_example_contributes_zero_and_is_counted(kind, seq_len):
    model = _model(kind, torch.float32)
    clipper = PerExampleClipper(model)
    ids = torch.randint(0, VOCAB, (5, seq_len), generator=torch.Generator().manual_seed(4))
    # examples 1 and 2 get inf / NaN gradient entries; example 3's entries stay finite
    # (~1e30) but its squared norm overflows float32
    scale = torch.tensor([1.0, float("inf"), float("nan"), 1e30, 1.0])
    C = 0.05
    res = _sums(model, clipper, ids, C, scale=scale)
    assert res.nonfinite.tolist() == [False, True, True, True, False]
    assert res.factors[1:4].tolist() == [0.0, 0.0, 0.0]
    assert all(bool(s.isfinite().all()) for s in res.sums.values())
    keep = _sums(model, clipper, ids[[0, 4]], C)
    for p, s in keep.sums.items():
        torch.testing.assert_close(res.sums[p], s, rtol=1e-5, atol=1e-8)


def test_clipped_sum_helpers_are_float32_and_zero_non_finite_rows():
    g = torch.tensor([[1.0, 2.0], [float("nan"), 1.0], [3.0, float("inf")]], dtype=torch.bfloat16)
    norms = g.float().pow(2).sum(1).sqrt()
    factors, finite = clip_factors(norms, 1.0)
    assert factors.dtype == torch.float32 and finite.tolist() == [True, False, False]
    out = clipped_sum(g, factors=factors, finite=finite)
    assert out.dtype == torch.float32
    want = g[0].float() * (1.0 / (float(norms[0]) + 1e-6))
    torch.testing.assert_close(out, want, rtol=1e-7, atol=0)


def test_reduced_precision_float32_matmuls_are_refused():
    model = _model("lora", torch.float32)
    clipper = PerExampleClipper(model)
    ids = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(6))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # would allow TF32 on CUDA
    try:
        with pytest.raises(PrivacyError, match="'highest'"):
            _sums(model, clipper, ids, 1.0)
    finally:
        torch.set_float32_matmul_precision(previous)
