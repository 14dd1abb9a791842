"""The artifact store interface: immutable ciphertext blobs addressed by artifact id.

Stores hold only sealed artifacts (ciphertext); they never see keys or plaintext.
Every store computes the SHA-256 of what it stores (the ``content_hash``) while it
streams, and publishes an artifact atomically: until :meth:`ArtifactUpload.commit`
returns, readers cannot see any of it, and an upload that is aborted or crashes
leaves nothing visible.

Typical server use, streaming the sealed checkpoint straight into the store::

    with store.create(artifact_id, ttl=None) as upload:
        info = seal_checkpoint(tensors=..., manifest=..., tenant_key=...,
                               artifact_id=artifact_id, out=upload)
        stored = upload.commit(expected_content_hash=info.content_hash)
"""

from __future__ import annotations

import hashlib
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import BinaryIO

from tensafe.artifacts.format import validate_identifier
from tensafe.errors import ConfigError, IntegrityError, StorageError

COPY_BLOCK = 1 << 20


def validate_artifact_id(artifact_id: str) -> str:
    """Return ``artifact_id`` if it is safe as a file name and object key.

    Raises:
        ConfigError: (field ``artifact_id``) otherwise.
    """
    validate_identifier(artifact_id, field="artifact_id", max_length=128)
    if artifact_id.startswith("."):
        raise ConfigError("artifact_id", "must not start with '.'")
    return artifact_id


def expiry_from_ttl(ttl: timedelta | None, *, now: datetime) -> datetime | None:
    """``now + ttl``, or ``None`` for no expiry.

    Raises:
        ConfigError: if ``ttl`` is not positive.
    """
    if ttl is None:
        return None
    if ttl <= timedelta(0):
        raise ConfigError("ttl", "must be a positive timedelta or None")
    return now + ttl


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredArtifact:
    """A published artifact as the store records it."""

    artifact_id: str
    size_bytes: int
    content_hash: str
    """Lowercase hex SHA-256 of the stored bytes, computed by the store."""
    created_at: datetime
    expires_at: datetime | None = None

    def is_expired(self, now: datetime) -> bool:
        """True if the artifact has a TTL that has passed at ``now``."""
        return self.expires_at is not None and self.expires_at <= now

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the stores' metadata record)."""
        return {
            "artifact_id": self.artifact_id,
            "size_bytes": self.size_bytes,
            "content_hash": self.content_hash,
            "created_at": self.created_at.isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> StoredArtifact:
        """Inverse of :meth:`to_dict`.

        Raises:
            StorageError: if the record is malformed.
        """
        try:
            expires = data.get("expires_at")
            return cls(
                artifact_id=str(data["artifact_id"]),
                size_bytes=int(data["size_bytes"]),  # type: ignore[arg-type]
                content_hash=str(data["content_hash"]),
                created_at=datetime.fromisoformat(str(data["created_at"])),
                expires_at=None if expires is None else datetime.fromisoformat(str(expires)),
            )
        except (KeyError, TypeError, ValueError):
            raise StorageError("malformed artifact metadata record") from None


class ArtifactUpload(ABC):
    """A write-only, not-yet-visible artifact. Use as a context manager: leaving the
    block without :meth:`commit` (or with an exception) aborts and discards it."""

    def __init__(self, artifact_id: str, expires_at: datetime | None) -> None:
        self.artifact_id = artifact_id
        self.expires_at = expires_at
        self._hash = hashlib.sha256()
        self._size = 0
        self._finished = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes; returns ``len(data)``.

        Raises:
            StorageError: if the upload is finished or the backend fails.
        """
        if self._finished:
            raise StorageError("write to a committed or aborted upload")
        self._hash.update(data)
        self._size += len(data)
        self._write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: :meth:`commit` makes the data durable.

        Raises:
            StorageError: if the upload is finished.
        """
        if self._finished:
            raise StorageError("flush of a committed or aborted upload")

    def commit(self, *, expected_content_hash: str | None = None) -> StoredArtifact:
        """Make the artifact durable and visible, atomically.

        Raises:
            IntegrityError: the bytes received do not hash to ``expected_content_hash``
                (nothing is published).
            StorageError: the artifact id exists already or the backend failed.
        """
        if self._finished:
            raise StorageError("upload already committed or aborted")
        digest = self._hash.hexdigest()
        if expected_content_hash is not None and digest != expected_content_hash.strip().lower():
            self.abort()
            raise IntegrityError()
        record = StoredArtifact(self.artifact_id, self._size, digest, utc_now(), self.expires_at)
        try:
            self._publish(record)
        except BaseException:
            self.abort()
            raise
        self._finished = True
        return record

    def abort(self) -> None:
        """Discard everything written; idempotent."""
        if not self._finished:
            self._finished = True
            self._discard()

    @abstractmethod
    def _write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    def _publish(self, record: StoredArtifact) -> None: ...

    @abstractmethod
    def _discard(self) -> None: ...

    def __enter__(self) -> ArtifactUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class ArtifactStore(ABC):
    """Where sealed artifacts live. Implementations: local directory, S3."""

    @abstractmethod
    def create(self, artifact_id: str, *, ttl: timedelta | None = None) -> ArtifactUpload:
        """Start an upload; nothing is visible until it is committed.

        Raises:
            ConfigError: invalid artifact id or TTL.
            StorageError: the artifact id exists already.
        """

    @abstractmethod
    def stat(self, artifact_id: str) -> StoredArtifact:
        """The record of a visible, unexpired artifact.

        Raises:
            ArtifactNotFoundError: if there is none.
        """

    @abstractmethod
    def get(self, artifact_id: str) -> BinaryIO:
        """Open the artifact for streaming reads (close it, or use ``with``).

        Raises:
            ArtifactNotFoundError: if there is none (or it expired).
        """

    @abstractmethod
    def list_artifacts(self) -> list[StoredArtifact]:
        """Every visible, unexpired artifact, sorted by artifact id."""

    @abstractmethod
    def delete(self, artifact_id: str) -> bool:
        """Remove an artifact; returns whether it existed."""

    @abstractmethod
    def purge_expired(self, *, now: datetime | None = None) -> int:
        """Delete artifacts whose TTL passed (and abandoned partial uploads);
        returns how many artifacts were deleted."""

    def exists(self, artifact_id: str) -> bool:
        """Whether a visible, unexpired artifact has this id."""
        try:
            self.stat(artifact_id)
        except KeyError:
            return False
        return True

    def put(
        self,
        artifact_id: str,
        src: BinaryIO,
        *,
        ttl: timedelta | None = None,
        expected_content_hash: str | None = None,
    ) -> StoredArtifact:
        """Stream ``src`` into a new artifact and publish it atomically.

        Raises:
            IntegrityError: if ``expected_content_hash`` is given and differs.
            StorageError: if the id exists or the backend fails.
        """
        with self.create(artifact_id, ttl=ttl) as upload:
            shutil.copyfileobj(src, upload, COPY_BLOCK)  # type: ignore[misc]
            return upload.commit(expected_content_hash=expected_content_hash)


__all__ = [
    "ArtifactStore",
    "ArtifactUpload",
    "StoredArtifact",
    "expiry_from_ttl",
    "utc_now",
    "validate_artifact_id",
]
