"""Models: load any HF causal LM, the embedded SmolLM2 default, a tiny test Llama, LoRA.

Public API::

    load_causal_lm(model_ref, *, dtype=None, device="cpu", cache_dir=None) -> LoadedModel
    prepare_default_model(*, cache_dir=None) -> Path
    load_smollm2_tokenizer(*, cache_dir=None) -> PreTrainedTokenizerBase
    build_tiny_llama(*, hidden_size=64, ..., seed=0, dtype=torch.float32) -> LoadedModel
    LoRAConfig(rank=16, alpha=32, ...), apply_lora(model, config) -> PeftModel
    model_info(model) -> ModelInfo
    model_lock(model) -> threading.RLock  (shared by training and generation on one model)
    BaseModelPool().lora_model(model_ref=...) -> LoadedModel  (LoRA runs sharing one frozen base)

Names are imported lazily (on first attribute access), so importing
``tensafe.models.cli`` to register the CLI does not pull in torch or transformers.

Example::

    >>> from tensafe.models import LoRAConfig, apply_lora, load_causal_lm, model_info
    >>> loaded = load_causal_lm("tiny-llama")
    >>> peft_model = apply_lora(loaded.model, LoRAConfig(rank=4))
    >>> model_info(peft_model).is_lora
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS: dict[str, str] = {
    "LoadedModel": "tensafe.models.loaded",
    "ModelSource": "tensafe.models.loaded",
    "load_causal_lm": "tensafe.models.resolve",
    "hub_offline": "tensafe.models.resolve",
    "SMOLLM2_NAME": "tensafe.models.smollm2",
    "SMOLLM2_HUB_ID": "tensafe.models.smollm2",
    "prepare_default_model": "tensafe.models.smollm2",
    "prepare_smollm2_tokenizer": "tensafe.models.smollm2",
    "load_smollm2_tokenizer": "tensafe.models.smollm2",
    "TINY_LLAMA_NAME": "tensafe.models.tiny",
    "build_tiny_llama": "tensafe.models.tiny",
    "LoRAConfig": "tensafe.models.lora",
    "apply_lora": "tensafe.models.lora",
    "ModelInfo": "tensafe.models.info",
    "model_info": "tensafe.models.info",
    "default_cache_dir": "tensafe.models.cache",
    "model_lock": "tensafe.models.locking",
    "BaseModelPool": "tensafe.models.shared_base",
    "OutputHeadSplit": "tensafe.models.output_head",
    "split_output_head": "tensafe.models.output_head",
}

if TYPE_CHECKING:
    from tensafe.models.cache import default_cache_dir
    from tensafe.models.info import ModelInfo, model_info
    from tensafe.models.loaded import LoadedModel, ModelSource
    from tensafe.models.locking import model_lock
    from tensafe.models.lora import LoRAConfig, apply_lora
    from tensafe.models.output_head import OutputHeadSplit, split_output_head
    from tensafe.models.resolve import hub_offline, load_causal_lm
    from tensafe.models.shared_base import BaseModelPool
    from tensafe.models.smollm2 import (
        SMOLLM2_HUB_ID,
        SMOLLM2_NAME,
        load_smollm2_tokenizer,
        prepare_default_model,
        prepare_smollm2_tokenizer,
    )
    from tensafe.models.tiny import TINY_LLAMA_NAME, build_tiny_llama


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "SMOLLM2_HUB_ID",
    "SMOLLM2_NAME",
    "TINY_LLAMA_NAME",
    "BaseModelPool",
    "LoRAConfig",
    "LoadedModel",
    "ModelInfo",
    "ModelSource",
    "OutputHeadSplit",
    "apply_lora",
    "build_tiny_llama",
    "default_cache_dir",
    "hub_offline",
    "load_causal_lm",
    "load_smollm2_tokenizer",
    "model_info",
    "model_lock",
    "prepare_default_model",
    "prepare_smollm2_tokenizer",
    "split_output_head",
]
