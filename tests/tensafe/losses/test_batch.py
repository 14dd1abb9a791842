"""Batch validation: both input forms, and every bad input names its field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tensafe.errors import InvalidBatchError
from tensafe.losses import BatchLimits, Datum, batch_from_arrays, batch_from_datums

V = 50


def _datum(tokens, targets=None, **inputs):
    targets = [*tokens[1:], 0] if targets is None else targets
    return Datum(tokens=tokens, loss_fn_inputs={"target_tokens": targets, **inputs})


def test_datums_are_right_padded_with_zero_weight():
    b = batch_from_datums([_datum([1, 2, 3]), _datum([4, 5], weights=[0.5, 1.0])], vocab_size=V)
    assert b.input_ids.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b.weights.tolist() == [[1.0, 1.0, 1.0], [0.5, 1.0, 0.0]]
    assert b.lengths == (3, 2) and b.num_tokens == 5


def test_batch_data_labels_are_aligned_targets_as_in_the_training_guide():
    b = batch_from_arrays(
        input_ids=[[1, 2, 3, 4], [5, 6, 7, 8]],
        attention_mask=[[1, 1, 1, 1], [1, 1, 1, 1]],
        labels=[[2, 3, 4, -100], [6, 7, 8, -100]],
        vocab_size=V,
    )
    assert b.targets[0, :3].tolist() == [2, 3, 4]
    assert b.weights.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]


def test_batch_data_without_labels_predicts_next_token():
    b = batch_from_arrays(
        input_ids=np.array([[1, 2, 3, 0]]), attention_mask=[[1, 1, 1, 0]], vocab_size=V
    )
    assert b.targets.tolist() == [[2, 3, 0, 0]]
    assert b.weights.tolist() == [[1, 1, 0, 0]]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_ids": []}, "input_ids"),
        ({"input_ids": [[1, 2], [1]]}, "input_ids[1]"),
        ({"input_ids": [[1, V]]}, "input_ids[0]"),
        ({"input_ids": [[1, -1]]}, "input_ids[0]"),
        ({"input_ids": [[1, 2]], "attention_mask": [[1, 1], [1, 1]]}, "attention_mask"),
        ({"input_ids": [[1, 2]], "attention_mask": [[0, 1]]}, "attention_mask[0]"),
        ({"input_ids": [[1, 2]], "attention_mask": [[1, 2]]}, "attention_mask[0]"),
        ({"input_ids": [[1, 2]], "labels": [[1]]}, "labels[0]"),
        ({"input_ids": [[1, 2]], "labels": [[1, V + 3]]}, "labels[0]"),
        ({"input_ids": [["a", 2]]}, "input_ids[0]"),
        ({"input_ids": [[1.5, 2]]}, "input_ids[0]"),
    ],
)
def test_bad_batch_data_names_the_field(kwargs, field):
    with pytest.raises(InvalidBatchError) as exc:
        batch_from_arrays(vocab_size=V, **kwargs)
    assert exc.value.field == field
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "data"),
        ([_datum([])], "data[0].model_input"),
        ([_datum([1, 2], targets=[1])], "data[0].loss_fn_inputs.target_tokens"),
        ([_datum([1, 2]), _datum([1, V])], "data[1].model_input"),
        ([_datum([1, 2], targets=[1, 99])], "data[0].loss_fn_inputs.target_tokens"),
        ([_datum([1, 2], weights=[1.0, -1.0])], "data[0].loss_fn_inputs.weights"),
        ([_datum([1, 2], weights=[1.0, math.nan])], "data[0].loss_fn_inputs.weights"),
        ([_datum([1, 2], weights=[1.0])], "data[0].loss_fn_inputs.weights"),
        ([Datum(tokens=[1], loss_fn_inputs={})], "data[0].loss_fn_inputs.target_tokens"),
        ([_datum([1], bogus=[1.0])], "data[0].loss_fn_inputs"),
        ([_datum([1], advantages=[1.0]), _datum([2])], "data[1].loss_fn_inputs.advantages"),
    ],
)
def test_bad_datums_name_the_field(data, field):
    with pytest.raises(InvalidBatchError) as exc:
        batch_from_datums(data, vocab_size=V)
    assert exc.value.field == field


def test_limits_are_enforced():
    with pytest.raises(InvalidBatchError, match="limit is 2"):
        batch_from_datums([_datum([1])] * 3, vocab_size=V, limits=BatchLimits(max_batch_size=2))
    with pytest.raises(InvalidBatchError, match="limit is 3"):
        batch_from_arrays(input_ids=[[1, 2, 3, 4]], vocab_size=V, limits=BatchLimits(max_seq_len=3))


def test_tensors_are_accepted():
    b = batch_from_arrays(input_ids=torch.tensor([[3, 4]]), vocab_size=V)
    assert b.input_ids.dtype == torch.long
