"""What the server asks of a run's engine, as module-level functions ``fn(engine, **kw)``.

Each runs where the engine lives: in this process (in-process backend) or inside the
Ray actor that holds the run (:meth:`server.worker.backends.remote_engine.RemoteEngine.call`);
arguments and results are picklable. :func:`on_engine` dispatches. Whatever returns
from here to the server is ciphertext or public facts: checkpoint plaintext is sealed
(:func:`seal_payload`) and opened (:func:`restore_from_blob`) next to the engine.
"""

from __future__ import annotations

import io
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch

from tensafe.artifacts import Manifest, SealedInfo, TenantKey
from tensafe.engine import EngineInfo, TrainingEngine
from tensafe.models import LoRAConfig
from tensafe.privacy import ResolvedDP

T = TypeVar("T")

#: The engine methods a remote caller may invoke directly (none returns plaintext
#: weights: ``state_dict``/``model`` stay behind :func:`seal_payload`).
REMOTE_METHODS = frozenset({"forward", "forward_backward", "optim_step", "to_batch", "epsilon"})


@dataclass(frozen=True)
class EngineFacts:
    """What the server caches about a run's engine (never changes while it lives)."""

    name: str
    arch: str
    vocab_size: int
    lora_config: LoRAConfig | None
    dp_config: ResolvedDP | None
    info: EngineInfo


@dataclass(frozen=True)
class AccountantSnapshot:
    """The run's accountant now: its ``(σ, q, steps)`` history and its kind."""

    history: tuple[tuple[float, float, int], ...]
    accountant: str


@dataclass(frozen=True)
class SealRequest:
    """Which checkpoint to seal: ``training_state`` (save_state) or ``sampler``
    (save_weights_for_sampler)."""

    kind: Literal["training_state", "sampler"]
    include_optimizer: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SealedBlob:
    """A sealed checkpoint: the whole ciphertext and the seal's identity."""

    data: bytes = field(repr=False)
    info: SealedInfo
    kind: str


def on_engine(engine: object, fn: Callable[..., T], /, **kwargs: object) -> T:
    """``fn(engine, **kwargs)`` where the engine lives (here, or its Ray actor)."""
    call = getattr(engine, "call", None)
    if call is not None and not isinstance(engine, TrainingEngine):
        return call(fn, **kwargs)  # type: ignore[no-any-return]
    return fn(engine, **kwargs)


def call_method(engine: TrainingEngine, *, method: str, args: Sequence[object],
                kwargs: Mapping[str, object]) -> object:  # fmt: skip
    """One of :data:`REMOTE_METHODS` of the engine."""
    if method not in REMOTE_METHODS:
        raise PermissionError(f"engine method {method!r} is not callable remotely")
    return getattr(engine, method)(*args, **kwargs)


def facts(engine: TrainingEngine) -> EngineFacts:
    return EngineFacts(
        name=engine.name,
        arch=engine.arch,
        vocab_size=engine.vocab_size,
        lora_config=engine.lora_config,
        dp_config=None if engine.dp is None else engine.dp.config,
        info=engine.info(),
    )


def info(engine: TrainingEngine) -> EngineInfo:
    return engine.info()


def step(engine: TrainingEngine) -> int:
    return int(engine.step)


def pending_examples(engine: TrainingEngine) -> int:
    """Examples accumulated by forward_backward since the last optim_step."""
    return int(engine._acc_examples)  # no public accessor yet


def tokenizer(engine: TrainingEngine) -> object:
    return engine.tokenizer


def accountant(engine: TrainingEngine) -> AccountantSnapshot:
    assert engine.dp is not None
    acc = engine.dp.accountant
    return AccountantSnapshot(history=tuple(acc.history), accountant=str(acc.accountant))


_BASE_HASHES: weakref.WeakKeyDictionary[TrainingEngine, str | None] = weakref.WeakKeyDictionary()


def base_weights_sha256(engine: TrainingEngine) -> str | None:
    """The frozen base weights' hash, computed once per engine (they never change)."""
    from tensafe.evidence.weights import frozen_weights_sha256

    if engine not in _BASE_HASHES:
        _BASE_HASHES[engine] = frozen_weights_sha256(engine.model)
    return _BASE_HASHES[engine]


def checkpoint_payload(
    engine: TrainingEngine, *, request: SealRequest
) -> tuple[str, dict[str, torch.Tensor], Manifest]:
    """``(kind, tensors, manifest)`` of the checkpoint ``request`` names (plaintext:
    only for sealing next to the engine).

    Raises:
        EngineStateError: gradients are pending (training_state).
    """
    from server.worker import engine_checkpoints

    if request.kind == "training_state":
        tensors, manifest = engine_checkpoints.training_state_payload(
            engine,
            include_optimizer=request.include_optimizer,
            metadata=request.metadata,
            labels=request.labels,
        )
        return "training_state", tensors, manifest
    return engine_checkpoints.sampler_payload(
        engine, metadata=request.metadata, labels=request.labels
    )


def seal_payload(
    engine: TrainingEngine, *, request: SealRequest, tenant_key: TenantKey, artifact_id: str
) -> SealedBlob:
    """The checkpoint ``request`` names, sealed under ``tenant_key`` (the whole
    ciphertext in memory; the plaintext never leaves this function).

    Raises:
        EngineStateError: gradients are pending (training_state).
        ConfigError: bad metadata or tensors.
    """
    from tensafe.artifacts import seal_checkpoint

    kind, tensors, manifest = checkpoint_payload(engine, request=request)
    out = io.BytesIO()
    sealed = seal_checkpoint(
        tensors=tensors, manifest=manifest, tenant_key=tenant_key, artifact_id=artifact_id, out=out
    )
    return SealedBlob(data=out.getvalue(), info=sealed, kind=kind)


def restore_from_blob(
    engine: TrainingEngine,
    *,
    blob: bytes,
    tenant_key: TenantKey,
    artifact_id: str,
    content_hash: str,
    history: Sequence[tuple[float, float]],
    include_optimizer: bool,
) -> int:
    """Open a sealed checkpoint (verified in full before any plaintext is used) and
    restore the engine from it; returns the restored step.

    Raises:
        IntegrityError, ArtifactFormatError: the blob does not open (the caller makes
            this one opaque error).
        EngineStateError: weights or optimizer do not fit this engine.
    """
    from server.worker import engine_checkpoints
    from tensafe.artifacts import open_checkpoint

    opened = open_checkpoint(
        io.BytesIO(blob),
        keys=tenant_key,
        tenant_id=tenant_key.tenant_id,
        artifact_id=artifact_id,
        expected_content_hash=content_hash,
    )
    return engine_checkpoints.restore_engine(
        engine,
        tensors=opened.tensors,
        manifest=opened.manifest,
        history=list(history),
        include_optimizer=include_optimizer,
    )


__all__ = [
    "REMOTE_METHODS",
    "AccountantSnapshot",
    "EngineFacts",
    "SealRequest",
    "SealedBlob",
    "accountant",
    "base_weights_sha256",
    "call_method",
    "checkpoint_payload",
    "facts",
    "info",
    "on_engine",
    "pending_examples",
    "restore_from_blob",
    "seal_payload",
    "step",
    "tokenizer",
]
