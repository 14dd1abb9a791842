"""The DB-backed wrapped-key store under the artifacts package's TenantKeyring."""

from __future__ import annotations

import base64
from dataclasses import replace

from sqlalchemy import select

from server.db.models import TenantKeyRow
from server.db.session import Database
from server.services.keys import DatabaseTenantKeyStore, export_tenant_key
from tensafe.artifacts import EnvKeyProvider, TenantKeyring


def _keyring(database: Database) -> TenantKeyring:
    env = {"TENSAFE_MASTER_KEY": base64.b64encode(bytes(range(32))).decode()}
    return TenantKeyring(EnvKeyProvider(environ=env), DatabaseTenantKeyStore(database))


def test_compare_and_set(database: Database) -> None:
    ring = _keyring(database)
    tenant = "ten_cas_" + database.dialect
    ring.current_key(tenant)
    store = DatabaseTenantKeyStore(database)
    record = store.get(tenant)
    assert record is not None and record.revision == 1
    newer = replace(record, revision=2)
    assert not store.compare_and_set(newer, expected_revision=None)  # exists already
    assert not store.compare_and_set(newer, expected_revision=5)  # stale expectation
    assert store.compare_and_set(newer, expected_revision=1)
    assert store.get(tenant).revision == 2  # type: ignore[union-attr]
    assert tenant in store.tenant_ids()


def test_keyring_over_database(database: Database) -> None:
    ring = _keyring(database)
    tenant = "ten_ring_" + database.dialect
    first = ring.current_key(tenant)
    assert ring.current_key(tenant).material == first.material
    second = ring.rotate_tenant_key(tenant)
    assert second.version == 2 and second.material != first.material
    assert export_tenant_key(ring, tenant_id=tenant, version=1).material == first.material
    assert export_tenant_key(ring, tenant_id=tenant, version=None).version == 2
    with database.sessions() as session:
        row = session.scalar(select(TenantKeyRow).where(TenantKeyRow.tenant_id == tenant))
        assert row is not None
        stored = repr(row.record)
    for key in (first, second):  # only wrapped keys are stored
        assert base64.b64encode(key.material).decode() not in stored
        assert key.material.hex() not in stored
