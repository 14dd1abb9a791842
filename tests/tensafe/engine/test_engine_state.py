"""Engine state: bad input changes nothing, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from tensafe.engine import AdamParams, OptimizerConfig
from tensafe.errors import ConfigError, EngineStateError, InvalidBatchError
from tensafe.losses import Datum

from .conftest import make_engine, random_batch


def _snapshot(eng):
    return (
        [p.detach().clone() for p in eng.params],
        {id(k): v.clone() for k, v in eng._acc.items()},
        eng._acc_examples,
        eng.step,
        None if eng.dp is None else eng.dp.accountant.state_dict(),
    )


def _assert_unchanged(eng, snap):
    params, acc, n, step, accountant = snap
    for p, b in zip(eng.params, params, strict=True):
        assert torch.equal(p.detach(), b)
    assert {id(k): v for k, v in eng._acc.items()}.keys() == acc.keys()
    for k, v in eng._acc.items():
        assert torch.equal(v, acc[id(k)])
    assert eng._acc_examples == n and eng.step == step
    if accountant is not None:
        assert eng.dp.accountant.state_dict() == accountant


def _datum(tokens, targets, **extra):
    return Datum(tokens=tokens, loss_fn_inputs={"target_tokens": targets, **extra})


BAD_INPUTS = [
    ({"input_ids": [[1, 2, 3], [4, 5]]}, "input_ids[1]"),
    ({"input_ids": [[1, 2, 3]], "labels": [[2, 3]]}, "labels[0]"),
    ({"input_ids": [[1, 2, 10**6]]}, "input_ids[0]"),
    ({"input_ids": []}, "input_ids"),
    ({"input_ids": [[1, 2]], "bogus": [[1]]}, "bogus"),
    ([_datum([1, 2], [2, 3], weights=[1.0, -1.0])], "data[0].loss_fn_inputs.weights"),
    ([_datum([1, 2], [2, 3], weights=[1.0, math.nan])], "data[0].loss_fn_inputs.weights"),
    ([_datum([1, 2], [2])], "data[0].loss_fn_inputs.target_tokens"),
    ([], "data"),
]


@pytest.mark.parametrize(("batch", "field"), BAD_INPUTS)
@pytest.mark.parametrize("dp", [True, False])
def test_bad_input_names_the_field_and_changes_nothing(batch, field, dp):
    eng = make_engine(dp=dp, sigma=1.0)
    eng.forward_backward(random_batch(n=2, seq=4))  # something pending already
    snap = _snapshot(eng)
    with pytest.raises(InvalidBatchError) as exc:
        eng.forward_backward(batch)
    assert exc.value.field == field
    _assert_unchanged(eng, snap)


def test_unknown_loss_is_refused_without_state_change():
    eng = make_engine(dp=True, sigma=1.0)
    snap = _snapshot(eng)
    with pytest.raises(ConfigError) as exc:
        eng.forward_backward(random_batch(), loss_fn="hinge")
    assert exc.value.field == "loss_fn"
    _assert_unchanged(eng, snap)


def test_non_dp_step_without_gradients_is_refused():
    eng = make_engine(dp=False)
    with pytest.raises(EngineStateError, match="forward_backward first"):
        eng.optim_step()


def test_adam_params_apply_per_step():
    eng = make_engine(dp=True, sigma=1.0, optimizer=OptimizerConfig(name="adamw"))
    eng.forward_backward(random_batch(n=2, seq=4))
    res = eng.optim_step(AdamParams(learning_rate=3e-4, beta1=0.8, beta2=0.9, eps=1e-10))
    assert res.learning_rate == 3e-4
    group = eng.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-10
    with pytest.raises(ConfigError) as exc:
        AdamParams(beta1=1.5)
    assert exc.value.field == "adam_params.beta1"


def test_state_dict_round_trip_resumes_identically():
    a = make_engine(dp=True, sigma=1.0, optimizer=OptimizerConfig(name="adamw", learning_rate=1e-3))
    for s in range(2):
        a.forward_backward(random_batch(seed=s))
        a.optim_step()
    state = a.state_dict()
    b = make_engine(dp=True, sigma=1.0, optimizer=OptimizerConfig(name="adamw", learning_rate=1e-3))
    b.load_state_dict(state)
    assert b.step == 2 and b.dp.accountant.steps == 2
    assert b.epsilon() == pytest.approx(a.epsilon())
    ra = (a.forward_backward(random_batch(seed=5)), a.optim_step())
    rb = (b.forward_backward(random_batch(seed=5)), b.optim_step())
    assert ra[0].loss == pytest.approx(rb[0].loss, rel=1e-6)
    assert ra[1].dp_metrics.epsilon_spent == pytest.approx(rb[1].dp_metrics.epsilon_spent)
    for p, q in zip(a.params, b.params, strict=True):
        torch.testing.assert_close(p, q)


def test_state_dict_refuses_pending_gradients_and_foreign_state():
    a = make_engine(dp=True, sigma=1.0)
    a.forward_backward(random_batch())
    with pytest.raises(EngineStateError, match="pending"):
        a.state_dict()
    a.optim_step()
    full = make_engine(lora=False, dp=True, sigma=1.0)
    with pytest.raises(EngineStateError, match="do not match"):
        full.load_state_dict(a.state_dict())
    nodp = make_engine(dp=False)
    with pytest.raises(EngineStateError, match="DP mode"):
        nodp.load_state_dict(a.state_dict())


def test_secure_mode_noise_is_not_reproducible_from_the_seed():
    def run():
        e = make_engine(dp=True, sigma=1.0, secure_mode=True, seed=1)
        e.optim_step()
        return torch.cat([p.detach().flatten() for p in e.params])

    assert not torch.equal(run(), run())


def test_forward_reports_seed_shaped_outputs_without_changing_state():
    eng = make_engine(dp=True, sigma=1.0)
    snap = _snapshot(eng)
    out = eng.forward([_datum([1, 2, 3, 4, 5], [2, 3, 4, 5, 6])])
    _assert_unchanged(eng, snap)
    assert out.loss_fn_output_type == "cross_entropy"
    lp = out.loss_fn_outputs[0].logprobs
    assert lp.shape == (5,)
    assert out.loss_fn_outputs[0].elementwise_loss.tolist() == pytest.approx((-lp).tolist())
    assert out.metrics["loss:mean"] == pytest.approx(float((-lp).mean()))
    assert out.metrics["num_examples:sum"] == 1.0 and out.metrics["step:max"] == 0.0
    assert out.tokens_processed == 5 and out.grad_norm is None


def test_info_reports_model_and_lora():
    info = make_engine(dp=True, sigma=1.0).info()
    assert info.is_lora and info.lora_rank == 4 and info.dp_enabled
    assert 0 < info.trainable_params < info.total_params
    assert info.vocab_size == 49152


def test_noise_is_never_seeded_from_the_public_run_seed():
    # Without an explicit (test-only) noise_seed, two engines with the same run seed
    # must draw different noise: a predictable noise stream voids DP.
    from tensafe.engine import TrainingEngine
    from tensafe.models import LoRAConfig, build_tiny_llama
    from tensafe.privacy import DPConfig

    def run():
        e = TrainingEngine(
            model=build_tiny_llama(seed=0),
            lora_config=LoRAConfig(rank=4),
            dp_config=DPConfig(noise_multiplier=1.0, dataset_size=1000, expected_batch_size=4),
            seed=0,
        )
        e.optim_step()
        return torch.cat([p.detach().flatten() for p in e.params])

    assert not torch.equal(run(), run())


def test_engine_noise_is_a_secret_keystream_unless_a_test_seed_is_given():
    from tensafe.engine import TrainingEngine
    from tensafe.models import LoRAConfig, build_tiny_llama
    from tensafe.privacy import DPConfig

    production = TrainingEngine(
        model=build_tiny_llama(seed=0),
        lora_config=LoRAConfig(rank=4),
        dp_config=DPConfig(noise_multiplier=1.0, dataset_size=1000, expected_batch_size=4),
        seed=1234,  # the client's run seed: LoRA initialisation only
    )
    production.optim_step()
    assert not production.dp.noise.deterministic
    assert production.state_dict()["noise"] == {}  # the key never leaves the engine
    seeded = make_engine(dp=True, sigma=1.0, seed=3)  # noise_seed: test-only
    assert seeded.dp.noise.deterministic


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "adafactor"])
def test_every_optimizer_takes_a_dp_step(name):
    eng = make_engine(dp=True, sigma=1.0, optimizer=OptimizerConfig(name=name, learning_rate=1e-3))
    before = [p.detach().clone() for p in eng.params]
    eng.forward_backward(random_batch(n=2, seq=4))
    res = eng.optim_step()
    assert res.step == 1 and res.dp_metrics is not None
    assert all(not torch.equal(p.detach(), b) for p, b in zip(eng.params, before, strict=True))


def test_unknown_optimizer_names_the_field():
    with pytest.raises(ConfigError) as exc:
        OptimizerConfig(name="lion")
    assert exc.value.field == "optimizer.name"
