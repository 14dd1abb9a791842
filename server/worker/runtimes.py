"""Each run's live engine: build it, rebuild it after a restart, hand it out.

Engines are built by the worker backend (:mod:`server.worker.backends`: this process,
or Ray actors). Rebuilding a run whose engine is gone (server restart, eviction, a
lost actor):

* a live actor still holds it at exactly the database's step with no pending
  gradients (a restart on an existing Ray cluster): it is re-attached as it is;

* it has a checkpoint (the last one saved or loaded): weights and optimizer come
  from it, the accountant from the run's whole privacy history in the ledger
  (:func:`server.services.run_history.accountant_history`), never the checkpoint's copy;
* it never took a step: it starts from fresh weights (same seed);
* otherwise its weights are lost: every operation except ``load_state`` and
  ``unload`` is refused with a message saying to ``load_state`` a checkpoint.

If ``forward_backward`` had accumulated examples of an unfinished logical batch
when the engine was lost, the first operation after the rebuild is refused (the
batch must be resubmitted) instead of silently stepping without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tg_tinker.types import TrainingConfig
from transformers import PreTrainedTokenizerBase

from server.db.models import ArtifactRow, OperationRow, TrainingRunRow, utcnow
from server.db.session import Database
from server.errors import ConflictError, WorkerLostError
from server.services import run_history
from server.services.dataset_reader import DatasetReader
from server.services.declared_batches import DeclaredBatchGuard
from server.services.wire import EngineSpec, engine_spec
from server.settings import Settings
from server.storage import ArtifactStore
from server.worker import sealed_state
from server.worker.backends import Engine, WorkerBackend, make_backend
from tensafe.artifacts import TenantKeyring

log = logging.getLogger("tensafe.server.worker")


@dataclass
class RunRuntime:
    """A run's live engine and what the worker must remember about it."""

    engine: Engine
    spec: EngineSpec
    needs_restore: str | None = None
    lost_examples: int = 0
    tokenizer_files: dict[str, str] | None = field(default=None, repr=False)
    # runs on a server-held dataset: its records, and the privacy units of the drawn
    # batch that a forward_backward already used (reset with the accumulator)
    dataset: DatasetReader | None = field(default=None, repr=False)
    used_groups: set[int] = field(default_factory=set)
    # runs that build their own batches: what the current logical batch holds
    declared: DeclaredBatchGuard = field(default_factory=DeclaredBatchGuard)


