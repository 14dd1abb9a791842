"""Where wrapped tenant keys live: a small pluggable store with compare-and-set.

The store only ever sees tenant keys wrapped by the KEK. Writers use optimistic
concurrency (:meth:`TenantKeyStore.compare_and_set` on ``revision``), which maps
onto a DB row update ``WHERE revision = :expected`` for a SQL-backed store and
onto a file lock here.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tensafe.artifacts.kek import WrappedKey
from tensafe.artifacts.secure_files import (
    atomic_write_private,
    check_private,
    ensure_private_dir,
    locked,
)
from tensafe.errors import KeyProviderError

RECORD_FORMAT = "tensafe-tenant-keys/1"


@dataclass(frozen=True)
class WrappedKeyVersion:
    """One version of a tenant key, wrapped by the KEK."""

    version: int
    wrapped: WrappedKey
    created_at: str


@dataclass(frozen=True)
class TenantKeyRecord:
    """All key versions of one tenant, or the tombstone left by crypto-shredding.

    ``revision`` increases by one with every write (optimistic concurrency).
    """

    tenant_id: str
    key_id: str
    active_version: int
    versions: tuple[WrappedKeyVersion, ...]
    revision: int
    destroyed_at: str | None = None
    destroyed_versions: int = 0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (wrapped keys only)."""
        return {
            "format": RECORD_FORMAT,
            "tenant_id": self.tenant_id,
            "key_id": self.key_id,
            "active_version": self.active_version,
            "revision": self.revision,
            "destroyed_at": self.destroyed_at,
            "destroyed_versions": self.destroyed_versions,
            "versions": [
                {"version": v.version, "created_at": v.created_at, "wrapped": v.wrapped.to_dict()}
                for v in self.versions
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> TenantKeyRecord:
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyProviderError: if the record is malformed.
        """
        try:
            if data["format"] != RECORD_FORMAT:
                raise ValueError("format")
            versions = tuple(
                WrappedKeyVersion(
                    int(v["version"]), WrappedKey.from_dict(v["wrapped"]), str(v["created_at"])
                )
                for v in data["versions"]  # type: ignore[attr-defined]
            )
            destroyed_at = data["destroyed_at"]
            return cls(
                tenant_id=str(data["tenant_id"]),
                key_id=str(data["key_id"]),
                active_version=int(data["active_version"]),  # type: ignore[arg-type]
                versions=versions,
                revision=int(data["revision"]),  # type: ignore[arg-type]
                destroyed_at=None if destroyed_at is None else str(destroyed_at),
                destroyed_versions=int(data["destroyed_versions"]),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError):
            raise KeyProviderError("malformed tenant key record") from None


class TenantKeyStore(ABC):
    """Persistence for :class:`TenantKeyRecord` (file default; the server adds a DB one)."""

    @abstractmethod
    def get(self, tenant_id: str) -> TenantKeyRecord | None:
        """The tenant's record, or ``None`` if it has never had keys."""

    @abstractmethod
    def compare_and_set(self, record: TenantKeyRecord, *, expected_revision: int | None) -> bool:
        """Store ``record`` if the stored revision is ``expected_revision`` (``None``:
        no record yet). Returns False, storing nothing, when it is not."""

    @abstractmethod
    def tenant_ids(self) -> list[str]:
        """Every tenant with a record (including tombstones)."""


class MemoryTenantKeyStore(TenantKeyStore):
    """In-process store for tests and ephemeral setups."""

    def __init__(self) -> None:
        self._records: dict[str, TenantKeyRecord] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str) -> TenantKeyRecord | None:
        with self._lock:
            return self._records.get(tenant_id)

    def compare_and_set(self, record: TenantKeyRecord, *, expected_revision: int | None) -> bool:
        with self._lock:
            current = self._records.get(record.tenant_id)
            if (None if current is None else current.revision) != expected_revision:
                return False
            self._records[record.tenant_id] = record
            return True

    def tenant_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._records)


class FileTenantKeyStore(TenantKeyStore):
    """One private JSON file per tenant in a private directory (0700 / 0600).

    Example:
        >>> import tempfile
        >>> store = FileTenantKeyStore(tempfile.mkdtemp())
        >>> store.tenant_ids()
        []
    """

    def __init__(self, directory: str | Path) -> None:
        self._dir = Path(directory)
        ensure_private_dir(self._dir, what="tenant key directory")
        self._lock_path = self._dir / ".lock"
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileTenantKeyStore({str(self._dir)!r})"

    def _path(self, tenant_id: str) -> Path:
        digest = hashlib.sha256(tenant_id.encode("utf-8")).hexdigest()[:32]
        return self._dir / f"tenant-{digest}.json"

    def _read(self, path: Path) -> TenantKeyRecord | None:
        if not path.exists():
            return None
        check_private(path, what="tenant key file")
        try:
            data = json.loads(path.read_bytes())
        except ValueError:
            raise KeyProviderError(f"tenant key file {path} is not valid JSON") from None
        return TenantKeyRecord.from_dict(data)

    def get(self, tenant_id: str) -> TenantKeyRecord | None:
        record = self._read(self._path(tenant_id))
        if record is not None and record.tenant_id != tenant_id:
            raise KeyProviderError("tenant key file belongs to another tenant")
        return record

    def compare_and_set(self, record: TenantKeyRecord, *, expected_revision: int | None) -> bool:
        path = self._path(record.tenant_id)
        with self._thread_lock, locked(self._lock_path):
            current = self._read(path)
            if (None if current is None else current.revision) != expected_revision:
                return False
            data = json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n"
            atomic_write_private(path, data.encode("utf-8"))
            return True

    def tenant_ids(self) -> list[str]:
        records = (self._read(p) for p in sorted(self._dir.glob("tenant-*.json")))
        return sorted(r.tenant_id for r in records if r is not None)


__all__ = [
    "FileTenantKeyStore",
    "MemoryTenantKeyStore",
    "TenantKeyRecord",
    "TenantKeyStore",
    "WrappedKeyVersion",
]
