"""Incremental decoding and stop conditions with the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest

from tensafe.generation.stopping import IncrementalText, StopChecker

TEXTS = [
    "Hello world\n\nUser: hi",
    "héllo 你好 🙂 world",  # multi-byte characters split across byte-level tokens
    "<|im_start|>user\nHi<|im_end|>",
]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_equals_full_decode(smollm2_tokenizer, text):
    prompt = smollm2_tokenizer.encode("A prompt: ")
    ids = smollm2_tokenizer.encode(text)
    inc = IncrementalText(smollm2_tokenizer, context=prompt)
    pieces = [inc.push(t) for t in ids]
    assert inc.text == smollm2_tokenizer.decode(ids) == "".join(pieces)
    assert all("\ufffd" not in p for p in pieces)  # partial characters are held back


def _checker(tokenizer, *, strings=(), ids=(), max_tokens=100):
    return StopChecker(
        tokenizer=tokenizer,
        prompt=tokenizer.encode("Q: "),
        stop_token_ids=frozenset(ids),
        stop_strings=tuple(strings),
        max_tokens=max_tokens,
    )


def _run(checker, ids):
    """Push tokens until the checker stops; (tokens consumed, reason)."""
    for n, token in enumerate(ids, start=1):
        reason = checker.push(token)
        if reason:
            return n, reason
    return len(ids), None


def test_stop_string_spanning_three_tokens(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("Hello world\n\nUser: hi")  # '\n', '\n', 'User' are separate
    n, reason = _run(_checker(smollm2_tokenizer, strings=["\n\nUser"]), ids)
    assert reason == "stop"
    assert (
        smollm2_tokenizer.decode(ids[:n]) == "Hello world\n\nUser"
    )  # ends at the completing token


def test_stop_string_inside_a_token_includes_the_whole_token(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("Hello world\n\nUser: hi")
    n, reason = _run(_checker(smollm2_tokenizer, strings=["wor"]), ids)
    assert reason == "stop"
    assert smollm2_tokenizer.decode(ids[:n]) == "Hello world"  # ' world' completes 'wor'


def test_stop_string_across_a_split_multibyte_character(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("héllo 你好 🙂 world")
    n, reason = _run(_checker(smollm2_tokenizer, strings=["你好"]), ids)
    assert reason == "stop"
    assert smollm2_tokenizer.decode(ids[:n]).endswith("你好")


def test_stop_string_absent_runs_to_length(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("Hello world\n\nUser: hi")
    n, reason = _run(_checker(smollm2_tokenizer, strings=["Assistant"], max_tokens=5), ids)
    assert (n, reason) == (5, "length")


def test_stop_string_in_the_prompt_is_not_matched(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode(" world")
    checker = _checker(smollm2_tokenizer, strings=["Q:"])  # the prompt is "Q: "
    assert _run(checker, ids) == (len(ids), None)


def test_stop_token_ids_and_special_token_text(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("<|im_start|>user\nHi<|im_end|> more")
    n, reason = _run(_checker(smollm2_tokenizer, ids=[2]), ids)
    assert (ids[n - 1], reason) == (2, "stop")
    n2, reason2 = _run(_checker(smollm2_tokenizer, strings=["<|im_end|>"]), ids)
    assert (n2, reason2) == (n, "stop")  # special tokens decode to their text
