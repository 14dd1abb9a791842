"""S3-compatible artifact store (AWS S3, MinIO, Ceph RGW, ...) behind the same interface.

Each artifact is two objects under ``prefix``::

    <prefix><artifact_id>            the ciphertext (one PUT, or a multipart upload)
    <prefix><artifact_id>.meta.json  StoredArtifact record + the blob's ETag

The blob is uploaded first (a multipart upload is invisible until completed and is
aborted on failure); the metadata object is written last and is the visibility
point: without it the artifact does not exist for ``stat``/``get``/``list``.
Reads pin the blob to the recorded ETag (``IfMatch``), so metadata and bytes
always belong together. Memory per upload is one part (``part_size``).

S3 lifecycle rules can expire objects server-side; ``purge_expired`` does the same
from the recorded TTL and also aborts abandoned multipart uploads.
"""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO

from server.storage.base import (
    ArtifactStore,
    ArtifactUpload,
    StoredArtifact,
    expiry_from_ttl,
    utc_now,
    validate_artifact_id,
)
from tensafe.errors import ArtifactNotFoundError, ConfigError, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # optional stubs; only for type checkers

META_SUFFIX = ".meta.json"
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
ABANDONED_AFTER = timedelta(hours=1)


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _StreamingBodyReader(io.RawIOBase):
    """A botocore StreamingBody as a readable raw stream (for BufferedReader)."""

    def __init__(self, body: object) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._body.read(len(buffer))  # type: ignore[attr-defined]
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()  # type: ignore[attr-defined]
        super().close()


class _S3Upload(ArtifactUpload):
    def __init__(
        self, store: S3ArtifactStore, artifact_id: str, expires_at: datetime | None
    ) -> None:
        super().__init__(artifact_id, expires_at)
        self._store = store
        self._key = store.blob_key(artifact_id)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, object]] = []

    def _send_part(self, data: bytes | bytearray) -> None:
        client = self._store.client
        if self._upload_id is None:
            created = client.create_multipart_upload(Bucket=self._store.bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        part = client.upload_part(
            Bucket=self._store.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(data),
        )
        self._parts.append({"PartNumber": number, "ETag": part["ETag"]})

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        size = self._store.part_size
        try:
            while len(self._buffer) >= size:
                self._send_part(self._buffer[:size])
                del self._buffer[:size]
        except Exception as exc:
            raise StorageError(f"uploading artifact {self.artifact_id} failed: {exc}") from exc

    def _publish(self, record: StoredArtifact) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._store.exists(self.artifact_id):
            raise StorageError(f"artifact {self.artifact_id} already exists")
        try:
            if self._upload_id is None:
                etag = client.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer))[
                    "ETag"
                ]
            else:
                if self._buffer:
                    self._send_part(self._buffer)
                done = client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                self._upload_id = None
                etag = done["ETag"]
            self._buffer = bytearray()
            meta = {**record.to_dict(), "etag": etag}
            client.put_object(
                Bucket=bucket,
                Key=self._store.meta_key(self.artifact_id),
                Body=json.dumps(meta).encode("utf-8"),
                ContentType="application/json",
            )
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"publishing artifact {self.artifact_id} failed: {exc}") from exc

    def _discard(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            with contextlib.suppress(Exception):  # purge_expired aborts leftovers later
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
                )
            self._upload_id = None


class S3ArtifactStore(ArtifactStore):
    """Artifacts in an S3-compatible bucket.

    ``client`` is a boto3 S3 client; when omitted one is built from
    ``endpoint_url``/``region_name`` and the usual AWS credential chain.

    Raises (constructor):
        ConfigError: if ``part_size`` is below S3's 5 MiB minimum.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "artifacts/",
        client: S3Client | None = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ConfigError("part_size", f"must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region_name,
                config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
            )
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def blob_key(self, artifact_id: str) -> str:
        """Object key of the ciphertext."""
        return self.prefix + validate_artifact_id(artifact_id)

    def meta_key(self, artifact_id: str) -> str:
        """Object key of the metadata record (the visibility point)."""
        return self.blob_key(artifact_id) + META_SUFFIX

    def create(self, artifact_id: str, *, ttl: timedelta | None = None) -> ArtifactUpload:
        expires_at = expiry_from_ttl(ttl, now=utc_now())
        if self.exists(artifact_id):
            raise StorageError(f"artifact {artifact_id} already exists")
        return _S3Upload(self, artifact_id, expires_at)

    def _meta(self, artifact_id: str) -> dict[str, object] | None:
        key = self.meta_key(artifact_id)  # validates the id first
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            return json.loads(body.read())
        except Exception as exc:
            if _client_error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StorageError(f"reading artifact {artifact_id} metadata failed: {exc}") from exc

    def stat(self, artifact_id: str) -> StoredArtifact:
        meta = self._meta(artifact_id)
        record = None if meta is None else StoredArtifact.from_dict(meta)
        if record is None or record.is_expired(utc_now()):
            raise ArtifactNotFoundError(f"artifact {artifact_id} not found")
        return record

    def get(self, artifact_id: str) -> BinaryIO:
        meta = self._meta(artifact_id)
        if meta is None or StoredArtifact.from_dict(meta).is_expired(utc_now()):
            raise ArtifactNotFoundError(f"artifact {artifact_id} not found")
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.blob_key(artifact_id), IfMatch=str(meta["etag"])
            )
        except Exception as exc:
            if _client_error_code(exc) in ("NoSuchKey", "404"):
                raise ArtifactNotFoundError(f"artifact {artifact_id} not found") from None
            raise StorageError(f"reading artifact {artifact_id} failed: {exc}") from exc
        return io.BufferedReader(_StreamingBodyReader(response["Body"]), buffer_size=1 << 20)  # type: ignore[return-value]

    def _keys(self, *, meta: bool) -> list[tuple[str, datetime]]:
        paginator = self.client.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith(META_SUFFIX) == meta:
                    found.append((item["Key"][len(self.prefix) :], item["LastModified"]))
        return found

    def _all_records(self) -> list[StoredArtifact]:
        records = []
        for name, _ in self._keys(meta=True):
            meta = self._meta(name[: -len(META_SUFFIX)])
            if meta is not None:
                records.append(StoredArtifact.from_dict(meta))
        return sorted(records, key=lambda r: r.artifact_id)

    def list_artifacts(self) -> list[StoredArtifact]:
        now = utc_now()
        return [r for r in self._all_records() if not r.is_expired(now)]

    def delete(self, artifact_id: str) -> bool:
        existed = self._meta(artifact_id) is not None
        self.client.delete_object(Bucket=self.bucket, Key=self.meta_key(artifact_id))
        self.client.delete_object(Bucket=self.bucket, Key=self.blob_key(artifact_id))
        return existed

    def purge_expired(self, *, now: datetime | None = None) -> int:
        moment = utc_now() if now is None else now
        removed = sum(
            self.delete(r.artifact_id) for r in self._all_records() if r.is_expired(moment)
        )
        cutoff = utc_now() - ABANDONED_AFTER
        published = {name[: -len(META_SUFFIX)] for name, _ in self._keys(meta=True)}
        for name, modified in self._keys(meta=False):  # blobs whose upload never published
            if name not in published and modified < cutoff:
                self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        for upload in uploads.get("Uploads", []):
            if upload["Initiated"] < cutoff:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        return removed


__all__ = ["DEFAULT_PART_SIZE", "S3ArtifactStore"]
