"""The value every model loader returns: a model, its tokenizer, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

ModelSource = Literal["path", "cache", "package", "hub", "builtin"]
"""Where a model was found: an explicit directory, TenSafe's cache, converted from an
installed package, the Hugging Face hub (or its local cache), or built in memory
(``tiny-llama``)."""


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A causal LM ready for the engine, with the tokenizer that belongs to it.

    Attributes:
        model: the Hugging Face causal LM, on its device, in eval mode.
        tokenizer: its tokenizer; ``pad_token`` is always set (to EOS if the model
            defines none).
        name: canonical name: the built-in alias (``smollm2-135m-instruct``,
            ``tiny-llama[:options]``), the hub id, or the absolute directory path.
            Passing it back to :func:`~tensafe.models.load_causal_lm` loads the same model.
        arch: ``config.model_type`` (``architectures[0]`` when no model type is set).
        source: where it was found (:data:`ModelSource`).

    Example::

        >>> from tensafe.models import load_causal_lm
        >>> loaded = load_causal_lm("tiny-llama")
        >>> loaded.arch, loaded.source
        ('llama', 'builtin')
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    arch: str
    source: ModelSource

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters."""
        return next(self.model.parameters()).dtype


def model_arch(model: PreTrainedModel) -> str:
    """``config.model_type``, else ``config.architectures[0]``, else the class name."""
    config = model.config
    model_type = getattr(config, "model_type", "") or ""
    if model_type:
        return str(model_type)
    architectures = getattr(config, "architectures", None) or []
    return str(architectures[0]) if architectures else type(model).__name__


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set ``pad_token`` to the EOS token when the tokenizer has none; returns it."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


__all__ = ["LoadedModel", "ModelSource", "ensure_pad_token", "model_arch"]
