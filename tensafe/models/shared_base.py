"""Many LoRA runs on one base model in memory: a pool of frozen base models.

A worker that holds several runs' LoRA adapters on the same base model keeps the
base weights once. :class:`BaseModelPool` loads each base model once (with
:func:`~tensafe.models.load_causal_lm`) and hands every LoRA run a module tree of
its own whose *frozen* parameters and buffers share storage with the pooled base:
memory ≈ one base + N × (adapter + optimizer state).

Why per-run module trees and not peft's multiple adapters on one model
-----------------------------------------------------------------------
peft can hold several adapters on one model and switch the active one per
operation. That makes isolation a matter of discipline: every operation must
switch the adapter, the per-example clipping hooks, ``requires_grad`` flags and
train/eval modes, and two runs can never compute at the same time (they share
modules, so one lock covers all of them). Here each run gets its own tree instead,
built by ``copy.deepcopy`` with a memo that maps every base parameter and buffer to
a new ``Parameter`` / tensor *aliasing the same storage*. So, by construction:

* each run has its own modules (its own LoRA layers, clipping hooks, train/eval
  mode, ``requires_grad`` flags, ``.grad`` and Opacus attributes) and, in the
  engine, its own optimizer, clipper state, accumulator and noise stream;
* nothing one run does to its modules is visible to another, except the frozen
  base storage, which nobody writes: a trainable parameter never shares storage
  with the pool (:func:`privatize_trainable` gives any base tensor that a config
  makes trainable, e.g. peft ``bias="all"``, a private copy, and then checks);
  full fine-tuning on a pooled model is refused by the engine;
* two runs' operations may run on separate threads at once: their model locks
  (:func:`~tensafe.models.model_lock`) are per tree, and concurrent reads of
  shared tensors are safe. Training and generation *on one run* still share that
  run's lock and never interleave.

The cost is a few kilobytes of Python objects per tree (modules, config); the
weights are not copied. Tied weights stay tied within a tree (the memo maps the
one shared ``Parameter`` to one alias).

Release policy
--------------
The pool holds a base only while some run's tree built from it is alive: each tree
keeps its base's pool entry alive, the pool itself refers to entries weakly. When
the last tree is garbage-collected (its engine disposed), the base is freed; the
next run of that model loads it again.

Example::

    >>> from tensafe.models import BaseModelPool
    >>> pool = BaseModelPool()
    >>> a = pool.lora_model(model_ref="tiny-llama")
    >>> b = pool.lora_model(model_ref="tiny-llama")
    >>> a.model is b.model
    False
    >>> wa, wb = a.model.lm_head.weight, b.model.lm_head.weight
    >>> wa.data_ptr() == wb.data_ptr(), wa.requires_grad
    (True, False)
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from tensafe.errors import PrivacyError
from tensafe.models.loaded import LoadedModel
from tensafe.models.locking import lock_owner
from tensafe.models.resolve import load_causal_lm


class ModelLoader(Protocol):
    """What loads a base model: :func:`~tensafe.models.load_causal_lm`'s signature."""

    def __call__(
        self,
        model_ref: str,
        *,
        dtype: torch.dtype | None,
        device: str | torch.device,
        cache_dir: Path | None,
        allow_paths: bool,
    ) -> LoadedModel: ...


@dataclass(frozen=True)
class _Key:
    model_ref: str
    device: str
    dtype: str | None
    cache_dir: str | None
    allow_paths: bool


@dataclass(eq=False)
class _Base:
    """One pooled base model and the storages of its frozen tensors."""

    loaded: LoadedModel
    storages: frozenset[int]


# tree -> the pool entry it was built from (keeps the base alive while the tree lives;
# the entry is dropped by WeakKeyDictionary when the tree is collected)
_TREES: weakref.WeakKeyDictionary[nn.Module, _Base] = weakref.WeakKeyDictionary()
_TREES_LOCK = threading.Lock()


