"""BaseModelPool: one base in memory, per-run module trees aliasing its frozen tensors."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest
import torch

from tensafe.models import BaseModelPool, LoadedModel, LoRAConfig, apply_lora, load_causal_lm
from tensafe.models.locking import model_lock
from tensafe.models.shared_base import privatize_trainable, shared_base_storages

from .biased_model import save_biased_model


class CountingLoader:
    """The real loader, counting calls and keeping weak references to what it loaded."""

    def __init__(self) -> None:
        self.loaded: list[weakref.ref[torch.nn.Module]] = []
        self._lock = threading.Lock()

    def __call__(self, model_ref: str, **kwargs: object) -> LoadedModel:
        loaded = load_causal_lm(model_ref, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self.loaded.append(weakref.ref(loaded.model))
        return loaded


def test_runs_share_frozen_storage_but_not_modules() -> None:
    loader = CountingLoader()
    pool = BaseModelPool(loader=loader)
    a = pool.lora_model(model_ref="tiny-llama")
    b = pool.lora_model(model_ref="tiny-llama")
    assert len(loader.loaded) == 1
    base = loader.loaded[0]()
    assert base is not None
    for (name, pa), (_, pb), (_, p0) in zip(
        a.model.named_parameters(), b.model.named_parameters(), base.named_parameters(), strict=True
    ):
        assert pa is not pb and pa is not p0, name
        assert pa.data_ptr() == pb.data_ptr() == p0.data_ptr(), name
        assert not pa.requires_grad and not pb.requires_grad and not p0.requires_grad
    for (name, ba), (_, bb) in zip(a.model.named_buffers(), b.model.named_buffers(), strict=True):
        assert ba.data_ptr() == bb.data_ptr(), name
    # tied weights stay tied inside a tree; each tree is its own module (own lock, modes)
    assert a.model.lm_head.weight is a.model.model.embed_tokens.weight
    assert a.model.model.layers[0] is not b.model.model.layers[0]
    assert model_lock(a.model) is not model_lock(b.model)
    assert a.tokenizer is not b.tokenizer
    a.model.train()
    assert not b.model.training and not base.training


def test_different_models_get_different_bases() -> None:
    loader = CountingLoader()
    pool = BaseModelPool(loader=loader)
    a = pool.lora_model(model_ref="tiny-llama")
    b = pool.lora_model(model_ref="tiny-llama:seed=1")
    assert len(loader.loaded) == 2
    assert a.model.lm_head.weight.data_ptr() != b.model.lm_head.weight.data_ptr()
    assert pool.loaded_bases() == ["tiny-llama", "tiny-llama:seed=1"]


def test_concurrent_requests_load_the_base_once() -> None:
    loader = CountingLoader()
    pool = BaseModelPool(loader=loader)
    models: list[LoadedModel] = []
    lock = threading.Lock()

    def ask() -> None:
        model = pool.lora_model(model_ref="tiny-llama")
        with lock:
            models.append(model)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(models) == 4 and len(loader.loaded) == 1
    assert len({m.model.lm_head.weight.data_ptr() for m in models}) == 1


def test_base_is_freed_when_no_run_uses_it() -> None:
    loader = CountingLoader()
    pool = BaseModelPool(loader=loader)
    a = pool.lora_model(model_ref="tiny-llama")
    b = apply_lora(pool.lora_model(model_ref="tiny-llama").model, LoRAConfig(rank=2))
    base = loader.loaded[0]
    del a
    gc.collect()
    assert base() is not None and pool.loaded_bases() == ["tiny-llama"]
    del b
    gc.collect()
    assert base() is None
    assert pool.loaded_bases() == []
    pool.lora_model(model_ref="tiny-llama")  # loaded again on demand
    assert len(loader.loaded) == 2


def test_peft_wrapping_keeps_base_frozen_and_shared() -> None:
    pool = BaseModelPool()
    run = pool.lora_model(model_ref="tiny-llama")
    other = pool.lora_model(model_ref="tiny-llama")
    peft_model = apply_lora(run.model, LoRAConfig(rank=2, train_unembed=True))
    shared = shared_base_storages(peft_model)
    assert shared is not None and shared == shared_base_storages(other.model)
    assert privatize_trainable(peft_model) == ()  # LoRA's A/B are new tensors already
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainable and all(p.untyped_storage().data_ptr() not in shared for p in trainable)
    # the wrapped lm_head's base weight is still the frozen, shared, tied embedding
    head = peft_model.get_base_model().lm_head.base_layer.weight
    assert not head.requires_grad
    assert head.data_ptr() == other.model.model.embed_tokens.weight.data_ptr()
    assert model_lock(peft_model) is model_lock(run.model)


def test_a_trainable_base_tensor_gets_a_private_copy(biased_model_dir: Path) -> None:
    pool = BaseModelPool()
    run = pool.lora_model(model_ref=str(biased_model_dir))
    other = pool.lora_model(model_ref=str(biased_model_dir))
    peft_model = apply_lora(run.model, LoRAConfig(rank=2, bias="all"))
    copied = privatize_trainable(peft_model)
    assert copied and all(name.endswith("bias") for name in copied)
    shared = shared_base_storages(peft_model)
    assert shared is not None
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            assert p.untyped_storage().data_ptr() not in shared, name
    q_bias = peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.bias
    with torch.no_grad():
        q_bias.add_(1.0)  # what an optimizer step does
    assert not torch.equal(q_bias, other.model.model.layers[0].self_attn.q_proj.bias)


def test_models_not_from_a_pool_are_left_alone() -> None:
    model = apply_lora(load_causal_lm("tiny-llama").model, LoRAConfig(rank=2, bias="all"))
    assert shared_base_storages(model) is None
    assert privatize_trainable(model) == ()


@pytest.fixture(scope="module")
def biased_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_biased_model(tmp_path_factory.mktemp("qwen2-biased"))
