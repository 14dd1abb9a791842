"""The ArtifactStore contract, run against the local directory and S3 backends."""

from __future__ import annotations

import hashlib
import io
import os
import time
from datetime import timedelta

import pytest

from server.storage import ArtifactStore
from tensafe.errors import ArtifactNotFoundError, ConfigError, IntegrityError, StorageError


def test_put_get_stat_list_delete(store: ArtifactStore) -> None:
    data = os.urandom(100_000)
    stored = store.put("art_b", io.BytesIO(data))
    store.put("art_a", io.BytesIO(b"small"))
    assert stored.size_bytes == len(data)
    assert stored.content_hash == hashlib.sha256(data).hexdigest()
    assert stored.created_at.tzinfo is not None and stored.expires_at is None
    assert store.stat("art_b") == stored
    with store.get("art_b") as handle:
        assert handle.read(10) == data[:10]
        assert handle.read() == data[10:]
    assert [r.artifact_id for r in store.list_artifacts()] == ["art_a", "art_b"]
    assert store.exists("art_a")
    assert store.delete("art_a") is True
    assert store.delete("art_a") is False
    assert not store.exists("art_a")
    assert [r.artifact_id for r in store.list_artifacts()] == ["art_b"]


def test_missing_artifact_is_not_found(store: ArtifactStore) -> None:
    for call in (store.stat, store.get):
        with pytest.raises(ArtifactNotFoundError) as info:
            call("art_missing")
        assert isinstance(info.value, KeyError) and isinstance(info.value, StorageError)
        assert str(info.value) == "artifact art_missing not found"


def test_upload_is_invisible_until_commit(store: ArtifactStore) -> None:
    with store.create("art_u") as upload:
        upload.write(b"x" * 1000)
        assert not store.exists("art_u")
        assert store.list_artifacts() == []
        stored = upload.commit()
    assert store.stat("art_u") == stored


@pytest.mark.parametrize("size", [10, 6 * 1024 * 1024])
def test_failed_or_abandoned_upload_leaves_nothing(store: ArtifactStore, size: int) -> None:
    with pytest.raises(RuntimeError), store.create("art_x") as upload:
        upload.write(os.urandom(size))
        raise RuntimeError("worker crashed mid-save")
    with store.create("art_y") as upload:
        upload.write(b"never committed")
    assert store.list_artifacts() == []
    assert not store.exists("art_x") and not store.exists("art_y")
    store.put("art_x", io.BytesIO(b"retry works"))  # the id is free again


def test_wrong_expected_hash_publishes_nothing(store: ArtifactStore) -> None:
    with pytest.raises(IntegrityError):
        store.put("art_h", io.BytesIO(b"data"), expected_content_hash="0" * 64)
    assert not store.exists("art_h")
    good = hashlib.sha256(b"data").hexdigest()
    assert store.put("art_h", io.BytesIO(b"data"), expected_content_hash=good).content_hash == good


def test_artifacts_are_immutable(store: ArtifactStore) -> None:
    store.put("art_i", io.BytesIO(b"first"))
    with pytest.raises(StorageError, match="already exists"):
        store.put("art_i", io.BytesIO(b"second"))
    with store.get("art_i") as handle:
        assert handle.read() == b"first"


@pytest.mark.parametrize("artifact_id", ["", "../etc", "a/b", ".hidden", "x" * 200, "sp ace"])
def test_unsafe_ids_are_refused(store: ArtifactStore, artifact_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        store.put(artifact_id, io.BytesIO(b""))
    assert info.value.field == "artifact_id"


def test_ttl_expiry(store: ArtifactStore) -> None:
    kept = store.put("art_keep", io.BytesIO(b"k"))
    short = store.put("art_short", io.BytesIO(b"s"), ttl=timedelta(milliseconds=300))
    later = store.put("art_later", io.BytesIO(b"l"), ttl=timedelta(hours=1))
    assert short.expires_at is not None and later.expires_at is not None
    assert store.exists("art_short")
    time.sleep(0.4)
    assert not store.exists("art_short")  # expired: invisible at once
    with pytest.raises(ArtifactNotFoundError):
        store.get("art_short")
    assert store.purge_expired() == 1
    assert store.purge_expired(now=later.expires_at + timedelta(seconds=1)) == 1
    assert [r.artifact_id for r in store.list_artifacts()] == [kept.artifact_id]
    with pytest.raises(ConfigError):
        store.put("art_bad", io.BytesIO(b""), ttl=timedelta(0))


def test_sealed_checkpoint_streams_into_the_store_and_back(store: ArtifactStore) -> None:
    torch = pytest.importorskip("torch")
    from tensafe.artifacts import (
        Manifest,
        TenantKey,
        new_artifact_id,
        open_checkpoint,
        seal_checkpoint,
    )

    key = TenantKey.generate(tenant_id="acme", key_id="tk_acme", version=1)
    tensors = {"w": torch.randn(1024, 1536), "b": torch.arange(10)}  # ~6 MiB: multipart on S3
    artifact_id = new_artifact_id()
    with store.create(artifact_id) as upload:
        info = seal_checkpoint(
            tensors=tensors,
            manifest=Manifest(kind="full_weights", base_model="m"),
            tenant_key=key,
            artifact_id=artifact_id,
            out=upload,  # type: ignore[arg-type]
        )
        stored = upload.commit(expected_content_hash=info.content_hash)
    assert (stored.size_bytes, stored.content_hash) == (info.size_bytes, info.content_hash)
    with store.get(artifact_id) as src:
        opened = open_checkpoint(
            src,
            keys=key,
            tenant_id="acme",
            artifact_id=artifact_id,
            expected_content_hash=stored.content_hash,
        )
    assert torch.equal(opened.tensors["w"], tensors["w"])
    assert torch.equal(opened.tensors["b"], tensors["b"])
