"""model_info on plain and untied models (LoRA cases are in test_model_lora.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tensafe.models import LoadedModel, ModelInfo, model_info

TIED_PARAMS = 3219776  # 49152 x 64 embeddings + 2 layers + final norm (see test_model_tiny.py)


def test_tiny_info(tiny_llama: Callable[..., LoadedModel]) -> None:
    info = model_info(tiny_llama().model)
    assert info == ModelInfo(
        name="tiny-llama",
        arch="llama",
        is_lora=False,
        lora_rank=None,
        trainable_params=TIED_PARAMS,
        total_params=TIED_PARAMS,
        vocab_size=49152,
        tied_embeddings=True,
    )
    assert info.to_dict()["tied_embeddings"] is True


def test_untied_and_frozen(tiny_llama: Callable[..., LoadedModel]) -> None:
    model = tiny_llama(tie_word_embeddings=False).model
    model.model.embed_tokens.weight.requires_grad_(False)
    info = model_info(model)
    assert not info.tied_embeddings
    assert info.total_params == TIED_PARAMS + 49152 * 64
    assert info.trainable_params == TIED_PARAMS


def test_not_a_language_model() -> None:
    class NoEmbeddings(torch.nn.Module):
        def get_input_embeddings(self) -> None:
            return None

    with pytest.raises(TypeError):
        model_info(NoEmbeddings())  # type: ignore[arg-type]
