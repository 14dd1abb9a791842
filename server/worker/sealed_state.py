"""Checkpoints in and out of a run's engine, wherever it lives.

* In this process: the tensors are sealed straight into the store
  (:func:`server.services.artifacts.seal_into_store`, streaming) and opened from it.
* In a Ray actor (:class:`~server.worker.backends.remote_engine.RemoteEngine`): the
  actor seals (:func:`server.worker.engine_calls.seal_payload`) and only the ciphertext
  comes back to be stored; to restore, the ciphertext goes to the actor with the one
  tenant key version it names and is opened there. What crosses to the actor is that
  per-tenant data key (never the KEK, never other tenants' keys); Ray's transport must
  therefore be TLS outside one host (docs/ray.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from server.db.models import ArtifactRow
from server.services import artifacts as artifact_service
from server.services.artifacts import SealedArtifact
from server.storage import ArtifactStore
from server.worker import engine_calls, engine_checkpoints
from server.worker.backends import Engine, RemoteEngine
from server.worker.engine_calls import SealRequest
from tensafe.artifacts import TenantKey, TenantKeyring


def sampler_kind(engine: Engine) -> str:
    """The artifact kind ``save_weights_for_sampler`` writes for this engine."""
    return "lora_adapter" if engine.lora_config is not None else "full_weights"


def seal_to_store(
    engine: Engine,
    *,
    store: ArtifactStore,
    request: SealRequest,
    tenant_key: TenantKey,
    artifact_id: str,
    ttl: timedelta | None,
) -> SealedArtifact:
    """Seal the checkpoint ``request`` names under ``tenant_key`` into a new store blob.

    Raises:
        EngineStateError: gradients are pending (``training_state``).
        ConfigError: bad metadata.
        IntegrityError, StorageError: the store failed (nothing is published).
        WorkerLostError: the engine's actor died (retry).
    """
    if isinstance(engine, RemoteEngine):
        blob = engine.call(
            engine_calls.seal_payload,
            request=request,
            tenant_key=tenant_key,
            artifact_id=artifact_id,
        )
        with store.create(artifact_id, ttl=ttl) as upload:
            upload.write(blob.data)
            stored = upload.commit(expected_content_hash=blob.info.content_hash)
        return SealedArtifact(
            artifact_id=artifact_id, stored=stored, manifest=blob.info.manifest, key=tenant_key
        )
    _, tensors, manifest = engine_calls.checkpoint_payload(engine, request=request)
    return artifact_service.seal_into_store(
        store,
        tensors=tensors,
        manifest=manifest,
        tenant_key=tenant_key,
        artifact_id=artifact_id,
        ttl=ttl,
    )


def restore_from_artifact(
    engine: Engine,
    *,
    store: ArtifactStore,
    keyring: TenantKeyring,
    artifact: ArtifactRow,
    history: Sequence[tuple[float, float]],
    include_optimizer: bool = True,
) -> int:
    """Restore the engine from a stored checkpoint (weights and optimizer from it, the
    accountant from ``history``); returns the restored step.

    Raises:
        ArtifactNotFoundError: the blob is gone.
        IntegrityError: the blob does not open (opaque).
        KeyProviderError: the tenant's keys are destroyed.
        EngineStateError: the checkpoint does not fit the engine.
        WorkerLostError: the engine's actor died (retry).
    """
    if isinstance(engine, RemoteEngine):
        sealed = artifact_service.fetch_sealed(store, keyring, artifact)
        with artifact_service.opaque_failures(keyring, artifact):
            return engine.call(
                engine_calls.restore_from_blob,
                blob=sealed.data,
                tenant_key=sealed.key,
                artifact_id=artifact.artifact_id,
                content_hash=artifact.content_hash,
                history=list(history),
                include_optimizer=include_optimizer,
            )
    opened = artifact_service.open_from_store(store, keyring, artifact)
    return engine_checkpoints.restore_engine(
        engine,
        tensors=opened.tensors,
        manifest=opened.manifest,
        history=history,
        include_optimizer=include_optimizer,
    )


__all__ = ["restore_from_artifact", "sampler_kind", "seal_to_store"]
