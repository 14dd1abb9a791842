"""Backend-specific guarantees: atomic publication on disk, multipart hygiene on S3."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from server.storage import LocalArtifactStore, S3ArtifactStore
from tensafe.errors import ConfigError, StorageError


def test_local_upload_in_progress_is_only_under_tmp(local_store: LocalArtifactStore) -> None:
    with local_store.create("art_p") as upload:
        upload.write(b"partial")
        assert list(local_store.objects_dir.iterdir()) == []
        upload.commit()
    assert [p.name for p in local_store.objects_dir.iterdir()] == ["art_p"]
    assert sorted(p.name for p in (local_store.objects_dir / "art_p").iterdir()) == [
        "data",
        "meta.json",
    ]
    assert list(local_store.tmp_dir.iterdir()) == []


def test_local_crash_leftovers_are_invisible_and_purged(local_store: LocalArtifactStore) -> None:
    upload = local_store.create("art_c")
    upload.write(b"half written")  # the process "dies": no commit, no abort
    reopened = LocalArtifactStore(local_store.root)
    assert reopened.list_artifacts() == [] and not reopened.exists("art_c")
    leftovers = list(reopened.tmp_dir.iterdir())
    assert len(leftovers) == 1
    old = time.time() - 7200
    os.utime(leftovers[0], (old, old))
    assert reopened.purge_expired() == 0
    assert list(reopened.tmp_dir.iterdir()) == []


def test_local_store_directories_are_private(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "s")
    for path in (store.root, store.objects_dir, store.tmp_dir):
        assert path.stat().st_mode & 0o077 == 0


def test_s3_multipart_upload_and_abort(s3_store: S3ArtifactStore, s3_client) -> None:
    data = os.urandom(11 * 1024 * 1024)  # three parts of 5 MiB
    stored = s3_store.put("art_m", io.BytesIO(data))
    with s3_store.get("art_m") as handle:
        assert handle.read() == data
    assert stored.size_bytes == len(data)
    with pytest.raises(RuntimeError), s3_store.create("art_n") as upload:
        upload.write(os.urandom(6 * 1024 * 1024))
        raise RuntimeError("boom")
    assert s3_client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []


def test_s3_blob_replaced_behind_our_back_is_refused(s3_store: S3ArtifactStore, s3_client) -> None:
    s3_store.put("art_e", io.BytesIO(b"original"))
    s3_client.put_object(Bucket=s3_store.bucket, Key=s3_store.blob_key("art_e"), Body=b"swapped")
    with pytest.raises(StorageError):
        s3_store.get("art_e")


def test_s3_default_client_from_endpoint(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, s3_client
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3_client.create_bucket(Bucket="default-client")
    store = S3ArtifactStore("default-client", endpoint_url=moto_endpoint, region_name="us-east-1")
    store.put("art_d", io.BytesIO(b"d"))
    assert [r.artifact_id for r in store.list_artifacts()] == ["art_d"]
    with pytest.raises(ConfigError):
        S3ArtifactStore("b", client=s3_client, part_size=1024)
