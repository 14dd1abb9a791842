"""Artifacts: encrypted checkpoints in the artifact store, indexed in the database.

Writing: tensors + manifest are sealed with the tenant's current key straight into
an upload of the store (nothing is written in the clear), the upload is committed
only if the store's SHA-256 equals the sealer's, and only then is the row inserted.
Reading: the row is looked up *for the tenant* (another tenant's id is 404), the
store streams the ciphertext, and opening checks every chunk, the key commitment,
the plaintext hash and the content hash.

TTL: with ``artifact_ttl_s`` set, each artifact gets ``expires_at``; once passed it
is 404 everywhere and :func:`sweep_expired` deletes the blob and the row. The privacy
ledger is never touched by an artifact's deletion.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import BinaryIO, Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from tg_tinker.types import ArtifactInfo

from server.db.models import ArtifactRow, utcnow
from server.db.session import Database
from server.errors import NotFoundError, ValidationError
from server.storage import ArtifactStore, StoredArtifact
from tensafe.artifacts import Manifest, TenantKey, TenantKeyring
from tensafe.errors import ArtifactFormatError, IntegrityError, KeyProviderError

log = logging.getLogger("tensafe.server.artifacts")

ArtifactKind = Literal["lora_adapter", "full_weights", "training_state"]
PATH_SCHEME = "tensafe://"


def artifact_path(*, run_id: str, kind: ArtifactKind, name: str) -> str:
    """``tensafe://{run_id}/weights/{name}`` for training state,
    ``tensafe://{run_id}/sampler_weights/{name}`` for weights to sample from."""
    folder = "weights" if kind == "training_state" else "sampler_weights"
    return f"{PATH_SCHEME}{run_id}/{folder}/{name}"


