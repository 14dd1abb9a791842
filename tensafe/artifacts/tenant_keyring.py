"""Per-tenant data keys, wrapped by the KEK: create, rotate, rewrap, shred, export.

A tenant has one ``key_id`` and numbered versions. New artifacts use the active
version; every version stays readable until the tenant's keys are destroyed.
Destroying them crypto-shreds every artifact sealed under them: the wrapped keys
are deleted and a tombstone remembers that (and how many) they were destroyed.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

from tensafe.artifacts.format import KEY_SIZE, validate_tenant_id
from tensafe.artifacts.kek import KeyProvider
from tensafe.artifacts.keystore import TenantKeyRecord, TenantKeyStore, WrappedKeyVersion
from tensafe.artifacts.manifest import utc_now_iso
from tensafe.artifacts.tenant_key import TenantKey
from tensafe.errors import KeyProviderError

_RETRIES = 16


def wrap_context(tenant_id: str, key_id: str, version: int) -> bytes:
    """AAD binding a wrapped tenant key to its tenant, key id and version."""
    tenant = tenant_id.encode("utf-8")
    return (
        b"tensafe-tenant-key/v1\x00"
        + struct.pack(">H", len(tenant))
        + tenant
        + key_id.encode("ascii")
        + b"\x00"
        + struct.pack(">I", version)
    )


@dataclass(frozen=True)
class ShredReport:
    """What :meth:`TenantKeyring.destroy_tenant_keys` did."""

    tenant_id: str
    key_id: str | None
    versions_destroyed: int
    destroyed_at: str

    def __str__(self) -> str:
        return (
            f"destroyed {self.versions_destroyed} key version(s) of tenant {self.tenant_id!r}; "
            "artifacts sealed under them can no longer be decrypted"
        )


@dataclass(frozen=True)
class KekRotation:
    """What :meth:`TenantKeyring.rotate_kek` did."""

    kek_version: int
    rewrapped: int


class TenantKeyring:
    """The server's tenant keys: a :class:`KeyProvider` (KEK) over a :class:`TenantKeyStore`.

    Also a :class:`~tensafe.artifacts.tenant_key.KeyResolver`, so it can be passed
    as ``keys=`` to :func:`~tensafe.artifacts.open_checkpoint`.

    Example:
        >>> import base64
        >>> from tensafe.artifacts.kek import EnvKeyProvider
        >>> from tensafe.artifacts.keystore import MemoryTenantKeyStore
        >>> env = {"TENSAFE_MASTER_KEY": base64.b64encode(bytes(32)).decode()}
        >>> ring = TenantKeyring(EnvKeyProvider(environ=env), MemoryTenantKeyStore())
        >>> ring.current_key("acme").version, ring.rotate_tenant_key("acme").version
        (1, 2)
    """

    def __init__(self, provider: KeyProvider, store: TenantKeyStore) -> None:
        self._provider = provider
        self._store = store

    def __repr__(self) -> str:
        return f"TenantKeyring(provider={self._provider!r}, store={self._store!r})"

    @property
    def kek_id(self) -> str:
        """The identifier of the KEK that wraps the keys (never key material)."""
        return self._provider.kek_id

    def _new_version(self, tenant_id: str, key_id: str, version: int) -> WrappedKeyVersion:
        wrapped = self._provider.wrap(
            os.urandom(KEY_SIZE), context=wrap_context(tenant_id, key_id, version)
        )
        return WrappedKeyVersion(version, wrapped, utc_now_iso())

    def _unwrap(self, record: TenantKeyRecord, version: int) -> TenantKey:
        for entry in record.versions:
            if entry.version == version:
                material = self._provider.unwrap(
                    entry.wrapped, context=wrap_context(record.tenant_id, record.key_id, version)
                )
                return TenantKey(record.tenant_id, record.key_id, version, material)
        raise KeyProviderError(
            f"tenant {record.tenant_id!r} has no version {version} of key {record.key_id!r}"
        )

    @staticmethod
    def _refuse_destroyed(record: TenantKeyRecord) -> None:
        if record.destroyed_at is not None:
            raise KeyProviderError(
                f"the keys of tenant {record.tenant_id!r} were destroyed (crypto-shredded) at "
                f"{record.destroyed_at}; its artifacts can no longer be decrypted"
            )

    def _update(
        self, tenant_id: str, change: Callable[[TenantKeyRecord | None], TenantKeyRecord]
    ) -> TenantKeyRecord:
        for _ in range(_RETRIES):
            current = self._store.get(tenant_id)
            new = change(current)
            expected = None if current is None else current.revision
            if new is current or self._store.compare_and_set(new, expected_revision=expected):
                return new
        raise KeyProviderError(f"tenant {tenant_id!r} keys are being changed concurrently; retry")

    def current_key(self, tenant_id: str) -> TenantKey:
        """The active key of ``tenant_id``, created (version 1) on first use.

        Raises:
            KeyProviderError: if the tenant's keys were destroyed or cannot be unwrapped.
        """
        validate_tenant_id(tenant_id)

        def create(current: TenantKeyRecord | None) -> TenantKeyRecord:
            if current is not None:
                return current
            key_id = "tk_" + secrets.token_hex(12)
            first = self._new_version(tenant_id, key_id, 1)
            return TenantKeyRecord(tenant_id, key_id, 1, (first,), revision=1)

        record = self._update(tenant_id, create)
        self._refuse_destroyed(record)
        return self._unwrap(record, record.active_version)

    def resolve_key(self, *, tenant_id: str, key_id: str, version: int) -> TenantKey:
        """The given version of the tenant's key (for opening artifacts).

        Raises:
            KeyProviderError: unknown tenant, key id or version, or keys destroyed.
        """
        record = self._store.get(tenant_id)
        if record is None:
            raise KeyProviderError(f"tenant {tenant_id!r} has no keys")
        self._refuse_destroyed(record)
        if record.key_id != key_id:
            raise KeyProviderError(f"key {key_id!r} does not belong to tenant {tenant_id!r}")
        return self._unwrap(record, version)

    def rotate_tenant_key(self, tenant_id: str) -> TenantKey:
        """Add a new key version and make it active; older versions stay readable.

        Raises:
            KeyProviderError: if the tenant's keys were destroyed.
        """
        self.current_key(tenant_id)  # creates the first version if needed

        def rotate(current: TenantKeyRecord | None) -> TenantKeyRecord:
            assert current is not None
            self._refuse_destroyed(current)
            version = max(v.version for v in current.versions) + 1
            entry = self._new_version(tenant_id, current.key_id, version)
            return replace(
                current,
                active_version=version,
                versions=(*current.versions, entry),
                revision=current.revision + 1,
            )

        record = self._update(tenant_id, rotate)
        return self._unwrap(record, record.active_version)

    def rewrap_all(self) -> int:
        """Rewrap every tenant key version not under the current KEK version.

        Artifacts are not touched. Returns how many key versions were rewrapped.
        """
        target = self._provider.current_version()
        count = 0
        for tenant_id in self._store.tenant_ids():
            changed = 0

            def rewrap(current: TenantKeyRecord | None) -> TenantKeyRecord:
                nonlocal changed
                assert current is not None
                stale = [v for v in current.versions if v.wrapped.kek_version != target]
                changed = len(stale)
                if not stale:
                    return current
                versions = tuple(
                    replace(
                        v,
                        wrapped=self._provider.rewrap(
                            v.wrapped,
                            context=wrap_context(current.tenant_id, current.key_id, v.version),
                        ),
                    )
                    if v in stale
                    else v
                    for v in current.versions
                )
                return replace(current, versions=versions, revision=current.revision + 1)

            self._update(tenant_id, rewrap)
            count += changed
        return count

    def rotate_kek(self) -> KekRotation:
        """Rotate the provider's KEK, then rewrap every tenant key under it."""
        version = self._provider.rotate()
        return KekRotation(kek_version=version, rewrapped=self.rewrap_all())

    def destroy_tenant_keys(self, tenant_id: str) -> ShredReport:
        """Crypto-shred: delete every key version of ``tenant_id``, keep a tombstone.

        Idempotent: a second call reports 0 versions destroyed. For protection
        against forensic recovery of old wrapped keys from disk, also rotate the
        KEK and retire its old versions.
        """
        validate_tenant_id(tenant_id)
        destroyed = 0
        now = utc_now_iso()

        def shred(current: TenantKeyRecord | None) -> TenantKeyRecord:
            nonlocal destroyed
            destroyed = 0 if current is None else len(current.versions)
            if current is None:
                return TenantKeyRecord(tenant_id, "", 0, (), revision=1, destroyed_at=now)
            if current.destroyed_at is not None:
                return current
            return replace(
                current,
                versions=(),
                revision=current.revision + 1,
                destroyed_at=now,
                destroyed_versions=destroyed,
            )

        record = self._update(tenant_id, shred)
        return ShredReport(tenant_id, record.key_id or None, destroyed, record.destroyed_at or now)

    def export_tenant_key(self, tenant_id: str, *, version: int | None = None) -> TenantKey:
        """Key material for the tenant to decrypt pulled artifacts itself
        (write it with :func:`~tensafe.artifacts.tenant_key.write_key_file`).

        Raises:
            KeyProviderError: unknown tenant or version, or keys destroyed.
        """
        record = self._store.get(tenant_id)
        if record is None:
            raise KeyProviderError(f"tenant {tenant_id!r} has no keys")
        self._refuse_destroyed(record)
        return self._unwrap(record, record.active_version if version is None else version)

    def key_versions(self, tenant_id: str) -> tuple[int, ...]:
        """The tenant's key versions still held (empty if none or destroyed)."""
        record = self._store.get(tenant_id)
        return () if record is None else tuple(v.version for v in record.versions)


__all__ = ["KekRotation", "ShredReport", "TenantKeyring", "wrap_context"]
