"""Adapter switching on a training run's model, and training state left untouched."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import PeftModel

from tensafe.engine import OptimizerConfig, TrainingEngine
from tensafe.errors import ConfigError
from tensafe.generation import BASE_MODEL, Sampler, SampleRequest, SamplerLimits, SamplingParams
from tensafe.models import build_tiny_llama, model_lock
from tensafe.privacy import DPConfig

from .conftest import lora_payload, make_lora_engine, train_steps, training_batch

PROMPT = [1, 4093, 198, 19556, 28, 905, 17, 2, 42, 7]


def _lp(sampler: Sampler, adapter: str | None = None) -> torch.Tensor:
    return torch.tensor(sampler.compute_logprobs(prompt=PROMPT, adapter=adapter).logprobs[1:])


def _greedy(adapter: str | None) -> SampleRequest:
    return SampleRequest(
        prompt=PROMPT, adapter=adapter, params=SamplingParams(max_tokens=6, temperature=0, stop=[])
    )


def test_run_checkpoint_and_base_weights_are_served_from_one_model():
    engine = make_lora_engine()
    sampler = Sampler.for_engine(engine)
    train_steps(engine, 2)
    tensors, config = lora_payload(engine)
    at_checkpoint = _lp(sampler)
    train_steps(engine, 2, seed=10)
    current = _lp(sampler)
    run_tensors, run_config = lora_payload(engine)
    params_before = sum(p.numel() for p in engine.model.parameters())
    embed_ptr = engine.model.get_input_embeddings().weight.data_ptr()

    sampler.load_adapter(name="ckpt", tensors=tensors, lora_config=config)

    # No second copy of the base model: only the adapter's tensors were added.
    added = sum(p.numel() for p in engine.model.parameters()) - params_before
    assert added == sum(t.numel() for t in tensors.values())
    assert engine.model.get_input_embeddings().weight.data_ptr() == embed_ptr
    assert sampler.adapters == ("ckpt",)

    checkpoint = _lp(sampler, "ckpt")
    base = _lp(sampler, BASE_MODEL)
    fresh = Sampler(model=build_tiny_llama(seed=0).model, tokenizer=engine.tokenizer)
    torch.testing.assert_close(checkpoint, at_checkpoint, atol=1e-6, rtol=0)
    torch.testing.assert_close(base, _lp(fresh), atol=1e-6, rtol=0)
    torch.testing.assert_close(_lp(sampler), current, atol=0, rtol=0)
    for a, b in [(current, checkpoint), (current, base), (checkpoint, base)]:
        assert (a - b).abs().max() > 1e-3

    # Mixed adapters in one sample_batch: each request as if alone.
    mixed = sampler.sample_batch([_greedy(None), _greedy("ckpt"), _greedy(BASE_MODEL)])
    alone = [sampler.sample(_greedy(a)) for a in (None, "ckpt", BASE_MODEL)]
    assert [r.sequences[0].tokens for r in mixed] == [r.sequences[0].tokens for r in alone]
    firsts = {r.sequences[0].model_logprobs[0] for r in mixed}
    assert len(firsts) == 3

    # The run's own sampler checkpoint is unaffected by the extra adapter.
    after_tensors, after_config = lora_payload(engine)
    assert after_config == run_config and after_tensors.keys() == run_tensors.keys()
    assert all(torch.equal(after_tensors[k], run_tensors[k]) for k in run_tensors)

    sampler.remove_adapter("ckpt")
    assert sampler.adapters == ()
    assert sum(p.numel() for p in engine.model.parameters()) == params_before
    with pytest.raises(ConfigError) as exc:
        sampler.compute_logprobs(prompt=PROMPT, adapter="ckpt")
    assert exc.value.field == "adapter"


def _training_snapshot(engine: TrainingEngine) -> dict:
    return {
        "grads": {n: p.requires_grad for n, p in engine.model.named_parameters()},
        "modes": {n: m.training for n, m in engine.model.named_modules()},
        "active": engine.model.active_adapter,
        "acc": {id(p): t.clone() for p, t in engine._acc.items()},
        "acc_examples": engine._acc_examples,
        "noise": engine.dp.noise.state_dict(),  # seed and draws made (test-only seed)
        "rng": torch.get_rng_state(),
        "optimizer": [id(p) for g in engine.optimizer.param_groups for p in g["params"]],
    }


def _same_snapshot(a: dict, b: dict) -> None:
    """``b`` (later) equals ``a`` on everything ``a`` had; added adapters are frozen."""
    assert {n: b["grads"][n] for n in a["grads"]} == a["grads"]
    assert not any(flag for n, flag in b["grads"].items() if n not in a["grads"])
    assert {n: b["modes"][n] for n in a["modes"]} == a["modes"]
    assert a["active"] == b["active"]
    assert a["acc"].keys() == b["acc"].keys()
    assert all(torch.equal(a["acc"][k], b["acc"][k]) for k in a["acc"])
    assert a["acc_examples"] == b["acc_examples"]
    assert a["noise"] == b["noise"] and a["noise"]["calls"] >= 1
    assert torch.equal(a["rng"], b["rng"])
    assert a["optimizer"] == b["optimizer"]


def test_sampling_between_dp_steps_changes_no_training_result():
    """Two identical DP runs (fixed noise seed); one samples, loads and switches
    adapters while a logical batch is pending. Every later result is bit-identical."""
    with_sampling, without = make_lora_engine(seed=1), make_lora_engine(seed=1)
    for engine in (with_sampling, without):
        train_steps(engine, 1)
        engine.forward_backward(training_batch(seed=5))  # gradients pending
    tensors, config = lora_payload(with_sampling)

    sampler = Sampler.for_engine(with_sampling)
    before = _training_snapshot(with_sampling)
    sampler.load_adapter(name="ckpt", tensors=tensors, lora_config=config)
    for adapter in (None, "ckpt", BASE_MODEL):
        sampler.sample(
            SampleRequest(
                prompt=PROMPT,
                num_samples=2,
                adapter=adapter,
                params=SamplingParams(max_tokens=5, temperature=0.8, top_p=0.9),
            )
        )
        sampler.compute_logprobs(prompt=PROMPT, adapter=adapter, topk=2)
    _same_snapshot(before, _training_snapshot(with_sampling))

    results = []
    for engine in (with_sampling, without):
        step = engine.optim_step()
        fb = engine.forward_backward(training_batch(seed=6))
        step2 = engine.optim_step()
        results.append((step, fb, step2))
    (a1, fa, a2), (b1, fb_, b2) = results
    assert a1.dp_metrics == b1.dp_metrics and a2.dp_metrics == b2.dp_metrics
    assert fa.loss == fb_.loss and fa.grad_norm == fb_.grad_norm
    assert len(with_sampling.params) == len(without.params)
    for p, q in zip(with_sampling.params, without.params, strict=True):
        assert torch.equal(p, q)


def test_adapter_errors_leave_nothing_loaded():
    engine = make_lora_engine()
    train_steps(engine, 1)
    tensors, config = lora_payload(engine)
    sampler = Sampler.for_engine(engine)
    count = sum(p.numel() for p in engine.model.parameters())
    names = set(engine.model.peft_config)

    def refused(field: str, **kwargs) -> None:
        args = {"name": "x", "tensors": tensors, "lora_config": config} | kwargs
        with pytest.raises(ConfigError) as exc:
            sampler.load_adapter(**args)
        assert exc.value.field == field
        assert set(engine.model.peft_config) == names
        assert sum(p.numel() for p in engine.model.parameters()) == count

    first = next(iter(tensors))
    refused("name", name="default")
    refused("name", name="__base__")
    refused("name", name="a.b")
    refused("tensors", tensors={k: v for k, v in tensors.items() if k != first})
    refused("tensors", tensors=tensors | {"base_model.model.bogus.lora_A.weight": torch.ones(1)})
    refused("tensors", tensors=tensors | {first: torch.zeros(3, 3)})
    refused(
        "lora_config.base_model_name_or_path", lora_config=config | {"base_model_name_or_path": "x"}
    )
    refused("lora_config.peft_type", lora_config=config | {"peft_type": "IA3"})
    refused("lora_config", lora_config=config | {"no_such_key": 1})
    refused("lora_config", lora_config=config | {"target_modules": ["no_such_module"]})
    with pytest.raises(ConfigError) as exc:
        sampler.remove_adapter("x")
    assert exc.value.field == "name"
    training_still_works = engine.forward_backward(training_batch(seed=2))
    assert training_still_works.grad_norm is not None and training_still_works.grad_norm > 0


def test_adapter_limit():
    engine = make_lora_engine()
    tensors, config = lora_payload(engine)
    sampler = Sampler.for_engine(engine, limits=SamplerLimits(max_adapters=1))
    sampler.load_adapter(name="a", tensors=tensors, lora_config=config)
    with pytest.raises(ConfigError) as exc:
        sampler.load_adapter(name="b", tensors=tensors, lora_config=config)
    assert exc.value.field == "name"
    with pytest.raises(ConfigError) as exc:
        sampler.load_adapter(name="a", tensors=tensors, lora_config=config)
    assert exc.value.field == "name"


def test_full_fine_tuning_runs_have_no_adapters_or_base():
    engine = TrainingEngine(
        model=build_tiny_llama(),
        lora_config=None,
        dp_config=DPConfig(enabled=False),
        optimizer=OptimizerConfig(name="sgd", learning_rate=0.1),
    )
    sampler = Sampler.for_engine(engine)
    assert len(sampler.sample(_greedy(None)).sequences[0].tokens) == 6
    with pytest.raises(ConfigError) as exc:
        sampler.sample(_greedy(BASE_MODEL))
    assert exc.value.field == "adapter"
    lora_engine = make_lora_engine()
    tensors, config = lora_payload(lora_engine)
    with pytest.raises(ConfigError):
        sampler.load_adapter(name="a", tensors=tensors, lora_config=config)
    assert all(p.requires_grad for p in engine.model.parameters())


def test_plain_model_is_wrapped_for_adapters_and_unwrapped_after():
    engine = make_lora_engine(seed=2)
    train_steps(engine, 2)
    tensors, config = lora_payload(engine)
    trained = _lp(Sampler.for_engine(engine))
    tiny = build_tiny_llama(seed=2)
    sampler = Sampler(model=tiny.model, tokenizer=tiny.tokenizer, model_name=tiny.name)
    base = _lp(sampler)
    sampler.load_adapter(name="run-2/step-2", tensors=tensors, lora_config=config)
    assert isinstance(sampler.model, PeftModel)
    torch.testing.assert_close(_lp(sampler, "run-2/step-2"), trained, atol=1e-6, rtol=0)
    torch.testing.assert_close(_lp(sampler), base, atol=0, rtol=0)  # None = base here
    torch.testing.assert_close(_lp(sampler, BASE_MODEL), base, atol=0, rtol=0)
    sampler.remove_adapter("run-2/step-2")
    assert sampler.model is tiny.model and not isinstance(sampler.model, PeftModel)
    torch.testing.assert_close(_lp(sampler), base, atol=0, rtol=0)


def test_training_and_sampling_wait_for_each_other():
    engine = make_lora_engine()
    sampler = Sampler.for_engine(engine)
    done: list[str] = []
    jobs = {
        "train": lambda: engine.forward_backward(training_batch()),
        "sample": lambda: sampler.sample(_greedy(None)),
        "logprobs": lambda: sampler.compute_logprobs(prompt=PROMPT),
    }
    with model_lock(engine.model.get_base_model()):  # the same lock as the wrapper's
        threads = [
            threading.Thread(target=lambda n=n, f=f: (f(), done.append(n))) for n, f in jobs.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(0.3)
        assert done == []  # all three wait for the lock
    for t in threads:
        t.join(60)
    assert sorted(done) == sorted(jobs)


def test_switching_restores_flags_peft_would_rewrite():
    """peft's set_adapter marks every weight of the re-activated adapter trainable;
    a weight the owner had frozen must stay frozen after sampling."""
    engine = make_lora_engine()
    tensors, config = lora_payload(engine)
    sampler = Sampler.for_engine(engine)
    sampler.load_adapter(name="ckpt", tensors=tensors, lora_config=config)
    frozen = next(p for n, p in engine.model.named_parameters() if "lora_A.default" in n)
    frozen.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in engine.model.named_parameters()}
    for adapter in ("ckpt", BASE_MODEL, None):
        sampler.compute_logprobs(prompt=PROMPT, adapter=adapter)
        assert {n: p.requires_grad for n, p in engine.model.named_parameters()} == flags
        assert engine.model.training and engine.model.active_adapter == "default"
