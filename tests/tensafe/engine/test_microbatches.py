"""Micro-batching (``microbatch_examples``) returns what one pass over the batch returns.

Each case runs the same batch through two engines built alike — one pass, and at most
``m`` examples at a time — and compares the accumulated sums (tight float tolerance),
every per-example output, the loss, ``grad_norm`` and every metric. Clipping is active
on part of the examples, so clipping a micro-batch's *sum* instead of each example would
be caught (shown directly below); a hook on the embeddings proves the passes really are
micro-batches, each padded only to its own longest example.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tensafe.engine import ForwardBackwardResult, TrainingEngine
from tensafe.engine.microbatches import plan_micro_batches
from tensafe.errors import ConfigError, NonFiniteUpdateError
from tensafe.losses import Datum
from tensafe.models import build_tiny_llama
from tensafe.privacy import DPConfig

from .conftest import make_engine
from .test_dp_step import _randomise_lora_b

VOCAB = 49152
LENGTHS = [12, 9, 12, 5, 4, 6, 3]  # m=3 → rows (0,1,2) width 12, (3,4,5) width 6, (6,) width 3
CHUNK = 16  # loss_chunk_tokens: the whole batch spans many chunks, the last micro-batch one


def _batch(lengths=LENGTHS, *, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(0, VOCAB, (len(lengths), width + 1), generator=g)
    input_ids, labels = ids[:, :-1].clone(), ids[:, 1:].clone()
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        input_ids[i, n:] = 0
        labels[i, n:] = -100
    labels[1, :3] = -100  # some ignored targets: weights differ per example
    return {
        "input_ids": input_ids.tolist(),
        "attention_mask": mask.tolist(),
        "labels": labels.tolist(),
    }


def _pair(*, m: int, **kw) -> tuple[TrainingEngine, TrainingEngine]:
    one = make_engine(loss_chunk_tokens=CHUNK, **kw)
    micro = make_engine(loss_chunk_tokens=CHUNK, microbatch_examples=m, **kw)
    if kw.get("lora", True):
        _randomise_lora_b(one)
        _randomise_lora_b(micro)
    return one, micro


def _acc(engine: TrainingEngine) -> dict[str, torch.Tensor]:
    return {engine._param_names[id(p)]: t.clone() for p, t in engine._acc.items()}


def _clear(engine: TrainingEngine) -> None:
    engine._acc.clear()
    engine._acc_examples = 0
    engine._acc_losses.clear()


def _assert_same_sums(got: dict, want: dict, *, rtol: float) -> None:
    assert got.keys() == want.keys() and got
    for name, w in want.items():
        scale = max(float(w.abs().max()), 1e-30)
        assert float((got[name] - w).abs().max()) / scale <= rtol, name


def _assert_same_result(got: ForwardBackwardResult, want: ForwardBackwardResult) -> None:
    assert got.tokens_processed == want.tokens_processed
    assert got.loss_fn_output_type == want.loss_fn_output_type
    assert got.loss == pytest.approx(want.loss, rel=1e-5)
    if want.grad_norm is None:
        assert got.grad_norm is None
    else:
        assert got.grad_norm == pytest.approx(want.grad_norm, rel=1e-5)
    assert got.metrics.keys() == want.metrics.keys()
    for key, value in want.metrics.items():
        assert got.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    assert len(got.loss_fn_outputs) == len(want.loss_fn_outputs)
    for g, w in zip(got.loss_fn_outputs, want.loss_fn_outputs, strict=True):
        assert g.logprobs.shape == w.logprobs.shape
        np.testing.assert_allclose(g.logprobs, w.logprobs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g.elementwise_loss, w.elementwise_loss, rtol=1e-5, atol=1e-5)


def _pass_shapes(engine: TrainingEngine) -> list[tuple[int, int]]:
    shapes: list[tuple[int, int]] = []
    engine.model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: shapes.append(tuple(args[0].shape))
    )
    return shapes


def _clip_between(engine: TrainingEngine, batch: dict, **kw) -> float:
    """A clip norm that some examples (units) exceed and some do not: their mean norm."""
    probe = engine.forward_backward(batch, **kw).metrics["dp/per_example_grad_norm:mean"]
    _clear(engine)
    return probe


@pytest.mark.parametrize(
    ("lora", "dp", "dtype", "rtol"),
    [
        (True, True, torch.float32, 1e-5),  # DP LoRA
        (False, True, torch.float64, 1e-9),  # DP full fine-tuning (the tied head repeats)
        (True, False, torch.float32, 1e-5),  # plain LoRA
        (False, False, torch.float64, 1e-9),  # plain full fine-tuning
    ],
)
def test_micro_batched_forward_backward_equals_one_pass(lora, dp, dtype, rtol) -> None:
    batch = _batch()
    C = 1.0
    if dp:
        C = _clip_between(make_engine(lora=lora, dtype=dtype, max_grad_norm=1e9), batch)
    one, micro = _pair(m=3, lora=lora, dp=dp, dtype=dtype, max_grad_norm=C)
    shapes = _pass_shapes(micro)
    want = one.forward_backward(batch)
    got = micro.forward_backward(batch)
    assert shapes == [(3, 12), (3, 6), (1, 3)]  # micro-batches, each padded to its own width
    _assert_same_result(got, want)
    _assert_same_sums(_acc(micro), _acc(one), rtol=rtol)
    assert micro._acc_examples == one._acc_examples == len(LENGTHS)
    if dp:
        assert 0 < want.metrics["dp/clip_fraction"] < 1  # clipping bites on some examples
        # Clipping each micro-batch's sum (a micro-batch as one unit) is far off:
        # the comparison above would catch it.
        wrong = make_engine(lora=lora, dtype=dtype, max_grad_norm=C, loss_chunk_tokens=CHUNK)
        if lora:
            _randomise_lora_b(wrong)
        wrong.forward_backward(batch, groups=[0, 0, 0, 1, 1, 1, 2])
        with pytest.raises(AssertionError):
            _assert_same_sums(_acc(wrong), _acc(one), rtol=1e-3)
    # the accumulated batch steps alike
    assert micro.optim_step().examples_in_batch == one.optim_step().examples_in_batch
    for a, b in zip(micro.params, one.params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_micro_batched_forward_equals_one_pass() -> None:
    one, micro = _pair(m=2)
    shapes = _pass_shapes(micro)
    batch = _batch()
    _assert_same_result(micro.forward(batch), one.forward(batch))
    assert [s[0] for s in shapes] == [2, 2, 2, 1]
    assert micro._acc_examples == 0 and not micro._acc


def test_groups_stay_whole_and_match_one_pass() -> None:
    batch = _batch()
    groups = [5, 1, 5, 2, 1, 3, 2]  # units {0,2} {1,4} {3,6} {5}: a plain cut would split them
    C = _clip_between(make_engine(max_grad_norm=1e9), batch, groups=groups)
    one, micro = _pair(m=3, max_grad_norm=C)
    shapes = _pass_shapes(micro)
    want = one.forward_backward(batch, groups=groups)
    got = micro.forward_backward(batch, groups=groups)
    assert [s[0] for s in shapes] == [2, 2, 3]  # (0,2) (1,4) (3,5,6)
    assert 0 < want.metrics["dp/clip_fraction"] < 1
    _assert_same_result(got, want)
    _assert_same_sums(_acc(micro), _acc(one), rtol=1e-5)
    # per example instead of per unit is a different sum: grouping really matters here
    _clear(one)
    one.forward_backward(batch)
    with pytest.raises(AssertionError):
        _assert_same_sums(_acc(micro), _acc(one), rtol=1e-3)


def test_a_unit_larger_than_the_limit_is_its_own_micro_batch() -> None:
    assert plan_micro_batches(6, max_examples=2, groups=[1, 1, 2, 1, 3, 1]) == (
        (0, 1, 3, 5),
        (2, 4),
    )
    assert plan_micro_batches(5, max_examples=2, groups=None) == ((0, 1), (2, 3), (4,))
    assert plan_micro_batches(3, max_examples=None, groups=None) == ((0, 1, 2),)
    batch = _batch([8, 7, 6, 8, 5, 4])
    groups = [1, 1, 2, 1, 3, 1]
    one, micro = _pair(m=2, max_grad_norm=0.05)
    shapes = _pass_shapes(micro)
    want = one.forward_backward(batch, groups=groups)
    got = micro.forward_backward(batch, groups=groups)
    assert shapes == [(4, 8), (2, 6)]
    _assert_same_result(got, want)
    _assert_same_sums(_acc(micro), _acc(one), rtol=1e-5)


@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=30),
    limit=st.integers(1, 8),
    grouped=st.booleans(),
)
def test_a_plan_covers_every_row_once_and_never_splits_a_unit(labels, limit, grouped) -> None:
    groups = labels if grouped else None
    plans = plan_micro_batches(len(labels), max_examples=limit, groups=groups)
    rows = [r for plan in plans for r in plan]
    assert sorted(rows) == list(range(len(labels)))
    assert all(list(plan) == sorted(plan) for plan in plans)
    units = {}
    for row, label in enumerate(groups if grouped else range(len(labels))):
        units.setdefault(label, []).append(row)
    for plan in plans:
        inside = [u for u in units.values() if set(u) & set(plan)]
        assert all(set(u) <= set(plan) for u in inside)  # a unit is never split
        assert len(plan) <= limit or len(inside) == 1  # over the limit: one big unit alone


def _datums(n: int, *, bad: int | None, seed: int = 0) -> list[Datum]:
    """RL datums; ``bad``'s loss overflows (ratio ≈ 1e30 × advantage 1e30): its
    gradient is NaN although every input is within float32."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = 8 - i % 3
        tokens = rng.integers(0, VOCAB, size=length).tolist()
        lp, adv = (-80.0, 1e30) if i == bad else (-11.0, 0.5)
        inputs = {
            "target_tokens": [*tokens[1:], 0],
            "logprobs": [lp] * length,
            "advantages": [adv] * length,
        }
        out.append(Datum(tokens=tokens, loss_fn_inputs=inputs))
    return out


