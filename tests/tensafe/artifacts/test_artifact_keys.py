"""KEK providers, tenant keyring: rotation, rewrap, crypto-shred, export, redaction."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from tensafe.artifacts import (
    EnvKeyProvider,
    FileTenantKeyStore,
    LocalKeyring,
    MemoryTenantKeyStore,
    TenantKey,
    TenantKeyring,
    open_bytes,
    read_key_file,
    seal_bytes,
    write_key_file,
)
from tensafe.artifacts.keystore import TenantKeyRecord
from tensafe.errors import ConfigError, IntegrityError, KeyProviderError


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


@pytest.fixture
def ring(tmp_path: Path, keyring_path: Path) -> TenantKeyring:
    return TenantKeyring(LocalKeyring(keyring_path), FileTenantKeyStore(tmp_path / "tenants"))


def _seal(key: TenantKey, payload: bytes, artifact_id: str = "art_k") -> bytes:
    return seal_bytes(payload, tenant_key=key, artifact_id=artifact_id)


def _open(blob: bytes, ring: TenantKeyring, tenant: str = "acme") -> bytes:
    return open_bytes(blob, keys=ring, tenant_id=tenant, artifact_id=None)


def test_local_keyring_is_created_private_on_first_use(keyring_path: Path) -> None:
    ring = LocalKeyring(keyring_path)
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keyring_path.parent.stat().st_mode) == 0o700
    assert ring.current_version() == 1
    wrapped = ring.wrap(b"k" * 32, context=b"c")
    # A second instance over the same file unwraps it: the keyring persisted.
    assert LocalKeyring(keyring_path).unwrap(wrapped, context=b"c") == b"k" * 32
    with pytest.raises(KeyProviderError):
        ring.unwrap(wrapped, context=b"other context")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_local_keyring_refuses_readable_file(keyring_path: Path, mode: int) -> None:
    LocalKeyring(keyring_path)
    keyring_path.chmod(mode)
    with pytest.raises(KeyProviderError, match="chmod 600") as info:
        LocalKeyring(keyring_path)
    assert f"{mode:o}" in str(info.value)


def test_local_keyring_refuses_shared_writable_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(KeyProviderError, match="chmod 700"):
        LocalKeyring(shared / "keyring.json")


def test_local_keyring_rotate_and_retire(keyring_path: Path) -> None:
    ring = LocalKeyring(keyring_path)
    old = ring.wrap(b"a" * 32, context=b"c")
    assert ring.rotate() == 2 and ring.current_version() == 2
    assert ring.unwrap(old, context=b"c") == b"a" * 32
    with pytest.raises(KeyProviderError):
        ring.retire(2)  # active
    ring.retire(1)
    assert ring.versions() == (2,)
    with pytest.raises(KeyProviderError, match="retired"):
        ring.unwrap(old, context=b"c")
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600


def test_env_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("TENSAFE_MASTER_KEY", key)
    provider = EnvKeyProvider()
    wrapped = provider.wrap(b"t" * 32, context=b"ctx")
    assert provider.unwrap(wrapped, context=b"ctx") == b"t" * 32
    assert key not in repr(provider)
    monkeypatch.setenv("NEW_KEY", base64.b64encode(os.urandom(32)).decode())
    rotated = EnvKeyProvider("NEW_KEY", version=2, previous={1: "TENSAFE_MASTER_KEY"})
    assert rotated.unwrap(wrapped, context=b"ctx") == b"t" * 32
    assert rotated.wrap(b"t" * 32, context=b"ctx").kek_version == 2
    with pytest.raises(KeyProviderError):
        rotated.rotate()


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_env_provider_rejects_bad_keys_without_echoing_them(value: str) -> None:
    with pytest.raises(KeyProviderError) as info:
        EnvKeyProvider(environ={"TENSAFE_MASTER_KEY": value})
    assert value not in str(info.value)
    with pytest.raises(KeyProviderError, match="not set"):
        EnvKeyProvider(environ={})


def test_tenant_key_is_created_once_and_stored_wrapped(ring: TenantKeyring, tmp_path: Path) -> None:
    key = ring.current_key("acme")
    assert ring.current_key("acme") == key
    assert key.version == 1 and key.key_id.startswith("tk_")
    files = list((tmp_path / "tenants").glob("tenant-*.json"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    stored = files[0].read_text()
    assert base64.b64encode(key.material).decode() not in stored
    assert key.material.hex() not in stored


def test_rotation_keeps_old_artifacts_readable(ring: TenantKeyring) -> None:
    v1 = ring.current_key("acme")
    old = _seal(v1, b"sealed under v1")
    v2 = ring.rotate_tenant_key("acme")
    assert (v2.version, v2.key_id) == (2, v1.key_id) and v2.material != v1.material
    assert ring.current_key("acme") == v2
    new = _seal(ring.current_key("acme"), b"sealed under v2")
    assert _open(old, ring) == b"sealed under v1"
    assert _open(new, ring) == b"sealed under v2"
    assert ring.key_versions("acme") == (1, 2)


def test_kek_rotation_rewraps_keys_not_artifacts(ring: TenantKeyring, keyring_path: Path) -> None:
    blob = _seal(ring.current_key("acme"), b"payload")
    ring.rotate_tenant_key("acme")
    ring.current_key("globex")
    rotation = ring.rotate_kek()
    assert rotation.kek_version == 2 and rotation.rewrapped == 3
    assert ring.rewrap_all() == 0
    LocalKeyring(keyring_path).retire(1)  # the old KEK is gone for good
    fresh = TenantKeyring(
        LocalKeyring(keyring_path), FileTenantKeyStore(keyring_path.parent.parent / "tenants")
    )
    assert _open(blob, fresh) == b"payload"


def test_destroying_keys_crypto_shreds_artifacts(ring: TenantKeyring) -> None:
    blob_v1 = _seal(ring.current_key("acme"), b"one")
    blob_v2 = _seal(ring.rotate_tenant_key("acme"), b"two")
    other = _seal(ring.current_key("globex"), b"other tenant")
    report = ring.destroy_tenant_keys("acme")
    assert report.versions_destroyed == 2
    assert "destroyed 2 key version(s)" in str(report) and "can no longer be decrypted" in str(
        report
    )
    for blob in (blob_v1, blob_v2):
        with pytest.raises(KeyProviderError, match="destroyed"):
            _open(blob, ring)
    with pytest.raises(KeyProviderError, match="destroyed"):
        ring.current_key("acme")
    with pytest.raises(KeyProviderError, match="destroyed"):
        ring.export_tenant_key("acme")
    assert ring.destroy_tenant_keys("acme").versions_destroyed == 0
    assert ring.key_versions("acme") == ()
    assert _open(other, ring, "globex") == b"other tenant"


def test_export_lets_the_tenant_decrypt_offline(ring: TenantKeyring, tmp_path: Path) -> None:
    blob = _seal(ring.current_key("acme"), b"mine")
    path = write_key_file(tmp_path / "acme.key.json", ring.export_tenant_key("acme"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert set(data) == {"format", "tenant_id", "key_id", "version", "key"}
    key = read_key_file(path)
    assert open_bytes(blob, keys=key, tenant_id="acme", artifact_id="art_k") == b"mine"
    with pytest.raises(FileExistsError):
        write_key_file(path, key)
    path.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        read_key_file(path)


def test_wrapped_key_cannot_move_between_tenants(ring: TenantKeyring, tmp_path: Path) -> None:
    ring.current_key("acme")
    ring.current_key("globex")
    store = FileTenantKeyStore(tmp_path / "tenants")
    acme, globex = store.get("acme"), store.get("globex")
    assert acme is not None and globex is not None
    moved = TenantKeyRecord.from_dict(
        {**acme.to_dict(), "tenant_id": "globex", "revision": globex.revision + 1}
    )
    assert store.compare_and_set(moved, expected_revision=globex.revision)
    with pytest.raises(KeyProviderError):
        ring.current_key("globex")


def test_compare_and_set_detects_concurrent_writers() -> None:
    store = MemoryTenantKeyStore()
    record = TenantKeyRecord("t", "tk_t", 1, (), revision=1)
    assert store.compare_and_set(record, expected_revision=None)
    assert not store.compare_and_set(record, expected_revision=None)
    assert not store.compare_and_set(record, expected_revision=5)


def test_reprs_never_show_key_material(ring: TenantKeyring, keyring_path: Path) -> None:
    key = ring.current_key("acme")
    secrets = {key.material.hex(), base64.b64encode(key.material).decode(), repr(key.material)}
    keyring_secret = json.loads(keyring_path.read_text())["versions"]["1"]
    for text in (repr(key), str(key), repr(ring), repr(LocalKeyring(keyring_path))):
        assert not any(s in text for s in secrets)
        assert keyring_secret not in text
        assert "redacted" in text or "TenantKeyring" in text


def test_tenant_key_validation() -> None:
    with pytest.raises(ConfigError) as info:
        TenantKey("acme", "tk", 1, b"short")
    assert info.value.field == "material"
    with pytest.raises(ConfigError) as info:
        TenantKey("", "tk", 1, bytes(32))
    assert info.value.field == "tenant_id"
    with pytest.raises(ConfigError) as info:
        TenantKey.from_json('{"format": "tensafe-tenant-key/1", "tenant_id": "a"}')
    assert info.value.field == "key_id"


def test_wrong_tenant_key_material_is_an_integrity_error(ring: TenantKeyring) -> None:
    blob = _seal(ring.current_key("acme"), b"x")
    forged = TenantKey("acme", ring.current_key("acme").key_id, 1, os.urandom(32))
    with pytest.raises(IntegrityError):
        open_bytes(blob, keys=forged, tenant_id="acme", artifact_id=None)


def test_concurrent_first_use_creates_one_key(ring: TenantKeyring) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(lambda _: ring.current_key("acme"), range(16)))
    assert len({(k.key_id, k.version, k.material) for k in keys}) == 1
