"""Float inputs are judged in float32, the dtype the engine computes with: a value
finite in float64 but not in float32, or one that makes the loss overflow, is
refused naming the datum and input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tensafe.errors import InvalidBatchError
from tensafe.losses import (
    MIN_SAMPLING_LOGPROB,
    Datum,
    TokenBatch,
    batch_from_arrays,
    batch_from_datums,
    check_token_batch,
)

V = 50
CE = ("target_tokens",)
RL = ("target_tokens", "logprobs", "advantages")
W = "data[1].loss_fn_inputs.weights"


def _datum(n: int = 3, **inputs: list[float]) -> Datum:
    tokens = list(range(1, n + 1))
    return Datum(tokens=tokens, loss_fn_inputs={"target_tokens": [*tokens[1:], 0], **inputs})


def _rl(n: int = 3, *, logprobs=None, advantages=None, **inputs) -> Datum:
    return _datum(
        n,
        logprobs=[-0.5] * n if logprobs is None else logprobs,
        advantages=[1.0] * n if advantages is None else advantages,
        **inputs,
    )


@pytest.mark.parametrize(
    ("bad", "field", "required"),
    [
        # 1e39 is finite in float64, infinite in float32
        (_datum(weights=[1.0, 1e39, 1.0]), W, CE),
        # a custom loss's gradient (-dC/dlogprob, sent as weights) that is NaN or inf
        (_datum(weights=[0.5, math.nan, 0.5]), W, CE),
        (_datum(weights=[math.inf, 1, 1]), W, CE),
        # each weight fits in float32, their sum does not
        (_datum(weights=[3e38, 3e38, 0.0]), W, CE),
        # old logprobs of −1000: the importance ratio exp(lp − (−1000)) overflows
        (_rl(logprobs=[-0.1, -1000.0, -0.2]), "data[1].loss_fn_inputs.logprobs", RL),
        (_rl(logprobs=[-0.1, -1e39, -0.2]), "data[1].loss_fn_inputs.logprobs", RL),
        (_rl(advantages=[1.0, math.inf, 1.0]), "data[1].loss_fn_inputs.advantages", RL),
        (_rl(advantages=[1.0, -1e39, 1.0]), "data[1].loss_fn_inputs.advantages", RL),
        (_rl(advantages=[1.0, math.nan, 1.0]), "data[1].loss_fn_inputs.advantages", RL),
    ],
)
def test_non_finite_float_input_is_refused_naming_datum_and_field(bad, field, required):
    good = _rl() if required == RL else _datum()
    with pytest.raises(InvalidBatchError) as info:
        batch_from_datums([good, bad], vocab_size=V, required_inputs=required)
    assert info.value.field == field
    assert "position" in info.value.message or "sum" in info.value.message


def test_float32_edge_values_are_accepted_and_stay_finite():
    top = float(np.finfo(np.float32).max)
    b = batch_from_datums(
        [
            _rl(logprobs=[-1.0, -2.0, -3.0], weights=[top / 4, 1.0, 0.0]),
            _rl(logprobs=[MIN_SAMPLING_LOGPROB, 0.0, -3.0], advantages=[-top, top, 0.0]),
        ],
        vocab_size=V,
    )
    assert bool(b.weights.isfinite().all()) and bool(b.extras["advantages"].isfinite().all())
    # the lowest accepted logprob keeps the importance ratio finite for any current logprob ≤ 0
    ratio = torch.exp(torch.zeros(()) - b.extras["logprobs"][1, 0])
    assert bool(ratio.isfinite())


def test_nan_in_batch_data_labels_is_refused():
    with pytest.raises(InvalidBatchError) as info:
        batch_from_arrays(
            input_ids=[[1, 2, 3], [1, 2, 3]], labels=[[2, 3, 4], [2, math.nan, 4]], vocab_size=V
        )
    assert info.value.field == "labels[1]"


def test_a_hand_built_token_batch_is_checked_too():
    good = batch_from_datums([_datum(), _datum()], vocab_size=V)
    check_token_batch(good)
    weights = good.weights.clone()
    weights[1, 2] = math.inf
    bad = TokenBatch(
        input_ids=good.input_ids,
        attention_mask=good.attention_mask,
        targets=good.targets,
        weights=weights,
        lengths=good.lengths,
        extras={},
    )
    with pytest.raises(InvalidBatchError) as info:
        check_token_batch(bad)
    assert info.value.field == "weights[1]"
