"""The Ray actor that holds runs' engines (a plain class; :mod:`ray_backend` makes it
an actor). Ray runs one method at a time per actor (no ``max_concurrency``), in the
order the server submitted them, so a run's operations keep their queue order and two
runs on one actor never interleave inside an operation.

Each run has its own :class:`~tensafe.engine.TrainingEngine` — its own adapter,
optimizer, clipper accumulator and noise generator — keyed by run id; a call names
its run and touches only that engine. LoRA runs of one base model share its frozen
weights through the actor's :class:`~tensafe.models.BaseModelPool` (one base in memory
plus each run's adapter and optimizer state); a full fine-tuning run loads its own.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

from server.services.wire import EngineSpec
from server.worker import engine_calls
from server.worker.engine_calls import EngineFacts
from server.worker.engine_factory import EngineOptions, build_engine
from tensafe.engine import TrainingEngine
from tensafe.models import BaseModelPool


class RunNotHeldError(LookupError):
    """The actor holds no engine for the run (it was released or never built)."""


class EngineHost:
    """Runs' engines in one actor process."""

    def __init__(self, options: EngineOptions) -> None:
        self._options = options
        self._base_models = BaseModelPool()
        self._engines: dict[str, TrainingEngine] = {}
        self._placements: dict[str, tuple[str, bool]] = {}

    def pid(self) -> int:
        return os.getpid()

    def build(self, run_id: str, spec: EngineSpec) -> EngineFacts:
        """Build (or replace) the run's engine; its public facts."""
        self.release(run_id)
        engine = build_engine(
            run_id=run_id, spec=spec, options=self._options, base_models=self._base_models
        )
        self._engines[run_id] = engine
        self._placements[run_id] = (spec.model_ref, spec.lora is not None)
        return engine_calls.facts(engine)

    def facts(self, run_id: str) -> EngineFacts:
        return engine_calls.facts(self._engine(run_id))

    def call(self, run_id: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        return fn(self._engine(run_id), **kwargs)

    def release(self, run_id: str) -> None:
        self._placements.pop(run_id, None)
        if self._engines.pop(run_id, None) is not None:
            gc.collect()

    def runs(self) -> dict[str, tuple[int, int]]:
        """``{run_id: (step, pending examples)}`` of the engines held."""
        return {
            run_id: (engine_calls.step(e), engine_calls.pending_examples(e))
            for run_id, e in self._engines.items()
        }

    def placements(self) -> dict[str, tuple[str, bool]]:
        """``{run_id: (base model ref, is LoRA)}`` of the engines held (so a restarted
        server keeps a full fine-tuning run's actor to itself)."""
        return dict(self._placements)

    def _engine(self, run_id: str) -> TrainingEngine:
        engine = self._engines.get(run_id)
        if engine is None:
            raise RunNotHeldError(f"this worker holds no engine for run {run_id}")
        return engine


__all__ = ["EngineHost", "RunNotHeldError"]
