from __future__ import annotations

import pytest
import torch

from tensafe.engine import OptimizerConfig, TrainingEngine
from tensafe.losses import DEFAULT_CHUNK_TOKENS
from tensafe.models import LoRAConfig, build_tiny_llama
from tensafe.privacy import DPConfig

N = 1000  # dataset size used by the tests


def make_engine(
    *,
    lora: bool = True,
    dp: bool = True,
    sigma: float = 0.0,
    batch: int = 4,
    dtype: torch.dtype = torch.float32,
    optimizer: OptimizerConfig | None = None,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    secure_mode: bool = False,
    tied: bool = True,
    lora_config: LoRAConfig | None = None,
    loss_chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS,
    microbatch_examples: int | None = None,
) -> TrainingEngine:
    dp_config = (
        DPConfig(
            noise_multiplier=sigma,
            allow_zero_noise=sigma == 0,
            max_grad_norm=max_grad_norm,
            dataset_size=N,
            expected_batch_size=batch,
            secure_mode=secure_mode,
        )
        if dp
        else DPConfig(enabled=False)
    )
    return TrainingEngine(
        model=build_tiny_llama(dtype=dtype, seed=seed, tie_word_embeddings=tied),
        lora_config=(lora_config or LoRAConfig(rank=4, alpha=8)) if lora else None,
        dp_config=dp_config,
        optimizer=optimizer or OptimizerConfig(name="sgd", learning_rate=1.0),
        seed=seed,
        noise_seed=seed,  # deterministic noise: tests compare runs bit for bit
        loss_chunk_tokens=loss_chunk_tokens,
        microbatch_examples=microbatch_examples,
    )


def random_batch(*, n: int = 4, seq: int = 12, vocab: int = 49152, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq + 1), generator=g)
    lengths = [seq - (i % 3) * 2 for i in range(n)]
    input_ids = ids[:, :-1].clone()
    labels = ids[:, 1:].clone()
    mask = torch.zeros(n, seq, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
        input_ids[i, length:] = 0
        labels[i, length:] = -100
    return {
        "input_ids": input_ids.tolist(),
        "attention_mask": mask.tolist(),
        "labels": labels.tolist(),
    }


@pytest.fixture
def engine_factory():
    return make_engine
