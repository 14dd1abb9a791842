"""The worker side of sampling: which model in memory serves a sampler, and running it.

Every sampler is served by a model already in memory — never a second copy of it:

* a run's sampler: the run's own engine (:class:`~tensafe.generation.Sampler` on its
  model), current weights;
* a checkpoint's sampler: the LoRA adapter, decrypted in memory only, loaded under the
  name ``ckpt_<artifact id>`` onto the engine of the run that saved it when that run is
  loaded with the same base model, else onto a shared base-model *host* — one per base
  model name, loaded on first use (at most ``max_sampler_base_models``);
* a base model's sampler: a loaded LoRA run of the same tenant on that base model with
  its adapter switched off, else the shared host.

Each model has one :class:`~tensafe.generation.SampleBatcher`: concurrent requests for
it (whatever their adapter) are coalesced into one batch. Preparing a request (finding
the model, decrypting and loading an adapter) runs on a small thread pool of its own;
nothing here enters a run's training queue. Training and generation share the model's
lock (:func:`tensafe.models.model_lock`), so they never interleave.

Adapters in use are never unloaded: a host keeps a count of the requests in flight per
adapter and evicts only idle ones (least recently used first) to make room.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select

from server.db.models import ArtifactRow, TrainingRunRow
from server.db.session import Database
from server.errors import ConflictError, NotFoundError, ServiceUnavailableError
from server.services import artifacts as artifact_service
from server.services.sampling import SamplerTarget
from server.settings import Settings
from server.storage import ArtifactStore
from server.worker.backends import RemoteEngine
from server.worker.runtimes import RunEngines, tokenizer_as_files
from tensafe import generation as gen
from tensafe.artifacts import TenantKeyring

log = logging.getLogger("tensafe.server.sampling")

# How long a run's sampler waits for the run's model to finish loading.
_LOAD_WAIT_S = 600.0


@dataclass(eq=False)
class _Host:
    """One model in memory that samples: its sampler, batcher and adapters in use."""

    owner: object  # the run's engine, or the LoadedModel of a base host
    sampler: gen.Sampler
    batcher: gen.SampleBatcher
    in_flight: dict[str | None, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def busy(self) -> bool:
        with self.lock:
            return any(self.in_flight.values())

    def release(self, adapter: str | None) -> None:
        with self.lock:
            self.in_flight[adapter] = self.in_flight.get(adapter, 1) - 1

    def close(self) -> None:
        self.batcher.close(timeout=30)


class SamplingWorker:
    """Implements :class:`server.services.sampling.SamplingBackend` in process.

    Args:
        engines: the worker's run engines (runs' current weights are sampled there).
        db, store, keyring: to find and decrypt checkpoints.
        settings: ``sampling_threads``, ``sampling_batch_window_s``,
            ``max_sampler_base_models``, ``device``, ``model_cache_dir``.
    """

    def __init__(
        self,
        *,
        engines: RunEngines,
        db: Database,
        store: ArtifactStore,
        keyring: TenantKeyring,
        settings: Settings,
    ) -> None:
        self.engines = engines
        self.db = db
        self.store = store
        self.keyring = keyring
        self.settings = settings
        self._pool = ThreadPoolExecutor(
            max_workers=settings.sampling_threads, thread_name_prefix="tensafe-sampling"
        )
        self._run_hosts: dict[str, _Host] = {}
        self._base_hosts: OrderedDict[str, _Host] = OrderedDict()
        self._lock = threading.Lock()
        self._base_load_lock = threading.Lock()

    # ------------------------------------------------------------ backend API
    def check(self, target: SamplerTarget, request: gen.SampleRequest) -> None:
        """Validate against the model if it is in memory (prompt and ``max_tokens``
        against its context, token ids against its vocabulary)."""
        host = self._host_if_loaded(target)
        if host is not None:
            host.sampler.validate(dataclasses.replace(request, adapter=None))

    def sample(
        self, target: SamplerTarget, request: gen.SampleRequest
    ) -> Future[gen.SampleResponse]:
        out: Future[gen.SampleResponse] = Future()

        def prepare() -> None:
            if not out.set_running_or_notify_cancel():
                return
            try:
                host, adapter = self._acquire(target)
            except BaseException as exc:
                out.set_exception(exc)
                return
            try:
                inner = host.batcher.submit(dataclasses.replace(request, adapter=adapter))
            except BaseException as exc:
                host.release(adapter)
                out.set_exception(exc)
                return

            def finished(done: Future[gen.SampleResponse]) -> None:
                host.release(adapter)
                exc = done.exception()
                if exc is not None:
                    out.set_exception(exc)
                else:
                    out.set_result(done.result())

            inner.add_done_callback(finished)

        self._pool.submit(prepare)
        return out

    def compute_logprobs(
        self, target: SamplerTarget, *, prompt: tuple[int, ...], topk: int
    ) -> Future[gen.PromptLogprobs]:
        def run() -> gen.PromptLogprobs:
            host, adapter = self._acquire(target)
            try:
                return host.sampler.compute_logprobs(prompt=prompt, adapter=adapter, topk=topk)
            finally:
                host.release(adapter)

        return self._pool.submit(run)

    def tokenizer_files(self, target: SamplerTarget) -> dict[str, str]:
        if target.source == "run":
            assert target.run_id is not None
            files = self.engines.tokenizer_files(target.run_id, model_name=target.base_model)
            if files is None:
                raise ConflictError(
                    "the run's model is not loaded yet; retry shortly", field="sampler_id"
                )
            return files
        host, adapter = self._acquire(target, load_adapter=False)
        try:
            return tokenizer_as_files(host.sampler.tokenizer)
        finally:
            host.release(adapter)

    def stop(self) -> None:
        """Stop preparing requests and close every batcher (queued requests finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            hosts = [*self._run_hosts.values(), *self._base_hosts.values()]
            self._run_hosts.clear()
            self._base_hosts.clear()
        for host in hosts:
            host.close()

    # ------------------------------------------------------------ resolution
    def _acquire(
        self, target: SamplerTarget, *, load_adapter: bool = True
    ) -> tuple[_Host, str | None]:
        """The host that serves ``target`` and the adapter name to sample with, counted
        in flight until :meth:`_Host.release`.

        Raises:
            ConflictError: the run's weights are not in memory (restart) or it must be
                restored first.
            NotFoundError: the checkpoint disappeared.
            ServiceUnavailableError: no room for another base model.
        """
        if target.source == "run":
            return self._claim(self._run_host(target), None)
        if target.source == "base":
            run_host = self._tenant_run_host(target)
            if run_host is not None:  # that run's adapter switched off
                return self._claim(run_host, gen.BASE_MODEL)
            return self._claim(self._base_host(target.base_model), None)
        host = self._checkpoint_run_host(target) or self._base_host(target.base_model)
        name = f"ckpt_{target.artifact_id}"
        if not load_adapter:
            return self._claim(host, None)
        with host.lock:
            if name not in host.sampler.adapters:
                self._load_checkpoint(host, target, name)
            host.in_flight[name] = host.in_flight.get(name, 0) + 1
        return host, name

    @staticmethod
    def _claim(host: _Host, adapter: str | None) -> tuple[_Host, str | None]:
        with host.lock:
            host.in_flight[adapter] = host.in_flight.get(adapter, 0) + 1
        return host, adapter

    def _host_if_loaded(self, target: SamplerTarget) -> _Host | None:
        if target.source == "run":
            runtime = self.engines.get(target.run_id or "")
            if runtime is None:
                return None
            return self._host_of_engine(target.run_id or "", runtime.engine)
        with self._lock:
            return self._base_hosts.get(target.base_model)

    def _run_host(self, target: SamplerTarget) -> _Host:
        run_id = target.run_id
        assert run_id is not None
        deadline = time.monotonic() + _LOAD_WAIT_S
        while (runtime := self.engines.get(run_id)) is None:
            with self.db.sessions() as session:
                run = session.get(TrainingRunRow, run_id)
                status = None if run is None else run.status
            if status is None:
                raise NotFoundError(f"no training run {run_id!r}", field="sampler_id")
            # the engine is registered before the run turns READY: look again after the read
            if self.engines.get(run_id) is not None:
                continue
            if status != "INITIALIZING" or time.monotonic() > deadline:
                raise ConflictError(
                    f"training run {run_id}'s weights are not in memory (the server "
                    "restarted or the run was unloaded); run any training operation to "
                    "reload them, or sample a saved sampler checkpoint",
                    field="sampler_id",
                )
            time.sleep(0.1)
        if runtime.needs_restore:
            raise ConflictError(runtime.needs_restore, field="sampler_id")
        return self._host_of_engine(run_id, runtime.engine)

    def _host_of_engine(self, run_id: str, engine: object) -> _Host:
        if isinstance(engine, RemoteEngine):
            raise ConflictError(
                f"training run {run_id} trains on a Ray worker: sampling from its live "
                "weights is not available on the Ray backend; call save_weights_for_sampler "
                "and sample that checkpoint",
                field="sampler_id",
            )
        stale: list[_Host] = []
        with self._lock:
            host = self._run_hosts.get(run_id)
            if host is None or host.owner is not engine:
                if host is not None:
                    stale.append(host)
                sampler = gen.Sampler.for_engine(engine)  # type: ignore[arg-type]
                host = _Host(owner=engine, sampler=sampler, batcher=self._batcher(sampler))
                self._run_hosts[run_id] = host
            for other_id in list(self._run_hosts):
                if other_id != run_id and self.engines.get(other_id) is None:
                    stale.append(self._run_hosts.pop(other_id))
        for old in stale:  # their engines were evicted or rebuilt
            threading.Thread(target=old.close, daemon=True).start()
        return host

    def _checkpoint_run_host(self, target: SamplerTarget) -> _Host | None:
        """The engine of the run that saved the checkpoint, if it is in memory and
        trains a LoRA adapter on the same base model."""
        runtime = self.engines.get(target.run_id or "")
        if runtime is None or runtime.needs_restore:
            return None
        engine = runtime.engine
        if isinstance(engine, RemoteEngine):  # its weights are in an actor
            return None
        if engine.lora_config is None or engine.name != target.base_model:
            return None
        return self._host_of_engine(target.run_id or "", engine)

    def _tenant_run_host(self, target: SamplerTarget) -> _Host | None:
        """A loaded LoRA run of the same tenant on ``target.base_model``, if any."""
        loaded = self.engines.loaded_runs()
        if not loaded:
            return None
        with self.db.sessions() as session:
            run_ids = list(
                session.scalars(
                    select(TrainingRunRow.run_id).where(
                        TrainingRunRow.run_id.in_(loaded),
                        TrainingRunRow.tenant_id == target.tenant_id,
                        TrainingRunRow.model_name == target.base_model,
                    )
                )
            )
        for run_id in run_ids:
            runtime = self.engines.get(run_id)
            if (
                runtime is not None
                and not isinstance(runtime.engine, RemoteEngine)
                and runtime.engine.lora_config is not None
            ):
                return self._host_of_engine(run_id, runtime.engine)
        return None

    def _base_host(self, name: str) -> _Host:
        with self._lock:
            host = self._base_hosts.get(name)
            if host is not None:
                self._base_hosts.move_to_end(name)
                return host
        with self._base_load_lock:  # one model load at a time
            with self._lock:
                host = self._base_hosts.get(name)
                if host is not None:
                    return host
            self._make_room()
            from tensafe.models import load_causal_lm

            loaded = load_causal_lm(
                name, device=self.settings.device, cache_dir=self.settings.model_cache_dir
            )
            sampler = gen.Sampler(
                model=loaded.model, tokenizer=loaded.tokenizer, model_name=loaded.name
            )
            host = _Host(owner=loaded, sampler=sampler, batcher=self._batcher(sampler))
            log.info("loaded base model %s for sampling", loaded.name)
            with self._lock:
                self._base_hosts[name] = host
            return host

    def _make_room(self) -> None:
        with self._lock:
            if len(self._base_hosts) < self.settings.max_sampler_base_models:
                return
            idle = [name for name, host in self._base_hosts.items() if not host.busy()]
            if not idle:
                raise ServiceUnavailableError(
                    "every base model slot for sampling is busy; retry shortly"
                )
            dropped = self._base_hosts.pop(idle[0])
        dropped.close()

    def _load_checkpoint(self, host: _Host, target: SamplerTarget, name: str) -> None:
        """Decrypt the checkpoint in memory and load its adapter (``host.lock`` held)."""
        with self.db.sessions() as session:
            row = session.scalar(
                select(ArtifactRow).where(
                    ArtifactRow.artifact_id == target.artifact_id,
                    ArtifactRow.tenant_id == target.tenant_id,
                )
            )
            if row is None:
                raise NotFoundError("the sampler's checkpoint no longer exists", field="sampler_id")
            session.expunge(row)
        opened = artifact_service.open_from_store(self.store, self.keyring, row)
        sampler = host.sampler
        if len(sampler.adapters) >= sampler.limits.max_adapters:
            idle = [a for a in sampler.adapters if not host.in_flight.get(a)]
            if not idle:
                raise ServiceUnavailableError("every adapter slot is in use; retry shortly")
            sampler.remove_adapter(idle[0])
        sampler.load_adapter(
            name=name, tensors=opened.tensors, lora_config=opened.manifest.lora_config or {}
        )

    def _batcher(self, sampler: gen.Sampler) -> gen.SampleBatcher:
        return gen.SampleBatcher(sampler=sampler, window_s=self.settings.sampling_batch_window_s)


__all__ = ["SamplingWorker"]
