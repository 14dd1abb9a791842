"""The checkpoint operations of a run: ``save_state``, ``save_weights_for_sampler``,
``load_state`` (a mixin of :class:`~server.worker.executor.OperationExecutor`).

Saving seals the engine's tensors straight into the artifact store (ciphertext only)
and commits the artifact row with the completed future; a failed commit deletes the
orphaned blob. Loading restores weights and optimizer from the checkpoint but the
accountant from the ledger, and records the carried history
(:func:`server.services.run_history.record_load`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session
from tg_tinker.types import (
    LoadStateRequest,
    LoadStateResponse,
    SaveStateRequest,
    SaveStateResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
)

from server.db.models import ArtifactRow, OperationRow, TrainingRunRow
from server.db.session import Database
from server.errors import ConflictError
from server.services import artifacts as artifact_service
from server.services import run_history
from server.services.budgets import BudgetService
from server.services.evidence import checkpoint_bundle
from server.services.wire import DEFAULT_DATASET_ID
from server.settings import Settings
from server.storage import ArtifactStore
from server.worker import engine_calls, engine_checkpoints, sealed_state
from server.worker.backends import Engine
from server.worker.engine_calls import SealRequest, on_engine
from server.worker.outcomes import Outcome, Request
from server.worker.runtimes import RunEngines, RunRuntime
from tensafe.artifacts import TenantKeyring, new_artifact_id
from tensafe.evidence.keys import signing_key

log = logging.getLogger("tensafe.server.worker")


def charged_dataset(runtime: RunRuntime) -> str:
    """The dataset whose budget a DP run's steps are charged to."""
    return runtime.spec.dataset_id or DEFAULT_DATASET_ID


