"""A summary of a loaded model: what it is, how big, what trains.

Example::

    >>> from tensafe.models import build_tiny_llama, model_info
    >>> info = model_info(build_tiny_llama().model)
    >>> info.arch, info.vocab_size, info.tied_embeddings, info.is_lora
    ('llama', 49152, True, False)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

from tensafe.models.loaded import model_arch


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a model, as ``tensafe model info`` prints them.

    Attributes:
        name: ``config.name_or_path`` (the canonical name for models loaded by TenSafe).
        arch: ``config.model_type`` (or ``architectures[0]``).
        is_lora: whether the model is a peft LoRA model.
        lora_rank: the active adapter's rank, None without LoRA.
        trainable_params: parameters with ``requires_grad``, shared ones counted once.
        total_params: all parameters, shared (tied) ones counted once.
        vocab_size: rows of the input embedding matrix.
        tied_embeddings: whether ``lm_head`` shares its weight tensor with the input
            embeddings right now (checked on the tensors, not read from the config).
    """

    name: str
    arch: str
    is_lora: bool
    lora_rank: int | None
    trainable_params: int
    total_params: int
    vocab_size: int
    tied_embeddings: bool

    def to_dict(self) -> dict[str, object]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def model_info(model: PreTrainedModel | PeftModel) -> ModelInfo:
    """Summarize ``model`` (a transformers causal LM, optionally wrapped by peft).

    Raises:
        TypeError: ``model`` has no input embeddings (not a language model).
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    embeddings = base.get_input_embeddings()
    if not isinstance(embeddings, nn.Embedding):
        raise TypeError(f"{type(base).__name__} has no input embedding layer")
    is_lora = isinstance(model, PeftModel)
    lora_rank = None
    if is_lora:
        adapter = model.peft_config[model.active_adapter]
        lora_rank = int(getattr(adapter, "r", 0)) or None
    params = list(model.parameters())  # parameters() already yields a shared tensor once
    return ModelInfo(
        name=str(getattr(base.config, "name_or_path", "") or model_arch(base)),
        arch=model_arch(base),
        is_lora=is_lora,
        lora_rank=lora_rank,
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        vocab_size=embeddings.num_embeddings,
        tied_embeddings=_output_weight(base) is embeddings.weight,
    )


def _output_weight(model: PreTrainedModel) -> nn.Parameter | None:
    head = model.get_output_embeddings()
    if head is None:
        return None
    head = getattr(head, "base_layer", head)  # a peft LoRA layer wraps the original
    return getattr(head, "weight", None)


__all__ = ["ModelInfo", "model_info"]