def test_a_non_finite_example_is_left_out_alike() -> None:
    one, micro = _pair(m=2, max_grad_norm=0.01)
    data = _datums(5, bad=3)
    want = one.forward_backward(data, loss_fn="importance_sampling")
    got = micro.forward_backward(data, loss_fn="importance_sampling")
    assert want.metrics["dp/nonfinite_examples:sum"] == 1
    assert math.isfinite(want.metrics["dp/per_example_grad_norm:mean"])
    assert got.metrics["dp/nonfinite_examples:sum"] == 1
    assert got.metrics["dp/clip_fraction"] == pytest.approx(want.metrics["dp/clip_fraction"])
    assert got.metrics["dp/per_example_grad_norm:mean"] == pytest.approx(
        want.metrics["dp/per_example_grad_norm:mean"], rel=1e-5
    )
    assert got.grad_norm == pytest.approx(want.grad_norm, rel=1e-5)
    _assert_same_sums(_acc(micro), _acc(one), rtol=1e-5)


def test_a_refused_batch_leaves_nothing_accumulated() -> None:
    # Without DP one overflowing example reaches the sum; it sits in the last
    # micro-batch, after two micro-batches succeeded, and still nothing is kept.
    eng = make_engine(dp=False, microbatch_examples=2)
    eng.forward_backward(_datums(3, bad=None, seed=1), loss_fn="importance_sampling")
    before, examples = _acc(eng), eng._acc_examples
    with pytest.raises(NonFiniteUpdateError, match="nothing was accumulated"):
        eng.forward_backward(_datums(5, bad=4, seed=2), loss_fn="importance_sampling")
    assert eng._acc_examples == examples and len(eng._acc_losses) == 1
    after = _acc(eng)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_a_bad_microbatch_size_is_refused_naming_the_field(bad) -> None:
    with pytest.raises(ConfigError) as info:
        TrainingEngine(
            model=build_tiny_llama(),
            lora_config=None,
            dp_config=DPConfig(enabled=False),
            microbatch_examples=bad,
        )
    assert info.value.field == "microbatch_examples"