class CheckpointOperations:
    """Checkpoint handlers; the executor provides the attributes below."""

    db: Database
    store: ArtifactStore
    keyring: TenantKeyring
    settings: Settings
    engines: RunEngines
    budgets: BudgetService
    _labels: Callable[[RunRuntime, TrainingRunRow], dict[str, str]]  # a staticmethod

    def _ttl(self) -> timedelta | None:
        ttl = self.settings.artifact_ttl_s
        return None if ttl is None else timedelta(seconds=ttl)

    def _store_artifact(
        self,
        op: OperationRow,
        run: TrainingRunRow,
        *,
        kind: artifact_service.ArtifactKind,
        name: str,
        request: SealRequest,
        engine: Engine,
    ) -> tuple[ArtifactRow, Callable[[], None]]:
        path = artifact_service.artifact_path(run_id=run.run_id, kind=kind, name=name)
        with self.db.sessions() as session:
            if artifact_service.name_taken(session, path=path):
                raise ConflictError(
                    f"run {run.run_id} already has a checkpoint named {name!r} ({path})",
                    field="name",
                )
            dp_seq = run_history.history_length(session, run.run_id)
        artifact_id = new_artifact_id()
        sealed = sealed_state.seal_to_store(
            engine,
            store=self.store,
            request=request,
            tenant_key=self.keyring.current_key(run.tenant_id),
            artifact_id=artifact_id,
            ttl=self._ttl(),
        )
        runtime = self.engines.get(run.run_id)  # the caller's for_operation built it
        assert runtime is not None
        try:
            bundle = self._sign_checkpoint(
                engine=engine,
                tenant_id=run.tenant_id,
                run_id=run.run_id,
                dataset_id=runtime.spec.dataset_id,
                charged_dataset=charged_dataset(runtime),
                labels=self._labels(runtime, run),
                artifact_id=artifact_id,
                kind=kind,
                created_at=sealed.stored.created_at,
                content_sha256=sealed.stored.content_hash,
                plaintext_sha256=sealed.manifest.plaintext_sha256 or "",
                tenant_key=sealed.key,
                base_model_sha256=on_engine(engine, engine_calls.base_weights_sha256),
            )
        except Exception:
            self.store.delete(artifact_id)  # nothing is published without its evidence
            raise
        row = ArtifactRow(
            artifact_id=artifact_id,
            tenant_id=run.tenant_id,
            run_id=run.run_id,
            kind=kind,
            name=name,
            path=path,
            storage_key=artifact_id,
            size_bytes=sealed.stored.size_bytes,
            content_hash=sealed.stored.content_hash,
            step=sealed.manifest.step,
            dp_seq=dp_seq,
            base_model=engine.name,
            shape_signature=engine_checkpoints.engine_signature(engine),
            include_optimizer=request.include_optimizer,
            user_metadata=dict(sealed.manifest.metadata),
            key_id=sealed.key.key_id,
            key_version=sealed.key.version,
            future_id=op.future_id,
            created_at=sealed.stored.created_at,
            expires_at=sealed.stored.expires_at,
            evidence=bundle.decode("utf-8"),
        )

        def discard_blob() -> None:
            try:
                self.store.delete(artifact_id)
            except Exception:
                log.exception("could not delete orphaned artifact %s", artifact_id)

        return row, discard_blob

    def _sign_checkpoint(self, **fields: object) -> bytes:
        """The checkpoint's signed evidence bundle (:mod:`server.services.evidence`)."""
        key = signing_key(self.keyring)  # before the session: the keyring has its own
        with self.db.sessions() as session:
            return checkpoint_bundle(session, keyring=self.keyring, private_key=key, **fields)  # type: ignore[arg-type]

    def _save_state(self, op: OperationRow, run: TrainingRunRow, payload: Request) -> Outcome:
        runtime = self.engines.for_operation(op, run)
        engine = runtime.engine
        request = SaveStateRequest.model_validate(payload or {})
        seal = SealRequest(
            kind="training_state",
            include_optimizer=request.include_optimizer,
            metadata=request.metadata,
            labels=self._labels(runtime, run),
        )
        name = request.name or f"step-{engine.step}-{op.seq}"
        row, discard = self._store_artifact(
            op, run, kind="training_state", name=name, request=seal, engine=engine
        )

        def effects(session: Session, run_row: TrainingRunRow) -> None:
            session.add(row)
            session.flush()
            run_row.last_checkpoint_artifact_id = row.artifact_id

        result = SaveStateResponse(
            artifact_id=row.artifact_id,
            path=row.path,
            size_bytes=row.size_bytes,
            content_hash=row.content_hash,
            metadata=row.user_metadata,
            step=row.step,
        )
        return Outcome(result=result, effects=effects, on_commit_failure=discard)

    def _save_weights_for_sampler(
        self, op: OperationRow, run: TrainingRunRow, payload: Request
    ) -> Outcome:
        runtime = self.engines.for_operation(op, run)
        engine = runtime.engine
        request = SaveWeightsForSamplerRequest.model_validate(payload or {})
        seal = SealRequest(kind="sampler", labels=self._labels(runtime, run))
        row, discard = self._store_artifact(
            op,
            run,
            kind=sealed_state.sampler_kind(engine),  # type: ignore[arg-type]
            name=request.name,
            request=seal,
            engine=engine,
        )

        def effects(session: Session, run_row: TrainingRunRow) -> None:
            session.add(row)

        result = SaveWeightsForSamplerResponse(
            artifact_id=row.artifact_id,
            path=row.path,
            size_bytes=row.size_bytes,
            content_hash=row.content_hash,
        )
        return Outcome(result=result, effects=effects, on_commit_failure=discard)

    def _load_state(self, op: OperationRow, run: TrainingRunRow, payload: Request) -> Outcome:
        runtime = self.engines.for_operation(op, run)
        engine = runtime.engine
        request = LoadStateRequest.model_validate(payload)
        ref_field = "artifact_id" if request.artifact_id is not None else "path"
        with self.db.sessions() as session:
            artifact = artifact_service.resolve_reference(
                session,
                tenant_id=run.tenant_id,
                artifact_id=request.artifact_id,
                path=request.path,
            )
            source = session.get(TrainingRunRow, artifact.run_id)
            assert source is not None
            engine_checkpoints.check_compatible(artifact, source, run, engine, field=ref_field)
            carried = []
            if engine.dp is not None:
                carried = run_history.steps_to_carry(
                    session,
                    source_run_id=artifact.run_id,
                    upto=artifact.dp_seq,
                    target_run_id=run.run_id,
                )
            own = run_history.accountant_history(session, run.run_id)
            session.expunge(artifact)
        history = own + [(c.noise_multiplier, c.sample_rate) for c in carried]
        step = sealed_state.restore_from_artifact(
            engine,
            store=self.store,
            keyring=self.keyring,
            artifact=artifact,
            history=history,
            include_optimizer=request.include_optimizer,
        )
        runtime.needs_restore = None
        runtime.lost_examples = 0
        result = LoadStateResponse(
            artifact_id=artifact.artifact_id, path=artifact.path, step=step, status="loaded"
        )
        run_history.record_load(
            self.db,
            self.budgets,
            op=op,
            engine=engine,
            dataset_id=charged_dataset(runtime) if engine.dp is not None else None,
            carried=carried,
            artifact_id=artifact.artifact_id,
            result=result,
        )
        return Outcome(result=result, committed=True, engine_changed=True)


__all__ = ["CheckpointOperations", "charged_dataset"]
