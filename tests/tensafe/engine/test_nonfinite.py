"""One record cannot turn the release into NaN.

Every unsafe float input is refused naming the datum and field before any state
changes; an example whose gradient still overflows contributes nothing; a
non-finite update is refused with the run's state unchanged and no privacy step
accounted; and NaN weights are never released.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from tensafe.engine import OptimizerConfig, TrainingEngine
from tensafe.errors import InvalidBatchError, NonFiniteUpdateError, PrivacyError
from tensafe.losses import Datum

from .conftest import make_engine

VOCAB = 49152


def _datums(n: int = 3, *, seed: int = 0, length: int = 8, rl: bool = False, **override):
    """``n`` datums; ``override`` replaces loss inputs of datum 1 (the one under test)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tokens = rng.integers(0, VOCAB, size=length).tolist()
        inputs: dict[str, list] = {"target_tokens": [*tokens[1:], 0]}
        if rl:
            inputs |= {"logprobs": [-11.0] * length, "advantages": [0.5] * length}
        if i == 1:
            inputs |= {k: list(v) for k, v in override.items()}
        out.append(Datum(tokens=tokens, loss_fn_inputs=inputs))
    return out


def _state(engine: TrainingEngine) -> dict:
    return {
        "weights": [p.detach().clone() for p in engine.params],
        "optimizer": copy.deepcopy(engine.optimizer.state_dict()),
        "accountant": None if engine.dp is None else engine.dp.accountant.state_dict(),
        "step": engine.step,
        "acc": {engine._param_names[id(p)]: t.clone() for p, t in engine._acc.items()},
        "acc_examples": engine._acc_examples,
    }


def _assert_same_state(before: dict, after: dict) -> None:
    assert after["step"] == before["step"] and after["acc_examples"] == before["acc_examples"]
    assert after["accountant"] == before["accountant"]
    assert all(torch.equal(a, b) for a, b in zip(before["weights"], after["weights"], strict=True))
    assert before["acc"].keys() == after["acc"].keys()
    assert all(torch.equal(before["acc"][k], after["acc"][k]) for k in before["acc"])
    assert str(before["optimizer"]) == str(after["optimizer"])


def _finite(engine: TrainingEngine) -> bool:
    return all(bool(p.isfinite().all()) for p in engine.params)


W = 8  # tokens per datum


@pytest.mark.parametrize(
    ("loss_fn", "override", "field"),
    [
        ("cross_entropy", {"weights": [1.0] * 3 + [1e39] + [1.0] * 4}, "weights"),
        # a custom loss's gradient, sent as cross_entropy weights (-dC/dlogprob)
        ("cross_entropy", {"weights": [0.5] * 7 + [math.nan]}, "weights"),
        ("importance_sampling", {"logprobs": [-1000.0] * W}, "logprobs"),
        ("ppo", {"logprobs": [-1.0] * 4 + [-1000.0] * 4}, "logprobs"),
        ("importance_sampling", {"advantages": [math.inf] + [1.0] * 7}, "advantages"),
        ("ppo", {"advantages": [1.0] * 7 + [-math.inf]}, "advantages"),
    ],
)
def test_unsafe_input_is_refused_before_any_change_and_never_accounted(loss_fn, override, field):
    eng = make_engine(dp=True, sigma=1.0, optimizer=OptimizerConfig(learning_rate=1e-3))
    rl = loss_fn != "cross_entropy"
    eng.forward_backward(_datums(rl=rl, seed=1), loss_fn=loss_fn)
    eng.optim_step()  # optimizer and accountant now have state to keep
    eng.forward_backward(_datums(rl=rl, seed=2), loss_fn=loss_fn)  # and gradients are pending
    before = _state(eng)
    with pytest.raises(InvalidBatchError) as info:
        eng.forward_backward(_datums(rl=rl, seed=3, **override), loss_fn=loss_fn)
    assert info.value.field == f"data[1].loss_fn_inputs.{field}"
    _assert_same_state(before, _state(eng))
    clean = eng.forward_backward(_datums(rl=rl, seed=4), loss_fn=loss_fn)  # still works
    assert math.isfinite(clean.loss) and clean.metrics["dp/nonfinite_examples:sum"] == 0
    step = eng.optim_step()
    assert step.examples_in_batch == 6 and step.dp_metrics.steps == 2 and _finite(eng)


