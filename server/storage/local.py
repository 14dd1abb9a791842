"""Local-directory artifact store: temp file, fsync, atomic rename.

Layout under ``root``::

    objects/<artifact_id>/data        the ciphertext
    objects/<artifact_id>/meta.json   StoredArtifact record (size, hash, times)
    tmp/<random>/                     uploads in progress and deletions

An upload writes ``data`` and ``meta.json`` in a private directory under ``tmp/``,
fsyncs both, then renames that directory to ``objects/<artifact_id>`` in one
step. A reader therefore sees either the complete artifact with its metadata or
nothing; an existing artifact is never overwritten (renaming onto a non-empty
directory fails). Deleting renames the directory back under ``tmp/`` first.

While ``data`` is written, disk writeback of each completed 32 MiB window is
started (:class:`~tensafe.artifacts.writeback.WriteBehind`), so the disk transfer
overlaps the sealing and the final fsync only waits for the tail. That changes
when bytes reach the disk, not what is visible: nothing is published before the
fsyncs and the rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from server.storage.base import (
    ArtifactStore,
    ArtifactUpload,
    StoredArtifact,
    expiry_from_ttl,
    utc_now,
    validate_artifact_id,
)
from tensafe.artifacts.writeback import WriteBehind
from tensafe.errors import ArtifactNotFoundError, StorageError

DATA_FILE = "data"
META_FILE = "meta.json"
ABANDONED_AFTER = timedelta(hours=1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalUpload(ArtifactUpload):
    def __init__(
        self, store: LocalArtifactStore, artifact_id: str, expires_at: datetime | None
    ) -> None:
        super().__init__(artifact_id, expires_at)
        self._store = store
        self._dir = Path(tempfile.mkdtemp(prefix="upload-", dir=store.tmp_dir))
        self._file = (self._dir / DATA_FILE).open("xb")
        self._behind = WriteBehind(self._file.fileno())

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._file.write(data)
            self._behind.wrote(len(data))
        except OSError as exc:
            raise StorageError(f"writing artifact {self.artifact_id} failed: {exc}") from exc

    def _publish(self, record: StoredArtifact) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            meta = self._dir / META_FILE
            with meta.open("x", encoding="utf-8") as handle:
                json.dump(record.to_dict(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_dir(self._dir)
            target = self._store.object_dir(self.artifact_id)
            os.rename(self._dir, target)  # the single visibility point
            _fsync_dir(target.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise StorageError(f"artifact {self.artifact_id} already exists") from None
            raise StorageError(f"publishing artifact {self.artifact_id} failed: {exc}") from exc

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class LocalArtifactStore(ArtifactStore):
    """Artifacts in a local directory (the embedded default).

    Example:
        >>> import io, tempfile
        >>> store = LocalArtifactStore(tempfile.mkdtemp())
        >>> store.put("art_1", io.BytesIO(b"ciphertext")).size_bytes
        10
        >>> store.get("art_1").read()
        b'ciphertext'
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        for path in (self.root, self.objects_dir, self.tmp_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def object_dir(self, artifact_id: str) -> Path:
        """Directory holding a (published) artifact."""
        return self.objects_dir / validate_artifact_id(artifact_id)

    def create(self, artifact_id: str, *, ttl: timedelta | None = None) -> ArtifactUpload:
        expires_at = expiry_from_ttl(ttl, now=utc_now())
        if self.object_dir(artifact_id).exists():
            raise StorageError(f"artifact {artifact_id} already exists")
        return _LocalUpload(self, artifact_id, expires_at)

    def _record(self, artifact_id: str) -> StoredArtifact | None:
        try:
            text = (self.object_dir(artifact_id) / META_FILE).read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"reading artifact {artifact_id} metadata failed: {exc}") from exc
        try:
            return StoredArtifact.from_dict(json.loads(text))
        except ValueError:
            raise StorageError(f"artifact {artifact_id} metadata is not valid JSON") from None

    def stat(self, artifact_id: str) -> StoredArtifact:
        record = self._record(artifact_id)
        if record is None or record.is_expired(utc_now()):
            raise ArtifactNotFoundError(f"artifact {artifact_id} not found")
        return record

    def get(self, artifact_id: str) -> BinaryIO:
        self.stat(artifact_id)
        try:
            return (self.object_dir(artifact_id) / DATA_FILE).open("rb")
        except FileNotFoundError:  # deleted meanwhile
            raise ArtifactNotFoundError(f"artifact {artifact_id} not found") from None

    def _all_records(self) -> list[StoredArtifact]:
        records = []
        for entry in sorted(self.objects_dir.iterdir()):
            record = self._record(entry.name)
            if record is not None:
                records.append(record)
        return records

    def list_artifacts(self) -> list[StoredArtifact]:
        now = utc_now()
        return [r for r in self._all_records() if not r.is_expired(now)]

    def delete(self, artifact_id: str) -> bool:
        source = self.object_dir(artifact_id)
        grave = Path(tempfile.mkdtemp(prefix="delete-", dir=self.tmp_dir)) / artifact_id
        try:
            os.rename(source, grave)  # disappears atomically for readers
        except FileNotFoundError:
            shutil.rmtree(grave.parent, ignore_errors=True)
            return False
        _fsync_dir(self.objects_dir)
        shutil.rmtree(grave.parent, ignore_errors=True)
        return True

    def purge_expired(self, *, now: datetime | None = None) -> int:
        moment = utc_now() if now is None else now
        removed = sum(
            self.delete(record.artifact_id)
            for record in self._all_records()
            if record.is_expired(moment)
        )
        cutoff = time.time() - ABANDONED_AFTER.total_seconds()
        for entry in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
        return removed


__all__ = ["LocalArtifactStore"]
