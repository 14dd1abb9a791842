"""Durable local puts with write-behind: still invisible until commit, still atomic."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from server.storage import LocalArtifactStore
from tensafe.artifacts import TenantKey, open_bytes, writeback
from tensafe.artifacts.writer import SealingWriter
from tensafe.errors import StorageError

WINDOW = writeback.WRITEBACK_WINDOW


def test_large_upload_starts_writeback_but_stays_invisible_until_commit(
    local_store: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = writeback._SYNC_FILE_RANGE
    calls: list[tuple[int, int, int]] = []

    def spy(fd: int, offset: int, count: int, flags: int) -> None:
        calls.append((offset, count, flags))
        if real is not None:
            real(fd, offset, count, flags)

    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", spy)
    block = os.urandom(1 << 20)
    total = 2 * WINDOW + 12345
    digest = hashlib.sha256()
    with local_store.create("art_big") as upload:
        left = total
        while left:
            piece = block[: min(left, len(block))]
            upload.write(piece)
            digest.update(piece)
            left -= len(piece)
        assert [offset for offset, _, _ in calls] == [0, WINDOW, 0]  # started, waited
        assert not local_store.exists("art_big")
        assert list(local_store.objects_dir.iterdir()) == []
        record = upload.commit(expected_content_hash=digest.hexdigest())
    assert record.size_bytes == total
    with local_store.get("art_big") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest.hexdigest()
    assert list(local_store.tmp_dir.iterdir()) == []


def test_writeback_io_error_fails_the_upload_and_publishes_nothing(
    local_store: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int, offset: int, count: int, flags: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", broken)
    with (
        pytest.raises(StorageError, match="Input/output error"),
        local_store.create("art_eio") as upload,
    ):
        upload.write(bytes(WINDOW))
        upload.commit()
    assert not local_store.exists("art_eio")
    assert list(local_store.objects_dir.iterdir()) == []
    assert list(local_store.tmp_dir.iterdir()) == []


def test_sealing_straight_into_the_store_round_trips(local_store: LocalArtifactStore) -> None:
    key = TenantKey("acme", "tk_acme", 1, bytes(range(32)))
    data = os.urandom(3 << 20)
    with local_store.create("art_s") as upload:
        with SealingWriter(upload, tenant_key=key, artifact_id="art_s") as writer:  # type: ignore[arg-type]
            writer.write(data)
        stored = upload.commit(expected_content_hash=writer.result.content_hash)
    assert stored.content_hash == writer.result.content_hash
    with local_store.get("art_s") as handle:
        blob = handle.read()
    assert open_bytes(blob, keys=key, tenant_id="acme", artifact_id="art_s") == data
    assert len(blob) == stored.size_bytes
