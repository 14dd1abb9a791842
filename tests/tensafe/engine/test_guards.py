"""The finiteness guards see every NaN and infinity, wherever it sits and in every dtype."""

from __future__ import annotations

import pytest
import torch

from tensafe.engine.guards import _all_finite, _finite_flag


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 1, 4095, 65536, 99_999])
def test_a_single_non_finite_entry_is_seen(dtype, bad, where):
    t = torch.randn(100_000).to(dtype)
    assert bool(_finite_flag(t))
    t[where] = bad
    assert not bool(_finite_flag(t))
    assert not _all_finite([torch.zeros(3), t.view(100, 1000)])


def test_empty_and_extreme_finite_tensors_are_finite():
    big = torch.finfo(torch.float32).max
    assert bool(_finite_flag(torch.empty(0)))
    assert _all_finite([torch.tensor([big, -big]), torch.empty(0, 4)])
    assert _all_finite([])
