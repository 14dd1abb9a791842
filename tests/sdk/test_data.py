"""tg_tinker.data: the Poisson batch sampler (property tests) and the
prompt/completion helpers (known answers, and agreement of the two forms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tg_tinker import ValidationError
from tg_tinker.data import (
    IGNORE_INDEX,
    PoissonBatchSampler,
    batch_from_prompt_completions,
    datum_from_prompt_completion,
)

Z = 6.0  # tolerance in standard deviations: a false failure is ~1e-9 per check


def _sampler(n, q, seed, **kw):
    return PoissonBatchSampler(n, q, seed=seed, secure=False, **kw)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 400),
    q=st.floats(0.005, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_batches_are_sorted_unique_in_range_and_reproducible(n, q, seed):
    a = [b.tolist() for b in _sampler(n, q, seed, num_steps=5)]
    b = [b.tolist() for b in _sampler(n, q, seed, num_steps=5)]
    assert a == b
    for batch in a:
        assert batch == sorted(set(batch))
        assert all(0 <= i < n for i in batch)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(20, 300), q=st.floats(0.01, 0.9), seed=st.integers(0, 2**32 - 1))
def test_empirical_inclusion_rate_matches_q(n, q, seed):
    steps = 200
    sampler = _sampler(n, q, seed, num_steps=steps)
    total = sum(len(b) for b in sampler)
    trials = n * steps
    sd = math.sqrt(trials * q * (1 - q))
    assert abs(total - trials * q) <= Z * sd + 1


def test_each_index_is_included_independently_with_probability_q():
    n, q, steps = 40, 0.3, 5000
    sampler = _sampler(n, q, 123, num_steps=steps)
    hits = np.zeros((steps, n), dtype=bool)
    for t, batch in enumerate(sampler):
        hits[t, batch] = True
    # Every index at rate q.
    per_index = hits.sum(axis=0)
    sd = math.sqrt(steps * q * (1 - q))
    assert np.all(np.abs(per_index - steps * q) <= Z * sd)
    # Batch sizes vary like Binomial(n, q): fixed-size (shuffled) batches have variance 0.
    sizes = hits.sum(axis=1)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.15)
    # Pairs are included together at rate q² (independence), not more or less.
    both = (hits[:, 0] & hits[:, 1]).sum()
    sd_pair = math.sqrt(steps * q * q * (1 - q * q))
    assert abs(both - steps * q * q) <= Z * sd_pair


def test_empty_batches_happen_and_are_yielded():
    sizes = [len(b) for b in _sampler(10, 0.05, 1, num_steps=200)]
    assert 0 in sizes  # P(empty) = 0.95**10 ≈ 0.6


def test_secure_default_is_unpredictable_and_refuses_a_seed():
    a = PoissonBatchSampler(10_000, 0.5)
    b = PoissonBatchSampler(10_000, 0.5)
    assert a.secure and not np.array_equal(a.sample(), b.sample())
    with pytest.raises(ValidationError) as info:
        PoissonBatchSampler(100, 0.1, seed=3)
    assert info.value.field == "seed"


def test_length_and_expected_batch_size():
    s = PoissonBatchSampler(1000, 0.01)
    assert len(s) == 100 and len(list(s)) == 100
    assert s.expected_batch_size == pytest.approx(10.0)
    assert len(PoissonBatchSampler(1000, 0.01, num_steps=7)) == 7


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, 0.1), "dataset_size"),
        ((True, 0.1), "dataset_size"),
        ((10, 0.0), "sample_rate"),
        ((10, 1.5), "sample_rate"),
    ],
)
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ValidationError) as info:
        PoissonBatchSampler(*args)
    assert info.value.field == field


def test_datum_from_prompt_completion_known_answer():
    d = datum_from_prompt_completion([1, 2, 3], [4, 5])
    assert d.model_input.to_ints() == [1, 2, 3, 4]
    assert d.loss_fn_inputs["target_tokens"].data == [2, 3, 4, 5]
    assert d.loss_fn_inputs["weights"].data == [0.0, 0.0, 1.0, 1.0]


def test_batch_from_prompt_completions_known_answer():
    b = batch_from_prompt_completions([([1, 2, 3], [4, 5]), ([7], [8])], pad_token_id=0)
    assert b.input_ids == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0]]
    assert b.attention_mask == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.labels == [
        [IGNORE_INDEX, IGNORE_INDEX, 4, 5, IGNORE_INDEX],
        [8, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=8),
    st.lists(st.integers(0, 1000), min_size=1, max_size=8),
)
def test_both_forms_train_on_the_same_targets(prompt, completion):
    d = datum_from_prompt_completion(prompt, completion)
    b = batch_from_prompt_completions([(prompt, completion)])
    weights = d.loss_fn_inputs["weights"].data
    targets = d.loss_fn_inputs["target_tokens"].data
    datum_pairs = [(t, p) for p, (t, w) in enumerate(zip(targets, weights, strict=True)) if w]
    batch_pairs = [(lab, p) for p, lab in enumerate(b.labels[0]) if lab != IGNORE_INDEX]
    assert datum_pairs == batch_pairs
    assert [t for t, _ in datum_pairs] == completion


def test_empty_examples_give_an_empty_batch():
    assert batch_from_prompt_completions([]).input_ids == []


@pytest.mark.parametrize(
    ("prompt", "completion", "field"),
    [
        ([], [1], "example.prompt_tokens"),
        ([1], [], "example.completion_tokens"),
        ([[1, 2]], [1], "example.prompt_tokens"),
        ([1.5], [1], "example.prompt_tokens"),
    ],
)
def test_helpers_name_the_bad_field(prompt, completion, field):
    with pytest.raises(ValidationError) as info:
        datum_from_prompt_completion(prompt, completion)
    assert info.value.field == field