@pytest.mark.parametrize(("loss_fn", "advantage"), [("importance_sampling", 1e30), ("ppo", -1e30)])
def test_overflowing_example_contributes_nothing_and_the_step_is_sound(loss_fn, advantage):
    # Inputs within float32 whose loss still overflows: ratio exp(lp + 80) ≈ 1e30 times
    # an advantage of 1e30. That example's gradient is NaN; it must add exactly zero.
    bad = {"logprobs": [-80.0] * W, "advantages": [advantage] * W}
    eng = make_engine(dp=True, sigma=1.0, max_grad_norm=0.01, batch=3)
    ref = make_engine(dp=True, sigma=1.0, max_grad_norm=0.01, batch=3)
    fb = eng.forward_backward(_datums(rl=True, **bad), loss_fn=loss_fn)
    assert fb.metrics["dp/nonfinite_examples:sum"] == 1
    assert math.isfinite(fb.metrics["dp/per_example_grad_norm:mean"])
    ref.forward_backward(
        [d for i, d in enumerate(_datums(rl=True, **bad)) if i != 1], loss_fn=loss_fn
    )
    got, want = _state(eng)["acc"], _state(ref)["acc"]
    assert got.keys() == want.keys()
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, want[name], rtol=1e-5, atol=1e-9)
    step = eng.optim_step()
    assert _finite(eng) and step.dp_metrics.steps == 1 and step.examples_in_batch == 3


def test_without_dp_an_overflowing_batch_is_refused_unaccumulated():
    eng = make_engine(dp=False)
    eng.forward_backward(_datums(rl=True, seed=5), loss_fn="importance_sampling")
    before = _state(eng)
    bad = {"logprobs": [-80.0] * W, "advantages": [1e30] * W}
    with pytest.raises(NonFiniteUpdateError, match="nothing was accumulated"):
        eng.forward_backward(_datums(rl=True, **bad), loss_fn="importance_sampling")
    _assert_same_state(before, _state(eng))
    eng.optim_step()
    assert _finite(eng)


def _float16_engine(*, max_grad_norm: float, optimizer: OptimizerConfig) -> TrainingEngine:
    """Full fine-tuning in float16 (σ = 1) with two examples accumulated."""
    eng = make_engine(
        lora=False,
        dp=True,
        sigma=1.0,
        max_grad_norm=max_grad_norm,
        dtype=torch.float16,
        optimizer=optimizer,
    )
    eng.forward_backward(_datums(n=2))
    return eng


def test_non_finite_noisy_update_is_refused_with_state_unchanged_and_not_accounted():
    # float16 weights: noise of std σC/(q·N) = 2.5e5 overflows float16 (max 65504)
    eng = _float16_engine(max_grad_norm=1e6, optimizer=OptimizerConfig(learning_rate=1e-3))
    before = _state(eng)
    with pytest.raises(NonFiniteUpdateError, match="no privacy step was accounted"):
        eng.optim_step()
    after = _state(eng)
    _assert_same_state(before, after)
    assert after["accountant"] == before["accountant"] and eng.epsilon() == 0.0
    assert after["acc_examples"] == 2  # kept: the client may retry or discard
    assert _finite(eng)


def test_weights_overflowing_in_the_optimizer_are_reported_not_accounted():
    # the noisy gradient (std σC/(q·N) = 0.25) is finite in float16, but a learning
    # rate of 6e4 pushes the largest of ~3M coordinates past float16's 65504
    eng = _float16_engine(
        max_grad_norm=1.0, optimizer=OptimizerConfig(name="sgd", learning_rate=6e4)
    )
    with pytest.raises(PrivacyError, match="no longer finite") as info:
        eng.optim_step()
    assert not isinstance(info.value, NonFiniteUpdateError)  # the engine did change
    assert eng.dp is not None and eng.dp.accountant.steps == 0 and eng.step == 0
