"""Grouped clipping: the datums of one unit (a record's completions, a person's records)
are one contribution — their summed gradient is clipped to C. Checked against a slow
reference (each unit alone, one backward, clipped) and by removing a whole unit."""

from __future__ import annotations

import math

import pytest
import torch

from tensafe.errors import ConfigError
from tensafe.losses import compute_loss, get_loss_function
from tensafe.privacy.groups import Grouping

from .conftest import make_engine, random_batch
from .test_dp_step import _randomise_lora_b


def _rows(batch: dict, rows: list[int]) -> dict:
    return {k: [v[i] for i in rows] for k, v in batch.items()}


def _reference_sum(ref, batch: dict, groups: list[int], *, C: float) -> list[torch.Tensor]:
    """Each unit's datums in one backward (their summed gradient), clipped to C, summed."""
    fn = get_loss_function("cross_entropy")
    total = [torch.zeros_like(p) for p in ref.params]
    for unit in dict.fromkeys(groups):
        rows = [i for i, g in enumerate(groups) if g == unit]
        tb = ref.to_batch(_rows(batch, rows))
        out = compute_loss(ref._logits(tb), tb, loss_fn=fn, config={})
        grads = torch.autograd.grad(out.per_example.sum(), ref.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(ref.params, grads,
                                                                         strict=True)]  # fmt: skip
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        factor = min(1.0, C / (norm + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += g * factor
    return total


def _clipped_sum(engine, batch: dict, groups: list[int] | None) -> list[torch.Tensor]:
    engine.forward_backward(batch, groups=groups)
    sums = [engine._acc.get(p, torch.zeros_like(p, dtype=torch.float32)).clone()
            for p in engine.params]  # fmt: skip
    engine._acc.clear()
    engine._acc_examples = 0
    return sums


@pytest.mark.parametrize(("lora", "dtype"), [(True, torch.float32), (False, torch.float64)])
def test_a_units_datums_are_clipped_together_as_the_reference_says(lora, dtype) -> None:
    C = 0.05 if lora else 0.5
    dp = make_engine(lora=lora, dp=True, sigma=0.0, dtype=dtype, max_grad_norm=C)
    ref = make_engine(lora=lora, dp=False, dtype=dtype)
    if lora:
        _randomise_lora_b(dp)
        _randomise_lora_b(ref)
    batch = random_batch(n=5, seq=10)
    groups = [4, 9, 4, 9, 1]  # units {0, 2}, {1, 3}, {4}
    want = _reference_sum(ref, batch, groups, C=C)
    got = _clipped_sum(dp, batch, groups)
    for g, w in zip(got, want, strict=True):
        scale = max(float(w.abs().max()), 1e-12)
        assert float((g.to(w.dtype) - w).abs().max()) / scale <= 1e-5
    ungrouped = _clipped_sum(dp, batch, None)  # per datum: a different (larger) sum
    assert any(float((a - b).abs().max()) > 1e-6 for a, b in zip(got, ungrouped, strict=True))


def test_removing_a_unit_with_many_records_moves_the_sum_by_at_most_c() -> None:
    C = 0.05
    dp = make_engine(lora=True, dp=True, sigma=0.0, max_grad_norm=C)
    _randomise_lora_b(dp)
    same = random_batch(n=1, seq=10)
    many = {k: v * 6 for k, v in same.items()}  # one person, six identical records
    other = random_batch(n=2, seq=10, seed=3)
    both = {k: many[k] + other[k] for k in many}
    with_unit = _clipped_sum(dp, both, [0] * 6 + [1, 2])
    without = _clipped_sum(dp, other, [1, 2])
    moved = math.sqrt(sum(float((a - b).double().pow(2).sum())
                          for a, b in zip(with_unit, without, strict=True)))  # fmt: skip
    assert moved <= C * (1 + 1e-6)
    alone = _clipped_sum(dp, both, None)  # clipped per record, the person would count 6·C
    moved_alone = math.sqrt(sum(float((a - b).double().pow(2).sum())
                                for a, b in zip(alone, without, strict=True)))  # fmt: skip
    assert moved_alone > 5 * C


def test_metrics_count_datums_and_units() -> None:
    dp = make_engine(lora=True, dp=True, sigma=0.0, max_grad_norm=1e-4)
    out = dp.forward_backward(random_batch(n=4, seq=8), groups=[0, 0, 0, 1])
    assert out.metrics["num_examples:sum"] == 4
    assert out.metrics["dp/clip_fraction"] == 1.0  # both units clipped at this tiny C


def test_groups_are_checked() -> None:
    dp = make_engine(lora=True, dp=True, sigma=0.0)
    with pytest.raises(ConfigError) as info:
        dp.forward_backward(random_batch(n=3), groups=[0, 1])
    assert info.value.field == "groups"
    plain = make_engine(lora=True, dp=False)
    with pytest.raises(ConfigError):
        plain.forward_backward(random_batch(n=2), groups=[0, 0])
    with pytest.raises(ConfigError):
        Grouping.from_groups([])
    g = Grouping.from_groups([5, 5, 2])
    ids = torch.arange(6).reshape(3, 2)
    assert g.apply(ids).tolist() == [[0, 1, 2, 3], [4, 5, 0, 0]]
