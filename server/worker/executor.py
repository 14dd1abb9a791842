"""Run one operation: claim it, call the run's engine, persist result or error.

One :class:`~tensafe.engine.TrainingEngine` per run lives in memory
(:class:`RunRuntime`): in this process, or in a Ray actor behind a
:class:`~server.worker.backends.remote_engine.RemoteEngine`
(:mod:`server.worker.backends`). Each operation's outcome is committed in one transaction
together with its side effects (:func:`~server.services.operations.complete_operation`
is the one path that completes a future). Two operations commit through a service of
their own, because their effects are privacy records:

* a DP run's ``optim_step`` is :func:`server.services.dp_step.charge_and_step` and
  nothing else — lock the dataset's budget, check, step the engine, append the
  ledger row, complete, commit;
* ``load_state`` restores the engine, then :func:`server.services.run_history.record_load`
  commits the carried privacy history with the completed future.

If a commit fails after the engine changed, the engine is discarded
(:meth:`OperationExecutor.evict`): the run is rebuilt on next use from its last
checkpoint and the ledger, exactly as after a restart (:mod:`server.worker.runtimes`),
so memory never runs ahead of the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session
from tg_tinker.types import (
    DrawBatchRequest,
    ForwardBackwardRequest,
    GetInfoResponse,
    ModelData,
    OptimStepRequest,
    UnloadModelResponse,
)

from server.db.models import OperationRow, TrainingRunRow
from server.db.session import Database
from server.errors import ConflictError, ServiceError, ValidationError, describe_error
from server.queue import FutureNotifier, QueuedOperation
from server.services import drawn_batches
from server.services.admission import default_policy
from server.services.budgets import BudgetService
from server.services.capacity import check_batch_capacity, max_tokens_per_call
from server.services.dataset_reader import DatasetReader
from server.services.datasets import DatasetService
from server.services.declared_batches import example_digests
from server.services.dp_step import charge_and_step
from server.services.operations import (
    claim_operation,
    complete_operation,
    mark_failed,
    refuse_if_closed,
)
from server.services.runs import LOAD_MODEL
from server.services.wire import (
    adam_params,
    engine_batch,
    forward_output,
    optim_output,
    request_fields,
)
from server.settings import Settings
from server.storage import ArtifactStore
from server.worker import server_sampling
from server.worker.checkpoint_ops import CheckpointOperations, charged_dataset
from server.worker.outcomes import Outcome, Request
from server.worker.runtimes import RunEngines, RunRuntime
from tensafe import errors as ts
from tensafe.artifacts import TenantKeyring
from tensafe.engine import ForwardBackwardResult

log = logging.getLogger("tensafe.server.worker")

# Operations that change engine state; if one fails other than by a documented
# clean refusal, its engine is discarded and rebuilt (checkpoint + DP rows) on next use.
_MUTATING = frozenset({"forward_backward", "optim_step", "load_state"})


def leaves_engine_unchanged(exc: BaseException) -> bool:
    """Whether an error is one the engine raises before changing anything
    (input validation, state refusals, budget refusal, a refused non-finite
    update) or one of ours."""
    if isinstance(exc, (ServiceError, ts.BudgetExceededError, ts.NonFiniteUpdateError)):
        return True
    if isinstance(exc, ts.PrivacyError):
        return False  # e.g. "weights did not move", raised after the optimizer step
    return isinstance(exc, ts.TenSafeError) and exc.category == "user"


class OperationExecutor(CheckpointOperations):
    """Executes operations for :class:`~server.queue.RunQueue` (its handler)."""

    def __init__(
        self,
        *,
        db: Database,
        store: ArtifactStore,
        keyring: TenantKeyring,
        notifier: FutureNotifier,
        settings: Settings,
    ) -> None:
        self.db = db
        self.store = store
        self.keyring = keyring
        self.notifier = notifier
        self.settings = settings
        self.engines = RunEngines(db=db, store=store, keyring=keyring, settings=settings)
        self.budgets = BudgetService(
            db,
            keyring,
            default_epsilon_cap=settings.default_epsilon_cap,
            default_sampling_policy=default_policy(settings),
        )
        self.datasets = DatasetService(db, store, keyring)
        self._handlers: dict[str, Callable[[OperationRow, TrainingRunRow, Request], Outcome]] = {
            LOAD_MODEL: self._load_model,
            "forward": self._forward,
            "forward_backward": self._forward_backward,
            "optim_step": self._optim_step,
            "save_state": self._save_state,
            "save_weights_for_sampler": self._save_weights_for_sampler,
            "load_state": self._load_state,
            "unload": self._unload,
            "draw_batch": self._draw_batch,
        }

    # ------------------------------------------------------------- runtimes
    def loaded_runs(self) -> list[str]:
        return self.engines.loaded_runs()

    def runtime(self, run_id: str) -> RunRuntime | None:
        return self.engines.get(run_id)

    def evict(self, run_id: str) -> None:
        """Forget a run's engine (frees the model); the run is rebuilt on next use."""
        self.engines.evict(run_id)

    def tokenizer_files(self, run_id: str, *, model_name: str | None) -> dict[str, str] | None:
        return self.engines.tokenizer_files(run_id, model_name=model_name)

    # ------------------------------------------------------------- execution
    def execute(self, run_id: str, item: QueuedOperation) -> None:
        """Run one operation to a final state. Never raises for an operation's failure."""
        future_id = item.future_id
        op = claim_operation(self.db, future_id=future_id)
        if op is None:
            return  # cancelled while queued
        try:
            with self.db.sessions() as session:
                run = session.get(TrainingRunRow, run_id)
                assert run is not None
                session.expunge(run)
            if op.operation != LOAD_MODEL:
                refuse_if_closed(run)
            outcome = self._handlers[op.operation](op, run, item.request)
            if not outcome.committed:
                self._commit(op, outcome)
        except BaseException as exc:
            self._record_failure(op, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.notifier.notify(future_id)

    def _commit(self, op: OperationRow, outcome: Outcome) -> None:
        try:
            with self.db.transaction() as session:
                run = session.get(TrainingRunRow, op.run_id)
                assert run is not None
                if outcome.effects is not None:
                    outcome.effects(session, run)
                complete_operation(session, op, outcome.result)
        except BaseException:
            if outcome.engine_changed:
                log.error(
                    "committing %s failed; discarding the engine of %s", op.operation, op.run_id
                )
                self.evict(op.run_id)
            if outcome.on_commit_failure is not None:
                outcome.on_commit_failure()
            raise

    def _record_failure(self, op: OperationRow, exc: BaseException) -> None:
        status, body = describe_error(exc)
        if status >= 500:
            log.error(
                "operation %s (%s) failed",
                op.future_id,
                op.operation,
                exc_info=exc,
                extra={"run_id": op.run_id},
            )
        if op.operation in _MUTATING and not leaves_engine_unchanged(exc):
            self.evict(op.run_id)  # its state may be half-changed
        try:
            with self.db.transaction() as session:
                mark_failed(session, op, body)
                run = session.get(TrainingRunRow, op.run_id)
                if run is None:
                    return
                if op.operation == LOAD_MODEL:
                    run.status = "ERROR"
                    run.error = body.detail
                elif run.status == "BUSY":
                    run.status = "READY"
        except Exception:
            log.exception("could not record the failure of %s", op.future_id)

    # ------------------------------------------------------------- engines
    # ------------------------------------------------------------- handlers
    def _load_model(self, op: OperationRow, run: TrainingRunRow, payload: Request) -> Outcome:
        runtime = self.engines.get(run.run_id)
        if runtime is None:
            runtime = self.engines.build(run)
            self.engines.put(run.run_id, runtime)
        info = runtime.engine.info()

        def effects(session: Session, row: TrainingRunRow) -> None:
            row.model_name = info.model_name
            row.arch = info.arch
            row.vocab_size = info.vocab_size
            row.trainable_params = info.trainable_params
            row.error = None
            if row.status in ("INITIALIZING", "BUSY"):
                row.status = "READY"

        result = GetInfoResponse(
            model_data=ModelData(arch=info.arch, model_name=info.model_name),
            model_id=run.run_id,
            is_lora=info.is_lora,
            lora_rank=info.lora_rank,
            model_name=info.model_name,
            trainable_params=info.trainable_params,
            step=info.step,
        )
        return Outcome(result=result, effects=effects)

    def _forward(self, op: OperationRow, run: TrainingRunRow, payload: Request) -> Outcome:
        engine = self.engines.for_operation(op, run).engine
        request = ForwardBackwardRequest.model_validate(payload)
        check_batch_capacity(request, run=run, settings=self.settings)
        with request_fields(request):
            result = engine.forward(
                engine_batch(request),
                loss_fn=request.loss_fn,
                loss_fn_config=request.loss_fn_config,
            )
        return Outcome(result=forward_output(result))

    def _forward_backward(self, op: OperationRow, run: TrainingRunRow, payload: Request) -> Outcome:
        runtime = self.engines.for_operation(op, run)
        request = ForwardBackwardRequest.model_validate(payload)
        with request_fields(request):
            if runtime.spec.sampling == "server":
                result = server_sampling.drawn_forward_backward(
                    runtime,
                    run,
                    request,
                    self._dataset(runtime, run),
                    max_batch=self.settings.max_batch_size,
                    max_tokens=max_tokens_per_call(
                        model_ref=run.model_ref or "",
                        vocab_size=run.vocab_size,
                        settings=self.settings,
                    ),
                )
            elif request.drawn_batch_id is not None:
                raise ValidationError(
                    "this run declares its own sampling: it has no drawn batches",
                    field="drawn_batch_id",
                )
            else:
                check_batch_capacity(request, run=run, settings=self.settings)
                result = self._declared_forward_backward(runtime, request)
        examples = int(result.metrics.get("num_examples:sum", 0))

        def effects(session: Session, row: TrainingRunRow) -> None:
            row.pending_examples += examples

        return Outcome(result=forward_output(result), effects=effects, engine_changed=True)

    @staticmethod
    def _declared_forward_backward(
        runtime: RunRuntime, request: ForwardBackwardRequest
    ) -> ForwardBackwardResult:
        """A client-built batch: under DP it must look like the declared Poisson sample
        (:mod:`server.services.declared_batches`)."""
        batch = engine_batch(request)
        digests: list[bytes] = []
        if runtime.engine.dp is not None:
            config = runtime.engine.dp.config
            digests = example_digests(batch)
            runtime.declared.check(
                digests,
                field_name="batch.input_ids" if request.batch is not None else "data",
                dataset_size=config.dataset_size,
                sample_rate=config.sample_rate,
            )
        result = runtime.engine.forward_backward(
            batch, loss_fn=request.loss_fn, loss_fn_config=request.loss_fn_config
        )
        runtime.declared.add(digests)
        return result

    def _optim_step(self, op: OperationRow, run: TrainingRunRow, payload: Request) -> Outcome:
        runtime = self.engines.for_operation(op, run)
        engine = runtime.engine
        request = OptimStepRequest.model_validate(payload or {})
        if engine.dp is not None and not request.apply_dp_noise:
            raise ValidationError(
                "this run uses differential privacy; every step adds noise", field="apply_dp_noise"
            )
        if runtime.spec.sampling == "server":  # the drawn batch is consumed by this step
            drawn_batches.check_draw(server_sampling.pending_draw(run), None)
        if engine.dp is not None:  # every DP step is charged to a dataset budget
            response = charge_and_step(
                self.db,
                self.budgets,
                op=op,
                engine=engine,
                adam_params=adam_params(request),
                dataset_id=charged_dataset(runtime),
                **self._labels(runtime, run),
            )
            runtime.used_groups.clear()  # the logical batch is consumed
            runtime.declared.reset()
            return Outcome(result=response, committed=True, engine_changed=True)
        result = engine.optim_step(adam_params(request))  # no DP: nothing to account

        def effects(session: Session, row: TrainingRunRow) -> None:
            row.step = result.step
            row.pending_examples = 0

        return Outcome(result=optim_output(result), effects=effects, engine_changed=True)

    def _draw_batch(self, op: OperationRow, run: TrainingRunRow, payload: Request) -> Outcome:
        runtime = self.engines.for_operation(op, run)
        if runtime.spec.sampling != "server":
            raise ConflictError("this run declares its own sampling", field="run_id")
        request = DrawBatchRequest.model_validate(payload or {})
        result, effects = server_sampling.draw_batch(
            runtime, run, request, self._dataset(runtime, run)
        )
        return Outcome(result=result, effects=effects)

    @staticmethod
    def _labels(runtime: RunRuntime, run: TrainingRunRow) -> dict[str, str]:
        """Who draws the run's batches and what one contribution is (ledger, manifest).
        From the run's resolved config alone (a unit dataset is the one that set
        ``max_records_per_unit``), so a checkpoint can be saved after the dataset was
        deleted."""
        if runtime.spec.sampling != "server":
            return {"sampling": "client-declared", "privacy_unit": "record"}
        dp = (run.config or {}).get("dp_config") or {}
        unit = "unit" if dp.get("max_records_per_unit") is not None else "record"
        return {"sampling": "server-poisson", "privacy_unit": unit}

    def _dataset(self, runtime: RunRuntime, run: TrainingRunRow) -> DatasetReader:
        return server_sampling.reader(
            runtime, run, db=self.db, store=self.store, keyring=self.datasets.keyring
        )

    def _unload(self, op: OperationRow, run: TrainingRunRow, payload: Request) -> Outcome:
        self.evict(run.run_id)

        def effects(session: Session, row: TrainingRunRow) -> None:
            row.status = "TERMINATED"

        return Outcome(result=UnloadModelResponse(model_id=run.run_id), effects=effects)


__all__ = ["OperationExecutor", "Outcome", "leaves_engine_unchanged"]
