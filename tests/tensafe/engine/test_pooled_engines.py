"""Several LoRA runs' engines on one pooled base model: isolation, equivalence, refusals."""

from __future__ import annotations

import copy
import dataclasses
import gc
import threading
import weakref
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict

from tensafe.engine import OptimizerConfig, TrainingEngine
from tensafe.errors import ConfigError
from tensafe.generation import Sampler, SampleRequest, SamplingParams
from tensafe.models import BaseModelPool, LoadedModel, LoRAConfig, build_tiny_llama, load_causal_lm
from tensafe.models.locking import model_lock
from tensafe.privacy import DPConfig

from ..models.biased_model import save_biased_model
from .conftest import N, random_batch


def _dp(sigma: float = 0.7) -> DPConfig:
    return DPConfig(
        noise_multiplier=sigma, max_grad_norm=1.0, dataset_size=N, expected_batch_size=4
    )


def _engine(model: LoadedModel, *, seed: int = 0, adam: bool = True) -> TrainingEngine:
    optimizer = (
        OptimizerConfig(name="adamw", learning_rate=1e-2)
        if adam
        else OptimizerConfig(name="sgd", learning_rate=1.0)
    )
    return TrainingEngine(
        model=model,
        lora_config=LoRAConfig(rank=4, alpha=8),
        dp_config=_dp(),
        optimizer=optimizer,
        seed=seed,
        noise_seed=seed,
    )


def _adapter(engine: TrainingEngine) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone() for name, p in engine.model.named_parameters() if "lora_" in name
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _base_snapshot(engine: TrainingEngine) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone()
        for name, p in engine.model.named_parameters()
        if not p.requires_grad
    }


def test_two_runs_share_the_base_and_nothing_else() -> None:
    pool = BaseModelPool()
    a = _engine(pool.lora_model(model_ref="tiny-llama"), seed=1)
    b = _engine(pool.lora_model(model_ref="tiny-llama"), seed=2)
    frozen_a = {n: p for n, p in a.model.named_parameters() if not p.requires_grad}
    frozen_b = {n: p for n, p in b.model.named_parameters() if not p.requires_grad}
    assert frozen_a.keys() == frozen_b.keys()
    assert all(frozen_a[n].data_ptr() == frozen_b[n].data_ptr() for n in frozen_a)
    pointers_a = {p.data_ptr() for p in a.params}
    assert not pointers_a & {p.data_ptr() for p in b.params}
    assert not pointers_a & {p.data_ptr() for p in frozen_a.values()}
    assert a.dp is not None and b.dp is not None
    assert a.dp.clipper is not b.dp.clipper and a.dp.noise is not b.dp.noise
    assert a.optimizer is not b.optimizer


def test_one_run_training_leaves_the_other_bit_identical() -> None:
    pool = BaseModelPool()
    a = _engine(pool.lora_model(model_ref="tiny-llama"), seed=1)
    b = _engine(pool.lora_model(model_ref="tiny-llama"), seed=2)
    b.forward_backward(random_batch(seed=10))
    b.optim_step()  # b now has Adam moments
    b.forward_backward(random_batch(seed=11))  # and a pending clipped sum
    adapter = _adapter(b)
    optimizer = copy.deepcopy(b.optimizer.state_dict())
    accumulated = {p: s.clone() for p, s in b._acc.items()}
    base = _base_snapshot(b)
    assert accumulated and optimizer["state"]

    before_a = _adapter(a)
    for seed in (20, 21):
        a.forward_backward(random_batch(seed=seed))
        a.optim_step()
    assert not _same(before_a, _adapter(a))  # a did train

    assert _same(adapter, _adapter(b))
    assert _same(base, _base_snapshot(b))
    assert b._acc.keys() == accumulated.keys()
    assert all(torch.equal(b._acc[p], accumulated[p]) for p in accumulated)
    after = b.optimizer.state_dict()
    for key, state in optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][key][name]))
    assert b._acc_examples == 4 and b.step == 1 and a.step == 2


def test_a_pooled_dp_step_equals_a_step_on_a_model_of_its_own() -> None:
    pool = BaseModelPool()
    pooled = _engine(pool.lora_model(model_ref="tiny-llama"), seed=3)
    _engine(pool.lora_model(model_ref="tiny-llama"), seed=4)  # a neighbour on the same base
    alone = _engine(build_tiny_llama(), seed=3)
    for seed in (30, 31):
        r1 = pooled.forward_backward(random_batch(seed=seed))
        r2 = alone.forward_backward(random_batch(seed=seed))
        assert r1.loss == r2.loss
        s1, s2 = pooled.optim_step(), alone.optim_step()
        assert s1.dp_metrics == s2.dp_metrics
    assert _same(_adapter(pooled), _adapter(alone))


def test_full_fine_tuning_on_a_pooled_model_is_refused() -> None:
    pool = BaseModelPool()
    with pytest.raises(ConfigError) as info:
        TrainingEngine(
            model=pool.lora_model(model_ref="tiny-llama"), lora_config=None, dp_config=_dp()
        )
    assert info.value.field == "lora_config"
    other = pool.lora_model(model_ref="tiny-llama")
    assert not any(p.requires_grad for p in other.model.parameters())
    # a model of its own still trains fully
    TrainingEngine(model=load_causal_lm("tiny-llama"), lora_config=None, dp_config=_dp())


def test_a_pooled_model_is_not_moved_to_another_device() -> None:
    pool = BaseModelPool()
    with pytest.raises(ConfigError) as info:
        TrainingEngine(
            model=pool.lora_model(model_ref="tiny-llama"),
            lora_config=LoRAConfig(rank=2),
            dp_config=_dp(),
            device="meta",
        )
    assert info.value.field == "device"


