"""A causal LM split into its body (to the last hidden state) and its output head.

Losses need one log-probability per position, not the ``(B, T, V)`` logits; with
the model split, the head can be applied a chunk of positions at a time
(:func:`tensafe.losses.chunked_token_logprobs`). The split is only offered for
architectures whose forward is exactly ``logits = lm_head(model(...).last_hidden_state)``
— no logit scaling, soft-capping or bias added afterwards — checked by class name,
so a model that post-processes its logits keeps the plain full-logits path.

Example::

    >>> from tensafe.models import build_tiny_llama
    >>> split = split_output_head(build_tiny_llama().model)
    >>> type(split.body).__name__, type(split.head).__name__
    ('LlamaModel', 'Linear')
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import PeftModel
from torch import nn

#: ``*ForCausalLM`` classes whose logits are ``self.lm_head(self.model(...).last_hidden_state)``
#: (transformers 5: Llama and the models generated from its modular definition).
_PLAIN_HEAD_CLASSES = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
)


@dataclass(frozen=True, eq=False)
class OutputHeadSplit:
    """The two halves of a causal LM, sharing its (possibly LoRA-wrapped) modules.

    Attributes:
        body: the decoder; ``body(input_ids=..., attention_mask=..., position_ids=...,
            use_cache=False).last_hidden_state`` is the ``(B, T, hidden)`` input of the head.
        head: the output projection (``lm_head``, a LoRA-wrapped one included);
            ``head(hidden)`` is the logits.
    """

    body: nn.Module
    head: nn.Module


def split_output_head(model: nn.Module) -> OutputHeadSplit | None:
    """The body and head of ``model`` (a transformers causal LM or a peft model wrapping
    one), or ``None`` when its architecture is not known to compute its logits as
    ``lm_head(last_hidden_state)``."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if type(base).__name__ not in _PLAIN_HEAD_CLASSES:
        return None
    body, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if not isinstance(body, nn.Module) or not isinstance(head, nn.Module):
        return None
    return OutputHeadSplit(body=body, head=head)


__all__ = ["OutputHeadSplit", "split_output_head"]