def tokenizer_as_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """A tokenizer as ``{file name: text}`` (``save_pretrained``'s text files; a binary
    file is logged and left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {}
        for path in sorted(Path(tmp).iterdir()):
            try:
                files[path.name] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                log.warning("tokenizer file %s is not text; not served", path.name)
    return files


class RunEngines:
    """The live engines of the server's runs (thread-safe registry + lifecycle)."""

    def __init__(
        self,
        *,
        db: Database,
        store: ArtifactStore,
        keyring: TenantKeyring,
        settings: Settings,
    ) -> None:
        self.db = db
        self.store = store
        self.keyring = keyring
        self.settings = settings
        self._runtimes: dict[str, RunRuntime] = {}
        self._lock = threading.Lock()
        self._backend: WorkerBackend | None = None
        self._backend_lock = threading.Lock()

    def loaded_runs(self) -> list[str]:
        with self._lock:
            return sorted(self._runtimes)

    def get(self, run_id: str) -> RunRuntime | None:
        with self._lock:
            return self._runtimes.get(run_id)

    def put(self, run_id: str, runtime: RunRuntime) -> None:
        with self._lock:
            self._runtimes[run_id] = runtime

    def evict(self, run_id: str) -> None:
        """Forget a run's engine (frees the model); the run is rebuilt on next use."""
        with self._lock:
            self._runtimes.pop(run_id, None)
        if self._backend is not None:
            self._backend.release(run_id)

    def tokenizer_files(self, run_id: str, *, model_name: str | None) -> dict[str, str] | None:
        """The run's tokenizer as ``{file name: text}``, from its loaded engine or, when
        it is not loaded (after a restart), from the copy kept in
        ``<data_dir>/tokenizers/``; ``None`` if neither exists yet."""
        runtime = self.get(run_id)
        cached = None
        if model_name is not None:
            digest = hashlib.sha256(model_name.encode()).hexdigest()[:32]
            cached = self.settings.data_dir / "tokenizers" / f"{digest}.json"
        if runtime is None:
            if cached is not None and cached.exists():
                return dict(json.loads(cached.read_text(encoding="utf-8")))
            return None
        if runtime.tokenizer_files is None:
            files = tokenizer_as_files(runtime.engine.tokenizer)
            runtime.tokenizer_files = files
            if cached is not None and not cached.exists():
                cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                partial = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                partial.write_text(json.dumps(files), encoding="utf-8")
                os.replace(partial, cached)
        return runtime.tokenizer_files

    @property
    def backend(self) -> WorkerBackend:
        """Where the engines live (created on first use: a Ray backend connects then)."""
        with self._backend_lock:
            if self._backend is None:
                self._backend = make_backend(self.settings, on_lost=self._on_lost)
            return self._backend

    def build(self, run: TrainingRunRow) -> RunRuntime:
        """A fresh engine for the run's config (loads the model, here or in an actor).

        Raises:
            ModelLoadError: the model did not load.
            ServiceUnavailableError: no worker can take the run now (retry).
        """
        config = TrainingConfig.model_validate(run.config)
        spec = engine_spec(config, settings=self.settings, enforce_policy=False)
        engine = self.backend.build(run_id=run.run_id, spec=spec)
        return RunRuntime(engine=engine, spec=spec)

    def _on_lost(self, run_ids: list[str]) -> None:
        """The backend lost these runs' engines (a dead actor): forget them; each is
        rebuilt on its next operation."""
        with self._lock:
            for run_id in run_ids:
                self._runtimes.pop(run_id, None)

    def close(self) -> None:
        """Forget every engine and let the backend go (the server is stopping)."""
        with self._lock:
            self._runtimes.clear()
        with self._backend_lock:
            if self._backend is not None:
                self._backend.close()

    def for_operation(self, op: OperationRow, run: TrainingRunRow) -> RunRuntime:
        """The run's engine for ``op``, rebuilt if needed.

        Raises:
            ConflictError: the run must be restored with load_state first, or a
                logical batch was lost and must be resubmitted.
        """
        runtime = self.get(run.run_id)
        if runtime is None:
            runtime = self._rebuild(run, for_load_state=op.operation == "load_state")
            self.put(run.run_id, runtime)
        if op.operation == "load_state":
            return runtime
        if runtime.needs_restore:
            raise ConflictError(runtime.needs_restore, field="run_id")
        if runtime.lost_examples:
            lost, runtime.lost_examples = runtime.lost_examples, 0
            with self.db.transaction() as session:
                row = session.get(TrainingRunRow, run.run_id)
                if row is not None:
                    row.pending_examples = 0
            raise ConflictError(
                f"the server lost the gradients of {lost} example(s) that forward_backward had "
                "accumulated before the last optim_step (the run's engine was rebuilt, e.g. after "
                "a restart); this operation was not run — resubmit the whole logical batch",
                field="run_id",
            )
        return runtime

    def _rebuild(self, run: TrainingRunRow, *, for_load_state: bool) -> RunRuntime:
        if run.pending_examples == 0:
            # after a server restart a live actor may still hold the run: only at exactly
            # the database's step (an actor that stepped without a committed ledger row
            # is never re-attached)
            attached = self.backend.attach(run_id=run.run_id, step=run.step)
            if attached is not None:
                config = TrainingConfig.model_validate(run.config)
                spec = engine_spec(config, settings=self.settings, enforce_policy=False)
                return RunRuntime(engine=attached, spec=spec)
        runtime = self.build(run)
        self.set_model_info(run.run_id, runtime.engine)
        if for_load_state:
            return runtime  # load_state restores it
        runtime.lost_examples = run.pending_examples
        with self.db.sessions() as session:
            history = run_history.accountant_history(session, run.run_id)
            checkpoint = None
            if run.last_checkpoint_artifact_id is not None:
                checkpoint = session.get(ArtifactRow, run.last_checkpoint_artifact_id)
                if (
                    checkpoint is not None
                    and checkpoint.expires_at is not None
                    and (checkpoint.expires_at <= utcnow())
                ):
                    checkpoint = None
                if checkpoint is not None:
                    session.expunge(checkpoint)
        if checkpoint is not None:
            try:
                step = sealed_state.restore_from_artifact(
                    runtime.engine,
                    store=self.store,
                    keyring=self.keyring,
                    artifact=checkpoint,
                    history=history,
                )
            except WorkerLostError:
                raise
            except Exception as exc:
                log.error(
                    "restoring %s from %s failed", run.run_id, checkpoint.artifact_id, exc_info=exc
                )
            else:
                self._set_step(run.run_id, step)
                log.info(
                    "rebuilt run %s from checkpoint %s (step %d, %d noisy steps in the ledger)",
                    run.run_id,
                    checkpoint.artifact_id,
                    step,
                    len(history),
                )
                return runtime
        if run.step == 0 and not history:
            return runtime  # never trained: fresh weights from the run's seed are its state
        runtime.needs_restore = (
            f"training run {run.run_id} lost its in-memory state (server restart) after step "
            f"{run.step} and has no usable checkpoint to resume from; call load_state with a "
            "checkpoint (of this or another run of the same model) to continue"
        )
        return runtime

    def set_model_info(self, run_id: str, engine: Engine) -> None:
        info = engine.info()
        with self.db.transaction() as session:
            row = session.get(TrainingRunRow, run_id)
            if row is not None:
                row.model_name = info.model_name
                row.arch = info.arch
                row.vocab_size = info.vocab_size
                row.trainable_params = info.trainable_params

    def _set_step(self, run_id: str, step: int) -> None:
        with self.db.transaction() as session:
            row = session.get(TrainingRunRow, run_id)
            if row is not None:
                row.step = step


__all__ = ["RunEngines", "RunRuntime", "tokenizer_as_files"]