def test_disposing_every_run_frees_the_base() -> None:
    loaded: list[weakref.ref[torch.nn.Module]] = []

    def loader(model_ref: str, **kwargs: object) -> LoadedModel:
        model = load_causal_lm(model_ref, **kwargs)  # type: ignore[arg-type]
        loaded.append(weakref.ref(model.model))
        return model

    pool = BaseModelPool(loader=loader)
    engines = [_engine(pool.lora_model(model_ref="tiny-llama"), seed=i) for i in range(2)]
    engines[0].forward_backward(random_batch(seed=1))
    engines[0].optim_step()
    assert len(loaded) == 1
    engines.pop()
    gc.collect()
    assert loaded[0]() is not None
    engines.clear()
    gc.collect()
    assert loaded[0]() is None and pool.loaded_bases() == []


def test_generation_on_one_run_while_another_trains() -> None:
    """Each run's lock is its own: generation on A overlaps training on B, and both
    give exactly what they give alone (shared tensors are only read)."""
    pool = BaseModelPool()
    a = _engine(pool.lora_model(model_ref="tiny-llama"), seed=1, adam=False)
    b = _engine(pool.lora_model(model_ref="tiny-llama"), seed=2, adam=False)
    reference = _engine(build_tiny_llama(), seed=2, adam=False)
    assert model_lock(a.model) is not model_lock(b.model)
    assert model_lock(a.model) is model_lock(a.model.get_base_model())
    sampler = Sampler.for_engine(a)
    request = SampleRequest(
        prompt=(1, 2, 3, 4), params=SamplingParams(max_tokens=8, temperature=1.0, seed=5)
    )
    expected = sampler.sample(request)

    results: list[object] = []
    stop = threading.Event()

    def generate() -> None:
        while not stop.is_set():
            results.append(sampler.sample(request))

    thread = threading.Thread(target=generate)
    thread.start()
    try:
        for seed in (40, 41, 42):
            b.forward_backward(random_batch(seed=seed))
            b.optim_step()
    finally:
        stop.set()
        thread.join()
    for seed in (40, 41, 42):
        reference.forward_backward(random_batch(seed=seed))
        reference.optim_step()
    assert results and all(r == expected for r in results)
    assert _same(_adapter(b), _adapter(reference))


@pytest.fixture(scope="module")
def biased_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_biased_model(tmp_path_factory.mktemp("qwen2-biased"))


def _q_bias(engine: TrainingEngine) -> torch.Tensor:
    return engine.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.bias


def _adapter_payload(engine: TrainingEngine) -> tuple[dict[str, torch.Tensor], dict]:
    config = engine.model.peft_config["default"].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    config["peft_type"] = "LORA"
    config["task_type"] = "CAUSAL_LM"
    return get_peft_model_state_dict(engine.model), config


def test_a_run_training_biases_trains_a_private_copy(biased_model_dir: Path) -> None:
    pool = BaseModelPool()
    dp = _dp()
    biased = TrainingEngine(
        model=pool.lora_model(model_ref=str(biased_model_dir)),
        lora_config=LoRAConfig(rank=2, bias="all"),
        dp_config=dp,
        optimizer=OptimizerConfig(name="sgd", learning_rate=1.0),
        noise_seed=0,
    )
    other = TrainingEngine(
        model=pool.lora_model(model_ref=str(biased_model_dir)),
        lora_config=LoRAConfig(rank=2),
        dp_config=dp,
        noise_seed=1,
    )
    base = _q_bias(other).detach().clone()
    assert _q_bias(biased).requires_grad and not _q_bias(other).requires_grad
    assert _q_bias(biased).data_ptr() != _q_bias(other).data_ptr()
    biased.forward_backward({"input_ids": [[1, 2, 3, 4]] * 4, "labels": [[2, 3, 4, 5]] * 4})
    biased.optim_step()
    assert not torch.equal(_q_bias(biased), base)  # trained
    assert torch.equal(_q_bias(other), base)  # the shared base was not

    # Serving the biased adapter on the other run would write the shared bias: refused.
    tensors, config = _adapter_payload(biased)
    sampler = Sampler.for_engine(other)
    with pytest.raises(ConfigError) as info:
        sampler.load_adapter(name="biased", tensors=tensors, lora_config=config)
    assert info.value.field == "tensors"
    assert torch.equal(_q_bias(other), base) and sampler.adapters == ()


def test_an_unembed_adapter_is_served_on_a_neighbour_without_writing_the_base() -> None:
    """peft saves a tied lm_head's base weight with the adapter; it equals the pooled
    base, so loading skips it instead of copying it into the shared storage."""
    pool = BaseModelPool()
    trained = TrainingEngine(
        model=pool.lora_model(model_ref="tiny-llama"),
        lora_config=LoRAConfig(rank=2, train_unembed=True),
        dp_config=_dp(),
        noise_seed=0,
    )
    trained.forward_backward(random_batch(seed=1))
    trained.optim_step()
    neighbour = _engine(pool.lora_model(model_ref="tiny-llama"), seed=1)
    embedding = neighbour.model.get_base_model().model.embed_tokens.weight
    before, version = embedding.detach().clone(), embedding._version
    tensors, config = _adapter_payload(trained)
    assert any("base_layer" in key for key in tensors)
    sampler = Sampler.for_engine(neighbour)
    sampler.load_adapter(name="unembed", tensors=tensors, lora_config=config)
    request = SampleRequest(prompt=(1, 2, 3), params=SamplingParams(max_tokens=4, seed=1))
    sampler.sample(dataclasses.replace(request, adapter="unembed"))
    assert torch.equal(embedding, before)
    assert embedding._version == version  # not even written with equal values
