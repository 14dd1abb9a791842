"""Tenant data keys: the KEK provider from settings, wrapped keys in the database.

:class:`DatabaseTenantKeyStore` implements :class:`tensafe.artifacts.TenantKeyStore`
on the ``tenant_keys`` table; compare-and-set is one conditional ``UPDATE ... WHERE
revision = :expected`` (or an ``INSERT`` that fails on the primary key), so several
server processes sharing a PostgreSQL database cannot lose a rotation. The table only
ever holds keys wrapped by the KEK.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from server.db.models import TenantKeyRow, utcnow
from server.db.session import Database
from server.errors import NotFoundError
from server.settings import Settings
from tensafe.artifacts import (
    EnvKeyProvider,
    KeyProvider,
    LocalKeyring,
    TenantKey,
    TenantKeyring,
    TenantKeyStore,
)
from tensafe.artifacts.keystore import TenantKeyRecord


class DatabaseTenantKeyStore(TenantKeyStore):
    """Wrapped tenant keys in the ``tenant_keys`` table (one row per tenant)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return f"DatabaseTenantKeyStore({self._db.dialect})"

    def get(self, tenant_id: str) -> TenantKeyRecord | None:
        with self._db.sessions() as session:
            row = session.get(TenantKeyRow, tenant_id)
            return None if row is None else TenantKeyRecord.from_dict(row.record)

    def compare_and_set(self, record: TenantKeyRecord, *, expected_revision: int | None) -> bool:
        data = record.to_dict()
        try:
            with self._db.transaction() as session:
                if expected_revision is None:
                    session.add(
                        TenantKeyRow(
                            tenant_id=record.tenant_id,
                            key_id=record.key_id,
                            revision=record.revision,
                            record=data,
                            updated_at=utcnow(),
                        )
                    )
                    session.flush()
                    return True
                result = session.execute(
                    update(TenantKeyRow)
                    .where(
                        TenantKeyRow.tenant_id == record.tenant_id,
                        TenantKeyRow.revision == expected_revision,
                    )
                    .values(
                        key_id=record.key_id,
                        revision=record.revision,
                        record=data,
                        updated_at=utcnow(),
                    )
                )
                return result.rowcount == 1  # type: ignore[attr-defined]
        except SAIntegrityError:
            return False  # another writer inserted first

    def tenant_ids(self) -> list[str]:
        with self._db.sessions() as session:
            return sorted(session.scalars(select(TenantKeyRow.tenant_id)))


def build_key_provider(settings: Settings) -> KeyProvider:
    """The KEK provider the settings name (local keyring file by default).

    Raises:
        KeyProviderError: the keyring is not private, malformed, or the env variable is missing.
    """
    if settings.key_provider == "env":
        return EnvKeyProvider(settings.master_key_env)
    return LocalKeyring(settings.resolved_keyring_path())


def build_keyring(settings: Settings, db: Database) -> TenantKeyring:
    """Tenant keys wrapped by the configured KEK, stored in the database."""
    return TenantKeyring(build_key_provider(settings), DatabaseTenantKeyStore(db))


def export_tenant_key(keyring: TenantKeyring, *, tenant_id: str, version: int | None) -> TenantKey:
    """The tenant's key for local decryption (the active version by default; created
    on first use, so a new tenant can export before saving anything).

    Raises:
        NotFoundError: (``version``) the tenant has no such key version.
        KeyProviderError: the keys were destroyed or cannot be unwrapped.
    """
    if version is None:
        return keyring.current_key(tenant_id)
    if version not in keyring.key_versions(tenant_id):
        raise NotFoundError(f"no key version {version} for this tenant", field="version")
    return keyring.export_tenant_key(tenant_id, version=version)


__all__ = ["DatabaseTenantKeyStore", "build_key_provider", "build_keyring", "export_tenant_key"]