def shape_signature(*, base_model: str, lora: Mapping[str, object] | None) -> str:
    """What a checkpoint must share with a run to be loaded into it: the base model
    and the adapter's shape (rank, target modules, bias) — or full fine-tuning."""
    shape = None
    if lora is not None:
        shape = {
            "rank": lora["rank"],
            "modules": sorted(lora["modules"]),  # type: ignore[call-overload]
            "bias": lora["bias"],
        }
    blob = json.dumps({"base_model": base_model, "lora": shape}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _visible(tenant_id: str, now: datetime):  # type: ignore[no-untyped-def]
    return (
        ArtifactRow.tenant_id == tenant_id,
        or_(ArtifactRow.expires_at.is_(None), ArtifactRow.expires_at > now),
    )


def get_artifact(session: Session, *, tenant_id: str, artifact_id: str) -> ArtifactRow:
    """The tenant's unexpired artifact.

    Raises:
        NotFoundError: unknown, another tenant's, or expired.
    """
    row = session.scalar(
        select(ArtifactRow).where(
            ArtifactRow.artifact_id == artifact_id, *_visible(tenant_id, utcnow())
        )
    )
    if row is None:
        raise NotFoundError(f"no artifact {artifact_id!r}", field="artifact_id")
    return row


def resolve_reference(
    session: Session, *, tenant_id: str, artifact_id: str | None, path: str | None
) -> ArtifactRow:
    """The artifact named by id or by ``tensafe://`` path.

    Raises:
        ValidationError: (``path``) not a ``tensafe://`` path.
        NotFoundError: no such artifact for this tenant (field ``artifact_id`` or ``path``).
    """
    if artifact_id is not None:
        return get_artifact(session, tenant_id=tenant_id, artifact_id=artifact_id)
    assert path is not None
    if not path.startswith(PATH_SCHEME):
        raise ValidationError("must look like tensafe://{run_id}/weights/{name}", field="path")
    row = session.scalar(
        select(ArtifactRow).where(ArtifactRow.path == path, *_visible(tenant_id, utcnow()))
    )
    if row is None:
        raise NotFoundError(f"no checkpoint at {path}", field="path")
    return row


def list_artifacts(session: Session, *, tenant_id: str, run_id: str | None) -> list[ArtifactRow]:
    """The tenant's unexpired artifacts (of one run if given), oldest first."""
    query = select(ArtifactRow).where(*_visible(tenant_id, utcnow()))
    if run_id is not None:
        query = query.where(ArtifactRow.run_id == run_id)
    return list(session.scalars(query.order_by(ArtifactRow.created_at, ArtifactRow.artifact_id)))


def name_taken(session: Session, *, path: str) -> bool:
    return (
        session.scalar(select(ArtifactRow.artifact_id).where(ArtifactRow.path == path)) is not None
    )


def artifact_to_wire(row: ArtifactRow) -> ArtifactInfo:
    return ArtifactInfo(
        artifact_id=row.artifact_id,
        run_id=row.run_id,
        kind=row.kind,  # type: ignore[arg-type]
        name=row.name,
        path=row.path,
        size_bytes=row.size_bytes,
        content_hash=row.content_hash,
        step=row.step,
        metadata=row.user_metadata,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


@dataclass(frozen=True)
class SealedArtifact:
    """An artifact sealed and published in the store, not yet in the database."""

    artifact_id: str
    stored: StoredArtifact
    manifest: Manifest
    key: TenantKey


def seal_into_store(
    store: ArtifactStore,
    *,
    tensors: Mapping[str, object],
    manifest: Manifest,
    tenant_key: TenantKey,
    artifact_id: str,
    ttl: timedelta | None,
) -> SealedArtifact:
    """Seal ``tensors`` + ``manifest`` into a new store upload and publish it.

    Raises:
        ConfigError: bad tensor names/dtypes or manifest.
        IntegrityError: the store received other bytes than were sealed.
        StorageError: the store failed (nothing is published).
    """
    from tensafe.artifacts import seal_checkpoint

    with store.create(artifact_id, ttl=ttl) as upload:
        info = seal_checkpoint(
            tensors=tensors,  # type: ignore[arg-type]
            manifest=manifest,
            tenant_key=tenant_key,
            artifact_id=artifact_id,
            out=upload,  # type: ignore[arg-type]
        )
        stored = upload.commit(expected_content_hash=info.content_hash)
    return SealedArtifact(
        artifact_id=artifact_id, stored=stored, manifest=info.manifest, key=tenant_key
    )


def open_from_store(store: ArtifactStore, keyring: TenantKeyring, row: ArtifactRow):  # type: ignore[no-untyped-def]
    """Decrypt and fully verify an artifact into memory (``OpenedCheckpoint``).

    Every way the stored bytes can be wrong — a damaged header, a cut-off blob, a row
    pointing at another artifact's blob, a blob naming a key that is not the tenant's —
    is the same opaque :class:`~tensafe.errors.IntegrityError`; the details go to the
    server log only.

    Raises:
        ArtifactNotFoundError: the blob is gone from the store.
        IntegrityError: any check failed (opaque).
        KeyProviderError: the tenant's keys are destroyed or cannot be unwrapped.
    """
    from tensafe.artifacts import open_checkpoint

    with opaque_failures(keyring, row), open_content(store, row) as src:
        return open_checkpoint(
            src,
            keys=keyring,
            tenant_id=row.tenant_id,
            artifact_id=row.artifact_id,
            expected_content_hash=row.content_hash,
        )


def fetch_sealed(store: ArtifactStore, keyring: TenantKeyring, row: ArtifactRow) -> SealedBlob:
    """An artifact's whole ciphertext and the one tenant key that opens it, for opening
    elsewhere (a Ray worker); nothing is decrypted here. Failures as :func:`open_from_store`.
    """
    from tensafe.artifacts import read_header

    with opaque_failures(keyring, row), open_content(store, row) as src:
        data = src.read()
        header = read_header(io.BytesIO(data))
        key = keyring.resolve_key(
            tenant_id=row.tenant_id, key_id=header.key_id, version=header.key_version
        )
    return SealedBlob(data=data, key=key)


@dataclass(frozen=True)
class SealedBlob:
    """A stored artifact's ciphertext and the tenant key version it names."""

    data: bytes = field(repr=False)
    key: TenantKey


@contextmanager
def opaque_failures(keyring: TenantKeyring, row: ArtifactRow) -> Iterator[None]:
    """Every way opening ``row``'s artifact can fail on its bytes becomes one opaque
    :class:`~tensafe.errors.IntegrityError` (details to the log); a destroyed tenant key
    is said as such."""
    try:
        yield
    except (ArtifactFormatError, IntegrityError) as exc:
        raise _integrity_failure(row, exc) from None
    except KeyProviderError as exc:
        try:
            keyring.current_key(row.tenant_id)
        except KeyProviderError:
            raise exc from None  # the tenant's keys themselves are gone: say so
        raise _integrity_failure(row, exc) from None  # the blob names another key


def _integrity_failure(row: ArtifactRow, exc: BaseException) -> IntegrityError:
    log.warning("artifact %s failed its integrity checks: %s", row.artifact_id, exc)
    return IntegrityError()


def _blob_size(src: BinaryIO) -> int | None:
    try:
        return os.fstat(src.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None  # not a file (a network stream): the client checks size and hash


def open_content(store: ArtifactStore, row: ArtifactRow) -> BinaryIO:
    """The stored ciphertext, for streaming to the client, once the store's record of
    it matches the row (content hash and size) and, for a file, its actual size: a
    blob that was cut off or a row that names another blob is refused before a byte
    is sent, rather than ending the stream early.

    Raises:
        ArtifactNotFoundError: the blob is gone from the store.
        IntegrityError: the blob is not the row's (opaque).
    """
    stored = store.stat(row.storage_key)
    if stored.content_hash != row.content_hash or stored.size_bytes != row.size_bytes:
        raise _integrity_failure(row, ValueError("the store's record does not match the row"))
    src = store.get(row.storage_key)
    size = _blob_size(src)
    if size is not None and size != row.size_bytes:
        src.close()
        raise _integrity_failure(row, ValueError(f"blob is {size} bytes, not {row.size_bytes}"))
    return src


def open_tenant_artifact(
    db: Database, store: ArtifactStore, *, tenant_id: str, artifact_id: str
) -> tuple[ArtifactRow, BinaryIO]:
    """The tenant's artifact row and its stored ciphertext, read in a short session of
    its own (the stream outlives it).

    Raises:
        NotFoundError: no such (unexpired) artifact for this tenant.
        ArtifactNotFoundError: the blob is gone from the store.
        IntegrityError: the blob is not the row's (opaque; see :func:`open_content`).
    """
    with db.sessions() as session:
        row = get_artifact(session, tenant_id=tenant_id, artifact_id=artifact_id)
    return row, open_content(store, row)


def sweep_expired(db: Database, store: ArtifactStore, *, now: datetime | None = None) -> int:
    """Delete expired artifacts (blob, then row) and let the store purge its own
    expired or abandoned uploads. Returns how many rows were removed."""
    moment = now or utcnow()
    with db.sessions() as session:
        expired = list(
            session.scalars(
                select(ArtifactRow.artifact_id).where(
                    ArtifactRow.expires_at.is_not(None), ArtifactRow.expires_at <= moment
                )
            )
        )
    removed = 0
    for artifact_id in expired:
        store.delete(artifact_id)
        with db.transaction() as session:
            row = session.get(ArtifactRow, artifact_id)
            if row is not None:
                session.delete(row)
                removed += 1
    store.purge_expired(now=moment)
    return removed


__all__ = [
    "PATH_SCHEME",
    "ArtifactKind",
    "SealedArtifact",
    "SealedBlob",
    "artifact_path",
    "artifact_to_wire",
    "fetch_sealed",
    "get_artifact",
    "list_artifacts",
    "name_taken",
    "opaque_failures",
    "open_content",
    "open_from_store",
    "open_tenant_artifact",
    "resolve_reference",
    "seal_into_store",
    "shape_signature",
    "sweep_expired",
]
