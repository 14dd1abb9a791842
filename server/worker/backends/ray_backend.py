"""Runs' engines in Ray actors (``TENSAFE_WORKER_BACKEND=ray``).

* **Cluster.** ``ray_address`` names an existing cluster (``ray://…`` or ``host:port``);
  without it the server starts a local Ray (no dashboard). Actors are named
  ``tensafe-worker-<n>`` in ``ray_namespace``; on an existing cluster they are
  detached, so they outlive a server restart and the restarted server can re-attach.
* **Actors.** At most ``ray_actors`` (default: the cluster's GPUs when ``device`` is
  CUDA, else 1), each with ``num_gpus=1`` on CUDA or ``ray_cpus_per_actor`` CPUs, each
  holding up to ``ray_runs_per_actor`` runs.
* **Placement** (in memory, nothing in the database): a LoRA run goes to a live actor
  already holding LoRA runs of the same base model while it has room, else to an empty
  actor, else to a new one, else to any actor with room; a full fine-tuning run needs
  an actor of its own. No room anywhere: 503, retry later.
* **Faults.** A call that finds its actor dead (``RayActorError``) forgets the actor,
  hands its runs to ``on_lost`` (the server evicts them) and raises
  :class:`~server.errors.WorkerLostError` (503, retryable); the next operation
  rebuilds the run on a live or new actor from its checkpoint and the ledger. A *hung*
  actor is lost the same way: a call still running ``ray_call_timeout_s`` after the
  actor finished its previous call (or after it was submitted to an idle actor), or an
  actor not started within ``ray_actor_start_timeout_s``, gets the actor killed
  (``ray.kill``); every call waiting on it, running or queued, then fails with
  ``WorkerLostError`` at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.errors import ServiceUnavailableError, WorkerLostError
from server.services.wire import EngineSpec
from server.settings import Settings
from server.worker.backends import LostRuns
from server.worker.backends.ray_actor import EngineHost
from server.worker.backends.remote_engine import RemoteEngine
from server.worker.engine_calls import EngineFacts
from server.worker.engine_factory import EngineOptions

log = logging.getLogger("tensafe.server.worker")

T = TypeVar("T")
ACTOR_PREFIX = "tensafe-worker-"


class ActorHungError(TimeoutError):
    """A worker actor did not finish a call (or did not start) in time; it is then
    killed and treated as lost (never leaves :class:`RayBackend`)."""


@dataclass(eq=False)
class ActorSlot:
    """One actor and the runs the server placed on it."""

    name: str
    handle: Any
    backend: RayBackend
    base_model: str | None = None
    exclusive: bool = False  # a full fine-tuning run
    runs: set[str] = field(default_factory=set)
    alive: bool = True
    lost_reason: str = "was lost"  # why it was lost, for every call that finds it so
    starting: Any = None  # a new actor's first call (``pid``), until it has answered
    inflight: int = 0  # calls the server submitted and has not seen finish
    busy_since: float = 0.0  # when the actor's current call began, as the server sees it

    def invoke(self, run_id: str, fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
        return self.backend.invoke(self, "call", run_id, fn, kwargs)  # type: ignore[no-any-return]


class RayBackend:
    """Places runs on Ray actors and forwards their calls (thread-safe)."""

    name = "ray"

    def __init__(self, settings: Settings, *, on_lost: LostRuns) -> None:
        try:
            import ray
        except ImportError as exc:  # the ray extra is not installed
            raise ServiceUnavailableError(
                "worker_backend is 'ray' but Ray is not installed (pip install 'tensafe[ray]')"
            ) from exc
        self._ray = ray
        self._on_lost = on_lost
        self._settings = settings
        self._detached = settings.ray_address is not None
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(
                address=settings.ray_address,
                namespace=settings.ray_namespace,
                include_dashboard=False,
                num_cpus=None if settings.ray_address else settings.ray_num_cpus,
                log_to_driver=False,
                configure_logging=False,
            )
        self._gpu = settings.device.startswith("cuda")
        self._options = EngineOptions.from_settings(
            settings, device="cuda" if self._gpu else settings.device
        )
        self._max_actors = settings.ray_actors or self._default_actors()
        self._capacity = settings.ray_runs_per_actor
        self._call_timeout = settings.ray_call_timeout_s
        self._start_timeout = settings.ray_actor_start_timeout_s
        self._lock = threading.Lock()
        self._slots: list[ActorSlot] = []
        self._names = itertools.count()
        if self._detached:
            self._discover()

    def _default_actors(self) -> int:
        if self._gpu:
            return max(1, int(self._ray.cluster_resources().get("GPU", 1)))
        return 1

    # ------------------------------------------------------------- actors
    def _new_actor(self, name: str) -> Any:
        actor = self._ray.remote(EngineHost)
        options: dict[str, Any] = {
            "name": name,
            "namespace": self._settings.ray_namespace,
            "max_restarts": 0,  # a restarted actor would hold no engines: we rebuild instead
        }
        if self._gpu:
            options["num_gpus"] = 1
        else:
            options["num_cpus"] = self._settings.ray_cpus_per_actor
        if self._detached:
            options["lifetime"] = "detached"
        return actor.options(**options).remote(self._options)

    def _discover(self) -> None:
        """Adopt this namespace's live worker actors (after a server restart); their
        runs count against capacity until re-attached or dropped."""
        from ray.util import list_named_actors

        for name in sorted(list_named_actors()):
            if not name.startswith(ACTOR_PREFIX):
                continue
            try:
                handle = self._ray.get_actor(name, namespace=self._settings.ray_namespace)
                held = self._ray.get(handle.placements.remote(), timeout=30)
            except Exception as exc:
                log.warning("worker actor %s is not usable (%s); ignored", name, exc)
                continue
            slot = ActorSlot(name=name, handle=handle, backend=self, runs=set(held))
            # keep the placement rules across the restart: a full fine-tuning run's
            # actor stays its own; LoRA runs keep attracting their base model's runs
            slot.exclusive = any(not lora for _, lora in held.values())
            slot.base_model = next((model for model, _ in held.values()), None)
            self._slots.append(slot)
        used = {int(s.name[len(ACTOR_PREFIX) :]) for s in self._slots if s.name[-1].isdigit()}
        self._names = itertools.count(max(used, default=-1) + 1)

    def _place(self, run_id: str, spec: EngineSpec) -> ActorSlot:
        lora = spec.lora is not None
        with self._lock:
            live = [s for s in self._slots if s.alive]
            room = [s for s in live if not s.exclusive and len(s.runs) < self._capacity]
            same = [s for s in room if s.base_model == spec.model_ref]
            empty = [s for s in live if not s.runs]
            slot: ActorSlot | None = None
            if lora and same:
                slot = max(same, key=lambda s: len(s.runs))  # pack one base model's adapters
            elif empty:
                slot = empty[0]
            elif len(live) < self._max_actors:
                name = f"{ACTOR_PREFIX}{next(self._names)}"
                slot = ActorSlot(name=name, handle=self._new_actor(name), backend=self)
                slot.starting = slot.handle.pid.remote()
                self._slots.append(slot)
            elif lora and room:
                slot = min(room, key=lambda s: len(s.runs))
            if slot is None:
                raise ServiceUnavailableError(
                    f"all {self._max_actors} worker actors are full; retry later, or unload "
                    "runs that are not training"
                )
            if not slot.runs:
                slot.base_model, slot.exclusive = spec.model_ref, not lora
            slot.runs.add(run_id)
            return slot

    def _slot_of(self, run_id: str) -> ActorSlot | None:
        with self._lock:
            return next((s for s in self._slots if s.alive and run_id in s.runs), None)

    # ------------------------------------------------------------- calls
    def invoke(self, slot: ActorSlot, method: str, *args: Any) -> Any:
        """``slot.handle.method(*args)``, waited for; an error the actor's code raised is
        re-raised as itself; a dead or hung actor (see the module docstring) becomes
        :class:`WorkerLostError` and is killed."""
        from ray.exceptions import RayActorError, RayTaskError

        run = args[0] if args and isinstance(args[0], str) else None
        if not slot.alive:  # lost earlier: this run's engine was placed there meanwhile
            if run is not None:
                self._on_lost([run])
            raise self._lost_error(slot, run)
        self._await_start(slot, run)
        ref = getattr(slot.handle, method).remote(*args)
        with self._lock:
            if slot.inflight == 0:  # an idle actor starts on this call now
                slot.busy_since = time.monotonic()
            slot.inflight += 1
        try:
            return self._wait(slot, ref)
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except RayActorError as exc:
            self._lose(slot, exc)
            raise self._lost_error(slot, run) from None
        except ActorHungError as exc:
            self._lose(slot, exc)
            raise self._lost_error(slot, run) from None
        finally:
            with self._lock:
                # Ray runs an actor's calls one at a time in submission order: when
                # one finishes, the next queued one starts
                slot.inflight -= 1
                slot.busy_since = time.monotonic()

    def _wait(self, slot: ActorSlot, ref: Any) -> Any:
        """The call's result, or :class:`ActorHungError` once the actor's current call
        has run for ``ray_call_timeout_s`` (time queued behind earlier calls, which
        finish and move ``busy_since``, does not count)."""
        from ray.exceptions import GetTimeoutError

        while True:
            with self._lock:
                left = slot.busy_since + self._call_timeout - time.monotonic()
            try:
                return self._ray.get(ref, timeout=max(left, 0.0))
            except GetTimeoutError:
                if left <= 0:
                    raise ActorHungError(
                        f"no call finished within ray_call_timeout_s={self._call_timeout:g} s"
                    ) from None

    def _await_start(self, slot: ActorSlot, run: str | None) -> None:
        """Wait (up to ``ray_actor_start_timeout_s``) for a new actor to answer its first
        call, so that its start-up never counts against a call's timeout."""
        from ray.exceptions import GetTimeoutError, RayActorError

        starting = slot.starting
        if starting is None:
            return
        try:
            self._ray.get(starting, timeout=self._start_timeout)
        except GetTimeoutError:
            hung = ActorHungError(
                f"it did not start within ray_actor_start_timeout_s={self._start_timeout:g} s"
            )
            self._lose(slot, hung)
            raise self._lost_error(slot, run) from None
        except RayActorError as exc:
            self._lose(slot, exc)
            raise self._lost_error(slot, run) from None
        slot.starting = None

    @staticmethod
    def _lost_error(slot: ActorSlot, run: str | None) -> WorkerLostError:
        """The error of every call the loss of ``slot`` failed (running, queued or later),
        all giving the first cause seen (a dead actor, or a hung one the server killed)."""
        return WorkerLostError(
            f"the worker holding training run {run or 'this run'} ({slot.name}) "
            f"{slot.lost_reason}; this "
            "operation was not applied (nothing it did in the worker survives). Retry it: the "
            "run is rebuilt from its last checkpoint, with its privacy accounting from the "
            "ledger (gradients accumulated since the last optim_step are lost: resubmit that "
            "logical batch)"
        )

    def _lose(self, slot: ActorSlot, exc: BaseException) -> None:
        with self._lock:
            if not slot.alive:
                return
            slot.alive = False
            if isinstance(exc, ActorHungError):
                slot.lost_reason = f"was stopped as hung ({exc})"
            self._slots.remove(slot)
            runs = sorted(slot.runs)
            slot.runs.clear()
        log.error(
            "worker actor %s was lost (%s); its runs %s will be rebuilt", slot.name, exc, runs
        )
        with contextlib.suppress(Exception):  # unreachable but alive: stop it
            self._ray.kill(slot.handle, no_restart=True)
        self._on_lost(runs)

    # ------------------------------------------------------------- backend
    def build(self, *, run_id: str, spec: EngineSpec) -> RemoteEngine:
        self.release(run_id)
        slot = self._place(run_id, spec)
        try:
            facts: EngineFacts = self.invoke(slot, "build", run_id, spec)
        except BaseException:
            with self._lock:
                slot.runs.discard(run_id)
            raise
        log.info("run %s built on %s", run_id, slot.name)
        return RemoteEngine(run_id=run_id, facts=facts, caller=slot, actor=slot.name)

    def attach(self, *, run_id: str, step: int) -> RemoteEngine | None:
        slot = self._slot_of(run_id)
        if slot is None:
            return None
        try:
            held = self.invoke(slot, "runs").get(run_id)
            if held is not None and held == (step, 0):
                facts: EngineFacts = self.invoke(slot, "facts", run_id)
                log.info("run %s re-attached on %s at step %d", run_id, slot.name, step)
                return RemoteEngine(run_id=run_id, facts=facts, caller=slot, actor=slot.name)
        except WorkerLostError:
            return None
        log.warning(
            "run %s on %s is at %s, the database at step %d with no pending gradients: dropped",
            run_id, slot.name, held, step,
        )  # fmt: skip
        self.release(run_id)
        return None

    def release(self, run_id: str) -> None:
        slot = self._slot_of(run_id)
        if slot is None:
            return
        with self._lock:
            slot.runs.discard(run_id)
        with contextlib.suppress(WorkerLostError):
            self.invoke(slot, "release", run_id)

    def close(self) -> None:
        """Forget the actors. Detached ones (an existing cluster) keep their runs for a
        restarted server to re-attach; a local Ray the server started is shut down."""
        with self._lock:
            self._slots.clear()
        if self._owns_ray:
            self._ray.shutdown()

    def actor_names(self) -> dict[str, list[str]]:
        """``{actor name: [run ids]}`` of the live actors (tests, diagnostics)."""
        with self._lock:
            return {s.name: sorted(s.runs) for s in self._slots if s.alive}


__all__ = ["ACTOR_PREFIX", "ActorHungError", "ActorSlot", "RayBackend"]
