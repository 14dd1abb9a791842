"""Activation checkpointing per decoder layer, non-reentrant only.

With checkpointing on, a decoder layer's forward keeps only its inputs; the backward
pass runs the layer again to regenerate the tensors its backward needs. That trades
one extra forward per step for the activations of every layer but one.

Only torch's *non-reentrant* checkpoint (``use_reentrant=False``) is ever set.
Under it the recomputed forward only refills the saved tensors of the original
graph's nodes: the backward functions that run are the original ones, once each,
so per-example clipping (:mod:`tensafe.privacy.per_example`), whose layers report
to a collector from their backward, sees every layer use exactly once, as without
checkpointing. The reentrant variant runs a second, nested backward and is never
used: a tree found with it is refused.

HF models checkpoint a layer only in training mode with gradients enabled, so a
forward in ``eval()`` or under ``torch.no_grad()`` is unaffected.

The flags live on the tree's own modules: a pooled run's tree
(:class:`~tensafe.models.BaseModelPool`) shares only weights with the others, so
turning checkpointing on for one run changes no other run.

Example::

    >>> from tensafe.models import build_tiny_llama
    >>> from tensafe.models.checkpointing import set_activation_checkpointing
    >>> model = build_tiny_llama().model
    >>> set_activation_checkpointing(model, enabled=True)
    2
"""

from __future__ import annotations

import functools

import torch.utils.checkpoint
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from tensafe.errors import ConfigError

FIELD = "activation_checkpointing"


def _pretrained(model: nn.Module) -> PreTrainedModel | None:
    """The outermost HF model in ``model`` (itself, or the one a peft wrapper holds)."""
    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def _is_non_reentrant(func: object) -> bool:
    return (
        isinstance(func, functools.partial)
        and func.func is torch.utils.checkpoint.checkpoint
        and func.keywords.get("use_reentrant") is False
    )


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of ``model`` whose forward is checkpointed now (in training
    mode with gradients enabled).

    Raises:
        ConfigError: (``activation_checkpointing``) a layer is set to checkpoint with
            anything but torch's non-reentrant checkpoint.
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
    ]
    for layer in layers:
        if not _is_non_reentrant(getattr(layer, "_gradient_checkpointing_func", None)):
            raise ConfigError(
                FIELD,
                f"{type(layer).__name__} is set to checkpoint with something other than "
                "torch's non-reentrant checkpoint (use_reentrant=False); reentrant "
                "checkpointing is refused under per-example clipping",
            )
    return layers


def set_activation_checkpointing(model: nn.Module, *, enabled: bool) -> int:
    """Turn per-decoder-layer activation checkpointing on or off for ``model`` (an HF
    causal LM, possibly wrapped by peft) and return how many layers it checkpoints.

    On: every decoder layer's forward runs under ``torch.utils.checkpoint.checkpoint(
    ..., use_reentrant=False)`` in training mode; HF's hook that makes the input
    embeddings' output require gradients (only reentrant checkpointing needs it) is
    removed again, so a frozen embedding keeps producing a tensor without gradient.
    Off: no layer is checkpointed.

    Raises:
        ConfigError: (``activation_checkpointing``) on, but the architecture does not
            support it (not an HF model, ``supports_gradient_checkpointing`` false, no
            checkpointable decoder layer, or HF did not install the non-reentrant
            checkpoint); nothing is left half-enabled.
    """
    hf = _pretrained(model)
    if not enabled:  # what HF's disable does, on any module carrying the flag
        for module in model.modules():
            if getattr(module, "gradient_checkpointing", False) is True:
                module.gradient_checkpointing = False
        return 0
    name = type(hf if hf is not None else model).__name__
    if hf is None or not hf.supports_gradient_checkpointing:
        raise ConfigError(FIELD, f"{name} does not support activation checkpointing")
    if not any(isinstance(m, GradientCheckpointingLayer) for m in hf.modules()):
        raise ConfigError(FIELD, f"{name} has no checkpointable decoder layer")
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(hf, "activation_checkpointing_enable"):  # transformers ≥ 5
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        hf.disable_input_require_grads()
        layers = checkpointed_layers(hf)
    except (ValueError, NotImplementedError) as exc:
        set_activation_checkpointing(model, enabled=False)
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(FIELD, f"{name}: {exc}") from exc
    if not layers:
        set_activation_checkpointing(model, enabled=False)
        raise ConfigError(FIELD, f"{name} checkpointed no decoder layer")
    return len(layers)


__all__ = ["checkpointed_layers", "set_activation_checkpointing"]
