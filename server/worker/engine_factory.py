"""Build a run's :class:`~tensafe.engine.TrainingEngine`: the one place a model is loaded
for training, called by the in-process backend and inside a Ray actor alike.

Only :class:`EngineOptions` (plain, picklable values derived from the settings) crosses
to a Ray actor, never the :class:`~server.settings.Settings` themselves (they name the
database, the key provider and the storage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from server.services.wire import EngineSpec
from server.settings import Settings
from tensafe.engine import TrainingEngine
from tensafe.engine.allocator import retain_freed_memory
from tensafe.errors import ModelLoadError
from tensafe.losses import BatchLimits
from tensafe.models import BaseModelPool

log = logging.getLogger("tensafe.server.worker")


@dataclass(frozen=True)
class EngineOptions:
    """The server settings an engine is built with.

    Attributes:
        device: torch device (a Ray actor given a GPU sees it as ``cuda``).
        model_cache_dir: where models are prepared/cached (``None``: tensafe's cache).
        allow_model_paths: ``model_ref`` may name a directory.
        deterministic_noise: development only: seed the DP noise from the run seed.
        max_batch_size, max_seq_len: the engine's batch limits.
        microbatch_examples: the engine runs at most this many examples at a time
            (``None``: each batch in one pass).
        activation_checkpointing: the engine recomputes each decoder layer in the
            backward pass instead of keeping its activations.
        retain_freed_memory: the process that builds the engine keeps freed memory
            for reuse (:func:`tensafe.engine.allocator.retain_freed_memory`).
    """

    device: str
    model_cache_dir: Path | None
    allow_model_paths: bool
    deterministic_noise: bool
    max_batch_size: int
    max_seq_len: int
    microbatch_examples: int | None
    activation_checkpointing: bool
    retain_freed_memory: bool

    @classmethod
    def from_settings(cls, settings: Settings, *, device: str | None = None) -> EngineOptions:
        return cls(
            device=device or settings.device,
            model_cache_dir=settings.model_cache_dir,
            allow_model_paths=settings.allow_model_paths,
            deterministic_noise=settings.deterministic_noise,
            max_batch_size=settings.max_batch_size,
            max_seq_len=settings.max_seq_len,
            microbatch_examples=settings.microbatch_examples,
            activation_checkpointing=settings.activation_checkpointing,
            retain_freed_memory=settings.retain_freed_memory,
        )

    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(max_batch_size=self.max_batch_size, max_seq_len=self.max_seq_len)


def build_engine(
    *,
    run_id: str,
    spec: EngineSpec,
    options: EngineOptions,
    base_models: BaseModelPool | None = None,
) -> TrainingEngine:
    """A fresh engine for the run (loads the model; fresh weights from the run's seed).

    With ``base_models`` (one pool per worker process or actor), a LoRA run's model
    shares the frozen weights of that pool's base with the other LoRA runs of the same
    model there; a full fine-tuning run always loads a model of its own.

    Raises:
        ModelLoadError: the model did not load; the message names no server path (the
            details go to the log).
    """
    from tensafe.models import load_causal_lm

    if options.retain_freed_memory:  # a process setting; idempotent
        retain_freed_memory()
    try:
        if spec.lora is not None and base_models is not None:
            loaded = base_models.lora_model(
                model_ref=spec.model_ref,
                device=options.device,
                cache_dir=options.model_cache_dir,
                allow_paths=options.allow_model_paths,
            )
        else:
            loaded = load_causal_lm(
                spec.model_ref,
                device=options.device,
                cache_dir=options.model_cache_dir,
                allow_paths=options.allow_model_paths,
            )
    except ModelLoadError as exc:
        # The details name the server's directories: the log gets them, the tenant not.
        log.warning("run %s: model %r did not load: %s", run_id, spec.model_ref, exc)
        raise ModelLoadError(
            f"model {spec.model_ref!r} could not be loaded on this server; ask the "
            "operator which models it serves"
        ) from None
    return TrainingEngine(
        model=loaded,
        lora_config=spec.lora,
        dp_config=spec.dp,
        optimizer=spec.optimizer,
        seed=spec.seed,
        # Noise is keyed from the OS CSPRNG; a fixed seed only in development
        # (tests comparing runs), since a known seed lets anyone subtract the noise.
        noise_seed=spec.seed if options.deterministic_noise else None,
        device=options.device,
        limits=options.limits,
        microbatch_examples=options.microbatch_examples,
        activation_checkpointing=options.activation_checkpointing,
    )


__all__ = ["EngineOptions", "build_engine"]
