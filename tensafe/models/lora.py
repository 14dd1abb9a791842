"""LoRA adapters (via peft) configured the way Tinker exposes them.

Tinker's switches pick the layers to adapt; explicit ``target_modules`` overrides them:

=================  =========================================
switch             target modules (Llama-family names)
=================  =========================================
``train_attn``     ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``
``train_mlp``      ``gate_proj``, ``up_proj``, ``down_proj``
``train_unembed``  ``lm_head``
=================  =========================================

Example::

    >>> from tensafe.models import LoRAConfig, apply_lora, build_tiny_llama
    >>> config = LoRAConfig(rank=8, train_mlp=False)
    >>> config.selected_modules
    ('q_proj', 'k_proj', 'v_proj', 'o_proj')
    >>> peft_model = apply_lora(build_tiny_llama().model, config)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from tensafe.errors import ConfigError

LoRABias = Literal["none", "all", "lora_only"]

ATTN_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES: tuple[str, ...] = ("lm_head",)


@dataclass(frozen=True)
class LoRAConfig:
    """Which layers get LoRA adapters, and their shape. Validated on construction.

    Attributes:
        rank: adapter rank r, an integer > 0.
        alpha: scaling numerator (the update is scaled by ``alpha / rank``), > 0.
        dropout: dropout on the adapter input, in [0, 1).
        target_modules: module names to adapt (the last component of the dotted
            name, or a full dotted path); when given it overrides the three switches.
            A list is accepted and stored as a tuple.
        bias: which biases train: ``"none"``, ``"all"`` or ``"lora_only"``.
        train_attn: adapt the attention projections.
        train_mlp: adapt the MLP projections.
        train_unembed: adapt the output projection ``lm_head``. On a model with
            tied embeddings (SmolLM2, ``tiny-llama``) peft wraps ``lm_head`` with its
            own A/B matrices and leaves the shared base weight frozen and still
            tied: the input embeddings are unchanged, only the output logits get
            the low-rank update. (Verified with peft 0.21: the base weight keeps
            ``requires_grad=False`` and the same storage as ``embed_tokens``.)
            Consequence: do not merge such an adapter into a tied model; merging
            would write the update into the shared matrix and so into the input
            embeddings too. Keep the adapter separate, or untie before merging.

    Raises:
        ConfigError: on construction, naming the field and its allowed values.
    """

    rank: int = 16
    alpha: float = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    bias: LoRABias = "none"
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ConfigError("rank", f"must be an integer > 0, got {self.rank!r}")
        if not _is_number(self.alpha) or not 0 < self.alpha < math.inf:
            raise ConfigError("alpha", f"must be a finite number > 0, got {self.alpha!r}")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be a number in [0, 1), got {self.dropout!r}")
        if self.bias not in get_args(LoRABias):
            allowed = ", ".join(repr(b) for b in get_args(LoRABias))
            raise ConfigError("bias", f"must be one of {allowed}, got {self.bias!r}")
        for switch in ("train_attn", "train_mlp", "train_unembed"):
            if not isinstance(getattr(self, switch), bool):
                raise ConfigError(switch, f"must be True or False, got {getattr(self, switch)!r}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str) or not isinstance(
                self.target_modules, (tuple, list)
            ):
                raise ConfigError(
                    "target_modules", "must be a tuple of module names (e.g. ('q_proj',)) or None"
                )
            names = tuple(self.target_modules)
            if any(not isinstance(n, str) or not n.strip() for n in names):
                raise ConfigError("target_modules", "every entry must be a non-empty module name")
            object.__setattr__(self, "target_modules", names)
        if not self.selected_modules:
            raise ConfigError(
                "target_modules",
                "no module selected: give target_modules or set at least one of "
                "train_attn, train_mlp, train_unembed",
            )

    @property
    def selected_modules(self) -> tuple[str, ...]:
        """The target module names: ``target_modules`` if given, else from the switches."""
        if self.target_modules is not None:
            return tuple(dict.fromkeys(self.target_modules))
        chosen: tuple[str, ...] = ()
        if self.train_attn:
            chosen += ATTN_MODULES
        if self.train_mlp:
            chosen += MLP_MODULES
        if self.train_unembed:
            chosen += UNEMBED_MODULES
        return chosen

    def resolve_target_modules(self, model: nn.Module) -> tuple[str, ...]:
        """:attr:`selected_modules`, after checking each names a Linear layer in ``model``.

        A name matches a module whose dotted name equals it or ends with ``.name``.

        Raises:
            ConfigError: (field ``target_modules``) some names match no Linear
                layer; the message lists them and the Linear names the model has.
        """
        linear = [name for name, module in model.named_modules() if _is_adaptable(module)]
        missing = [
            target
            for target in self.selected_modules
            if not any(name == target or name.endswith("." + target) for name in linear)
        ]
        if missing:
            available = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise ConfigError(
                "target_modules",
                f"not found in {type(model).__name__}: {', '.join(missing)}; "
                f"Linear modules available: {', '.join(available) or '(none)'}",
            )
        return self.selected_modules

    def to_peft(self) -> LoraConfig:
        """The equivalent ``peft.LoraConfig`` (task type ``CAUSAL_LM``)."""
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.selected_modules),
            bias=self.bias,
            task_type=TaskType.CAUSAL_LM,
        )


def apply_lora(model: PreTrainedModel, config: LoRAConfig) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; only adapter (and selected bias) weights train.

    Move the model to its device *before* calling this: moving a peft model
    afterwards has been seen to leave LoRA weights untouched by the optimizer.
    ``model`` is modified in place (its targeted layers are replaced).

    Raises:
        ConfigError: the config's target modules are not in ``model``
            (see :meth:`LoRAConfig.resolve_target_modules`).
    """
    config.resolve_target_modules(model)
    with warnings.catch_warnings():
        # peft warns whenever lm_head of a tied model is targeted; the resulting
        # behaviour is intended and documented on LoRAConfig.train_unembed.
        warnings.filterwarnings("ignore", message=r".*tie_word_embeddings=True.*")
        return get_peft_model(model, config.to_peft())


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_adaptable(module: nn.Module) -> bool:
    # GPT-2 style models use transformers' Conv1D, which peft adapts like a Linear.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


__all__ = [
    "ATTN_MODULES",
    "MLP_MODULES",
    "UNEMBED_MODULES",
    "LoRABias",
    "LoRAConfig",
    "apply_lora",
]
