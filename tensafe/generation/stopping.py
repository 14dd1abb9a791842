"""When does a sequence end: stop token ids, stop strings, and the token budget.

Stop strings are matched in the text of the generated tokens, decoded
incrementally: each new token's text is found by decoding a short window of the
latest tokens (with a few prompt tokens before the first one, so tokenizers that
treat the start of a text specially — SentencePiece's leading space — decode as
they would in context). Text that ends in an incomplete UTF-8 character is held
back until the character is complete. After each token only the new tail of the
text is searched, so a stop string that spans several tokens is found on the token
that completes it, and the cost per token does not grow with the length.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from tensafe.generation.results import StopReason

CONTEXT_TOKENS = 5  # prompt tokens decoded before the first generated one
_INCOMPLETE = "\ufffd"  # what a partial UTF-8 sequence decodes to


class IncrementalText:
    """The decoded text of a growing token sequence.

    Example::

        text = IncrementalText(tokenizer, context=prompt_ids)
        for token in generated:
            new_part = text.push(token)
        text.text  # the generated tokens' text
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, context: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._tokens: list[int] = list(context[-CONTEXT_TOKENS:])
        self._prefix = 0  # start of the decode window
        self._read = len(self._tokens)  # tokens before this are already in `text`
        self.text = ""

    def _decode(self, tokens: Sequence[int]) -> str:
        return self._tokenizer.decode(
            tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def push(self, token: int) -> str:
        """Append ``token``; return the text it completed ('' while held back)."""
        self._tokens.append(token)
        before = self._decode(self._tokens[self._prefix : self._read])
        after = self._decode(self._tokens[self._prefix :])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        new_text = after[len(before) :]
        self._prefix = self._read
        self._read = len(self._tokens)
        self.text += new_text
        return new_text


class StopChecker:
    """Decides, token by token, whether one sequence has ended.

    Args:
        tokenizer: decodes tokens for stop strings (unused without stop strings).
        prompt: the prompt's tokens (context for decoding the first tokens).
        stop_token_ids: ids that end the sequence (included in the output).
        stop_strings: strings that end it once present in the generated text.
        max_tokens: the token budget; reaching it ends the sequence with ``"length"``.
    """

    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase | None,
        prompt: Sequence[int],
        stop_token_ids: frozenset[int],
        stop_strings: tuple[str, ...],
        max_tokens: int,
    ) -> None:
        self._stop_ids = stop_token_ids
        self._strings = stop_strings
        self._longest = max((len(s) for s in stop_strings), default=0)
        self._text = (
            IncrementalText(tokenizer, context=prompt)
            if stop_strings and tokenizer is not None
            else None
        )
        self._max_tokens = max_tokens
        self._count = 0

    def push(self, token: int) -> StopReason | None:
        """Record one generated token; return why the sequence ends, or ``None``."""
        self._count += 1
        if token in self._stop_ids:
            return "stop"
        if self._text is not None:
            new_text = self._text.push(token)
            if new_text:
                text = self._text.text
                start = max(0, len(text) - len(new_text) - self._longest + 1)
                tail = text[start:]
                if any(s in tail for s in self._strings):
                    return "stop"
        if self._count >= self._max_tokens:
            return "length"
        return None


__all__ = ["CONTEXT_TOKENS", "IncrementalText", "StopChecker"]
