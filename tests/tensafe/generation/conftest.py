"""Shared setup for the generation tests: a tiny Llama, LoRA training engines, and
sampler-checkpoint payloads in the format ``save_weights_for_sampler`` stores."""

from __future__ import annotations

import enum
import json

import pytest
import torch
from peft import get_peft_model_state_dict

from tensafe.engine import OptimizerConfig, TrainingEngine
from tensafe.generation import Sampler
from tensafe.models import LoRAConfig, build_tiny_llama
from tensafe.privacy import DPConfig


def make_lora_engine(*, seed: int = 0, sigma: float = 0.5, lr: float = 0.5) -> TrainingEngine:
    """A DP LoRA engine on a tiny Llama with deterministic (test-only) noise."""
    return TrainingEngine(
        model=build_tiny_llama(seed=seed),
        lora_config=LoRAConfig(rank=4, alpha=8),
        dp_config=DPConfig(
            noise_multiplier=sigma, max_grad_norm=1.0, dataset_size=100, expected_batch_size=4
        ),
        optimizer=OptimizerConfig(name="sgd", learning_rate=lr),
        seed=seed,
        noise_seed=seed,
    )


def training_batch(*, seed: int = 0, n: int = 4, seq: int = 10) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49152, (n, seq + 1), generator=g)
    return {"input_ids": ids[:, :-1].tolist(), "labels": ids[:, 1:].tolist()}


def train_steps(engine: TrainingEngine, steps: int, *, seed: int = 0) -> None:
    for i in range(steps):
        engine.forward_backward(training_batch(seed=seed + i))
        engine.optim_step()


def _json_ready(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(type(value).__name__)


def lora_payload(engine: TrainingEngine) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, lora_config)`` of the run's adapter, as a ``lora_adapter`` sampler
    checkpoint holds them once decrypted (see server/worker/checkpoints.py)."""
    tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(engine.model).items()}
    config = engine.model.peft_config["default"].to_dict()
    config["base_model_name_or_path"] = engine.name
    config["inference_mode"] = True
    return tensors, json.loads(json.dumps(config, default=_json_ready))


@pytest.fixture(scope="module")
def tiny_sampler() -> Sampler:
    """A sampler on a plain tiny Llama (base weights only). Shared: load no adapters."""
    tiny = build_tiny_llama(seed=3)
    return Sampler(model=tiny.model, tokenizer=tiny.tokenizer, model_name=tiny.name)