class BaseModelPool:
    """Base models loaded once, shared (frozen) by the LoRA runs of one worker.

    Thread-safe: any number of threads may ask for models; a base is loaded once
    even when several threads ask for it at the same time (different bases load
    in parallel).

    Args:
        loader: how a base model is loaded (:func:`~tensafe.models.load_causal_lm`;
            another loader with its keyword signature may be given, e.g. in tests).

    Example::

        >>> pool = BaseModelPool()
        >>> run = pool.lora_model(model_ref="tiny-llama")
        >>> pool.loaded_bases()
        ['tiny-llama']
    """

    def __init__(self, *, loader: ModelLoader = load_causal_lm) -> None:
        self._loader = loader
        self._bases: weakref.WeakValueDictionary[_Key, _Base] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._loading: dict[_Key, threading.Lock] = {}

    def lora_model(
        self,
        *,
        model_ref: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: Path | None = None,
        allow_paths: bool = True,
    ) -> LoadedModel:
        """A model for one LoRA run: its own module tree whose frozen parameters and
        buffers share storage with the pooled base (loaded now if no live run uses it).

        Every parameter of the returned model has ``requires_grad=False``; wrap it
        with :func:`~tensafe.models.apply_lora` (the engine does) and call
        :func:`privatize_trainable` before building an optimizer. The tokenizer is a
        copy of its own (a fast tokenizer is not safe to share across threads).
        Arguments are those of :func:`~tensafe.models.load_causal_lm`; runs share a
        base only when all of them are equal.

        Raises:
            ConfigError, ModelLoadError: as :func:`~tensafe.models.load_causal_lm`.
        """
        key = _Key(
            model_ref=model_ref.strip() if isinstance(model_ref, str) else str(model_ref),
            device=str(device),
            dtype=None if dtype is None else str(dtype),
            cache_dir=None if cache_dir is None else str(cache_dir),
            allow_paths=allow_paths,
        )
        base = self._base(
            key,
            lambda: self._loader(
                model_ref, dtype=dtype, device=device, cache_dir=cache_dir, allow_paths=allow_paths
            ),
        )
        tree = _alias_tree(base.loaded.model)
        with _TREES_LOCK:
            _TREES[tree] = base
        return LoadedModel(
            model=tree,
            tokenizer=copy.deepcopy(base.loaded.tokenizer),
            name=base.loaded.name,
            arch=base.loaded.arch,
            source=base.loaded.source,
        )

    def loaded_bases(self) -> list[str]:
        """Names of the base models in memory (some live run uses each)."""
        with self._lock:
            return sorted(base.loaded.name for base in self._bases.values())

    def _base(self, key: _Key, load: Callable[[], LoadedModel]) -> _Base:
        with self._lock:
            base = self._bases.get(key)
            if base is not None:
                return base
            loading = self._loading.setdefault(key, threading.Lock())
        try:
            with loading:  # one thread loads a given base; others wait for it
                with self._lock:
                    base = self._bases.get(key)
                if base is None:
                    base = _freeze(load())
                    with self._lock:
                        self._bases[key] = base
        finally:
            with self._lock:
                self._loading.pop(key, None)
        return base


def _freeze(loaded: LoadedModel) -> _Base:
    model = loaded.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tensors = [*model.parameters(), *model.buffers()]
    return _Base(loaded=loaded, storages=frozenset(_storage(t) for t in tensors))


def _alias_tree(base: nn.Module) -> nn.Module:
    """A deep copy of ``base`` whose parameters and buffers are new tensor objects
    aliasing ``base``'s storage (frozen); everything else is copied."""
    memo: dict[int, object] = {}
    for p in base.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
    for b in base.buffers():
        memo[id(b)] = b.detach()
    return copy.deepcopy(base, memo)


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def shared_base_storages(model: nn.Module) -> frozenset[int] | None:
    """The storage addresses ``model`` shares with a pooled base (a tree from
    :meth:`BaseModelPool.lora_model`, peft-wrapped or not), or ``None`` when
    ``model`` is not from a pool."""
    with _TREES_LOCK:
        base = _TREES.get(lock_owner(model))
    return None if base is None else base.storages


def privatize_trainable(model: nn.Module) -> tuple[str, ...]:
    """Give every trainable parameter of ``model`` that shares storage with its
    pooled base a private copy (so training it never writes the shared base), then
    check that no trainable parameter shares storage with the pool. Call it after
    wrapping (peft may make base tensors trainable, e.g. ``bias="all"``) and before
    building the optimizer. Returns the names of the parameters copied; a model not
    from a pool is left alone.

    Raises:
        PrivacyError: a trainable parameter still shares the pool's storage (the
            shared base would be modified); nothing should train this model.
    """
    shared = shared_base_storages(model)
    if shared is None:
        return ()
    copied: list[str] = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and _storage(p) in shared:
                p.data = p.data.clone()
                copied.append(name)
    still = [n for n, p in model.named_parameters() if p.requires_grad and _storage(p) in shared]
    if still:
        raise PrivacyError(
            "trainable parameters share storage with the pooled base model: " + ", ".join(still[:5])
        )
    return tuple(copied)


__all__ = ["BaseModelPool", "ModelLoader", "privatize_trainable", "shared_base_storages"]
