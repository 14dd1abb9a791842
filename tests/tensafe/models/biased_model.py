"""A tiny Qwen2 causal LM whose q/k/v projections have biases, saved as a model directory
(for configs that make base tensors trainable: peft ``bias="all"``)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_biased_model(directory: Path) -> Path:
    """Write the model and the SmolLM2 tokenizer to ``directory``; returns it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tensafe.models import load_smollm2_tokenizer

    tokenizer = load_smollm2_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
