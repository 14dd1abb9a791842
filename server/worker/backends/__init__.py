"""Where runs' engines live: this process (``inprocess``, the default) or Ray actors
(``ray``, :mod:`server.worker.backends.ray_backend`; imported only when chosen).

A backend builds a run's engine and hands back either the
:class:`~tensafe.engine.TrainingEngine` itself or a
:class:`~server.worker.backends.remote_engine.RemoteEngine` that stands for it; the
server calls either through the same surface (cheap facts, ``forward``/
``forward_backward``/``optim_step``, and :func:`server.worker.engine_calls.on_engine`
for everything else).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from server.services.wire import EngineSpec
from server.settings import Settings
from server.worker.backends.remote_engine import RemoteEngine
from server.worker.engine_factory import EngineOptions, build_engine
from tensafe.engine import TrainingEngine

#: A run's engine as the server sees it.
Engine = TrainingEngine | RemoteEngine

#: Called with the run ids a backend lost (their engines are gone).
LostRuns = Callable[[list[str]], None]


class WorkerBackend(Protocol):
    """Builds, re-attaches and releases runs' engines."""

    name: str

    def build(self, *, run_id: str, spec: EngineSpec) -> Engine:
        """A fresh engine for the run (fresh weights from its seed).

        Raises:
            ModelLoadError: the model did not load.
            ServiceUnavailableError: no worker can take the run now (retry).
        """
        ...

    def attach(self, *, run_id: str, step: int) -> Engine | None:
        """The run's engine if a live worker still holds it at exactly ``step`` with no
        pending gradients (after a server restart); otherwise ``None`` (and a stale
        copy is dropped)."""
        ...

    def release(self, run_id: str) -> None:
        """Free the run's engine (no-op if none)."""
        ...

    def close(self) -> None:
        """Stop using the backend (the server is stopping)."""
        ...


class InProcessBackend:
    """Engines in this process (today's behaviour; no extra dependency)."""

    name = "inprocess"

    def __init__(self, settings: Settings) -> None:
        self.options = EngineOptions.from_settings(settings)

    def build(self, *, run_id: str, spec: EngineSpec) -> Engine:
        return build_engine(run_id=run_id, spec=spec, options=self.options)

    def attach(self, *, run_id: str, step: int) -> Engine | None:
        return None  # engines in this process do not outlive it

    def release(self, run_id: str) -> None:
        return None

    def close(self) -> None:
        return None


def make_backend(settings: Settings, *, on_lost: LostRuns) -> WorkerBackend:
    """The backend ``settings.worker_backend`` names (Ray is imported only for ``ray``).

    Raises:
        ServiceUnavailableError: Ray is not installed or could not be reached.
    """
    if settings.worker_backend == "ray":
        from server.worker.backends.ray_backend import RayBackend

        return RayBackend(settings, on_lost=on_lost)
    return InProcessBackend(settings)


__all__ = [
    "Engine",
    "InProcessBackend",
    "LostRuns",
    "RemoteEngine",
    "WorkerBackend",
    "make_backend",
]
