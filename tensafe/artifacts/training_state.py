"""Lossless, pickle-free flattening of nested training state (optimizer state dicts).

A torch optimizer ``state_dict()`` is a tree of dicts (int and str keys), lists,
tuples, numbers, strings, ``None`` and tensors. :func:`flatten_state` splits it
into named tensors (stored in the safetensors file) and a JSON structure (stored
in the manifest); :func:`unflatten_state` rebuilds an equal tree, including key
types, tuples versus lists and non-finite floats.

Structure encoding (every JSON object in it is one of these tags)::

    {"__dict__": [[key, value], ...]}   {"__tuple__": [...]}
    {"__tensor__": "<name>"}            {"__float__": "nan" | "inf" | "-inf"}

and JSON null/bool/int/float/str/list for themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from tensafe.artifacts.manifest import Manifest
from tensafe.errors import ArtifactFormatError, ConfigError

MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer"

_TAGS = ("__dict__", "__tuple__", "__tensor__", "__float__")


def flatten_state(state: object, *, prefix: str) -> tuple[dict[str, torch.Tensor], object]:
    """Split ``state`` into ``(tensors, structure)``; tensor names start with ``prefix``.

    Raises:
        ConfigError: for a value of a type that cannot be stored without pickle.
    """
    tensors: dict[str, torch.Tensor] = {}

    def name_for(path: list[str]) -> str:
        base = ".".join([prefix, *path])
        name, n = base, 1
        while name in tensors:
            name, n = f"{base}#{n}", n + 1
        return name

    def encode(value: object, path: list[str]) -> object:
        if isinstance(value, torch.Tensor):
            name = name_for(path)
            tensors[name] = value.detach()
            return {"__tensor__": name}
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v, [*path, str(i)]) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, [*path, str(i)]) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {
                "__dict__": [
                    [encode(k, path), encode(v, [*path, str(k)])] for k, v in value.items()
                ]
            }
        raise ConfigError(
            ".".join(path) or "state", f"cannot store a {type(value).__name__} without pickle"
        )

    return tensors, encode(state, [])


def unflatten_state(structure: object, tensors: Mapping[str, torch.Tensor]) -> object:
    """Inverse of :func:`flatten_state`.

    Raises:
        ArtifactFormatError: if the structure is malformed or names a missing tensor.
    """

    def decode(node: object) -> object:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [decode(v) for v in node]
        if isinstance(node, dict) and len(node) == 1:
            ((tag, body),) = node.items()
            if tag == "__tensor__" and isinstance(body, str):
                if body not in tensors:
                    raise ArtifactFormatError(f"training state names missing tensor {body!r}")
                return tensors[body]
            if tag == "__float__" and body in ("nan", "inf", "-inf"):
                return float(body)
            if tag == "__tuple__" and isinstance(body, list):
                return tuple(decode(v) for v in body)
            if tag == "__dict__" and isinstance(body, list):
                pairs = [decode_pair(p) for p in body]
                return dict(pairs)
        raise ArtifactFormatError("training state structure is malformed")

    def decode_pair(pair: object) -> tuple[object, object]:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ArtifactFormatError("training state structure is malformed")
        key = decode(pair[0])
        try:
            hash(key)
        except TypeError:
            raise ArtifactFormatError("training state has an unhashable dict key") from None
        return key, decode(pair[1])

    return decode(structure)


@dataclass(frozen=True)
class TrainingState:
    """Model weights, optimizer state and accountant history of a training run."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, object]
    accountant_history: list[dict[str, object]]


def pack_training_state(
    *,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, object],
    accountant_history: Sequence[Mapping[str, object]],
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Return ``(tensors, training_state)`` for a ``training_state`` manifest.

    Model tensors are stored as ``model.<name>``, optimizer tensors under
    ``optimizer.``; ``training_state`` goes into ``Manifest(training_state=...)``.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.AdamW([p])
        >>> tensors, info = pack_training_state(model_state={"w": p},
        ...     optimizer_state=opt.state_dict(), accountant_history=[])
        >>> sorted(info)
        ['accountant_history', 'optimizer']

    Raises:
        ConfigError: for state that cannot be stored without pickle.
    """
    tensors = {MODEL_PREFIX + name: t.detach() for name, t in model_state.items()}
    optimizer_tensors, structure = flatten_state(dict(optimizer_state), prefix=OPTIMIZER_PREFIX)
    tensors.update(optimizer_tensors)
    history = [dict(entry) for entry in accountant_history]
    return tensors, {"optimizer": structure, "accountant_history": history}


def unpack_training_state(tensors: Mapping[str, torch.Tensor], manifest: Manifest) -> TrainingState:
    """Rebuild a :class:`TrainingState` from an opened ``training_state`` checkpoint.

    Raises:
        ConfigError: if the manifest is not of kind ``training_state``.
        ArtifactFormatError: if the stored structure is malformed.
    """
    if manifest.kind != "training_state" or manifest.training_state is None:
        raise ConfigError("manifest.kind", "must be 'training_state'")
    model_state = {
        name[len(MODEL_PREFIX) :]: t for name, t in tensors.items() if name.startswith(MODEL_PREFIX)
    }
    optimizer_state = unflatten_state(manifest.training_state["optimizer"], tensors)
    if not isinstance(optimizer_state, dict):
        raise ArtifactFormatError("optimizer state is not a dict")
    history = manifest.training_state["accountant_history"]
    assert isinstance(history, list)
    return TrainingState(model_state, optimizer_state, history)


__all__ = [
    "TrainingState",
    "flatten_state",
    "pack_training_state",
    "unflatten_state",
    "unpack_training_state",
]
