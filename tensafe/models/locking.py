"""One lock per model, shared by everything that uses the model's weights.

Training (:class:`~tensafe.engine.TrainingEngine`) and generation
(:class:`~tensafe.generation.Sampler`) may run on different threads against the
same model. Generation switches the model to eval mode and may switch its active
LoRA adapter; training must never run in between. Both therefore hold
:func:`model_lock` for the whole of each operation: a training step waits for a
running generation batch to finish, and a generation batch waits for a running
training step.

The lock belongs to the *base* model: a peft wrapper and the model it wraps share
one lock, so wrapping a model later does not split it. It is re-entrant, so an
operation may call another that takes it too.

Example::

    >>> from tensafe.models import build_tiny_llama, model_lock
    >>> model = build_tiny_llama().model
    >>> with model_lock(model):
    ...     pass  # nobody else trains or samples on `model` here
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from torch import nn

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()

P = ParamSpec("P")
R = TypeVar("R")


class HasModel(Protocol):
    model: nn.Module


S = TypeVar("S", bound=HasModel)


def lock_owner(model: nn.Module) -> nn.Module:
    """The module whose lock guards ``model``: the base model of a peft wrapper,
    else ``model`` itself."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        base = get_base()
        if isinstance(base, nn.Module):
            return base
    return model


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock shared by every user of ``model``'s weights (the same
    object for a peft wrapper and its base model). Lives as long as the model."""
    owner = lock_owner(model)
    with _REGISTRY_LOCK:
        lock = _LOCKS.get(owner)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[owner] = lock
        return lock


def holds_model_lock(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Decorator for methods of an object with a ``model`` attribute: the method
    runs while holding :func:`model_lock` of ``self.model``."""

    @functools.wraps(method)
    def locked(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        with model_lock(self.model):
            return method(self, *args, **kwargs)

    return locked


__all__ = ["holds_model_lock", "lock_owner", "model_lock"]
