"""Verified downloads of artifact ciphertext and of the tenant key file.

``GET /v1/artifacts/{id}/content`` streams the ciphertext with ``Content-Length``
and ``X-Content-SHA256`` (the artifact's ``content_hash``). Every byte is hashed
as it arrives; a size or hash mismatch, or a missing hash header, raises one
:class:`~tg_tinker.ArtifactIntegrityError`. Files are written to a temporary file
in the target directory and renamed into place only after verification, so a
failed or interrupted pull never leaves a partial file under the target name.

These bytes are still encrypted: decrypting them with the tenant key
(:meth:`ServiceClient.export_tenant_key`) happens locally, offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from tg_tinker._http import HTTPCore, backoff_delay
from tg_tinker.errors import APIConnectionError, ArtifactIntegrityError, ServerError
from tg_tinker.types import ArtifactInfo

_CHUNK = 1 << 20
_NO_ENCODING = {"Accept-Encoding": "identity", "Accept": "application/octet-stream"}


@dataclass(frozen=True)
class PulledArtifact:
    """Where :meth:`ServiceClient.pull_artifact_to_file` put a verified artifact.

    Attributes:
        path: the file now holding the ciphertext.
        artifact_id: the artifact's id.
        size_bytes: bytes written (equal to ``info.size_bytes``).
        content_hash: hex SHA-256 of those bytes (equal to ``info.content_hash``).
        info: the artifact's metadata as the server lists it (kind, step, ...).
    """

    path: Path
    artifact_id: str
    size_bytes: int
    content_hash: str
    info: ArtifactInfo


def _normalise_hash(value: str) -> str:
    value = value.strip().lower()
    return value.removeprefix("sha256:")


class _Verifier:
    """Hashes a body as it streams and checks it against the declared size and hash."""

    def __init__(
        self,
        artifact_id: str,
        response: httpx.Response,
        *,
        expected_sha256: str | None,
        expected_size: int | None,
    ) -> None:
        self._artifact_id = artifact_id
        declared = response.headers.get("x-content-sha256")
        length = response.headers.get("content-length")
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            length = None  # it counts encoded bytes; the hash still covers the decoded ones
        self._hash = _normalise_hash(declared) if declared else None
        try:
            self._size = int(length) if length is not None else expected_size
        except ValueError:
            self._size = -1
        if self._hash is None:
            raise self.failure()
        if expected_sha256 is not None and _normalise_hash(expected_sha256) != self._hash:
            raise self.failure()
        if expected_size is not None and self._size != expected_size:
            raise self.failure()
        self._hasher = hashlib.sha256()
        self.received = 0

    def failure(self) -> ArtifactIntegrityError:
        return ArtifactIntegrityError(
            f"artifact {self._artifact_id}: downloaded bytes do not match the declared size "
            "and SHA-256; nothing was kept"
        )

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self._size is not None and self.received > self._size:
            raise self.failure()
        self._hasher.update(chunk)

    def finish(self) -> str:
        digest = self._hasher.hexdigest()
        if (self._size is not None and self.received != self._size) or digest != self._hash:
            raise self.failure()
        return digest


def _content_path(artifact_id: str) -> str:
    return f"/v1/artifacts/{artifact_id}/content"


def download(
    http: HTTPCore,
    artifact_id: str,
    sink: IO[bytes],
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
) -> tuple[int, str]:
    """Stream the ciphertext into ``sink`` (truncated and rewritten on a retry);
    returns (size, sha256) once verified.

    A connection that breaks mid-body restarts the download (it is a GET), up to
    ``max_retries`` times.

    Raises:
        ArtifactIntegrityError: size or hash mismatch, or no hash header.
        APIConnectionError: the download kept failing.
    """
    attempt = 0
    while True:
        sink.seek(0)
        sink.truncate()
        try:
            with http.stream(_content_path(artifact_id), headers=_NO_ENCODING) as response:
                verifier = _Verifier(
                    artifact_id,
                    response,
                    expected_sha256=expected_sha256,
                    expected_size=expected_size,
                )
                for chunk in response.iter_bytes(_CHUNK):
                    verifier.update(chunk)
                    sink.write(chunk)
                return verifier.received, verifier.finish()
        except httpx.TransportError as exc:
            if attempt >= http.max_retries:
                raise APIConnectionError(
                    f"download of artifact {artifact_id} broke off: {exc}"
                ) from exc
            http.sleep(backoff_delay(attempt))
            attempt += 1


async def download_async(
    http: HTTPCore,
    artifact_id: str,
    sink: IO[bytes],
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
) -> tuple[int, str]:
    """Async twin of :func:`download`."""
    attempt = 0
    while True:
        sink.seek(0)
        sink.truncate()
        try:
            async with http.astream(_content_path(artifact_id), headers=_NO_ENCODING) as response:
                verifier = _Verifier(
                    artifact_id,
                    response,
                    expected_sha256=expected_sha256,
                    expected_size=expected_size,
                )
                async for chunk in response.aiter_bytes(_CHUNK):
                    verifier.update(chunk)
                    sink.write(chunk)
                return verifier.received, verifier.finish()
        except httpx.TransportError as exc:
            if attempt >= http.max_retries:
                raise APIConnectionError(
                    f"download of artifact {artifact_id} broke off: {exc}"
                ) from exc
            await http.async_sleep(backoff_delay(attempt))
            attempt += 1


def download_bytes(http: HTTPCore, artifact_id: str, *, expected_sha256: str | None) -> bytes:
    buffer = io.BytesIO()
    download(http, artifact_id, buffer, expected_sha256=expected_sha256)
    return buffer.getvalue()


async def download_bytes_async(
    http: HTTPCore, artifact_id: str, *, expected_sha256: str | None
) -> bytes:
    buffer = io.BytesIO()
    await download_async(http, artifact_id, buffer, expected_sha256=expected_sha256)
    return buffer.getvalue()


# --------------------------------------------------------------------- files
def check_target(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """The resolved target path; refuses an existing file unless ``overwrite``."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; give a file path")
    if not overwrite and target.exists():
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"directory {target.parent} does not exist")
    return target


@contextlib.contextmanager
def atomic_file(target: Path, *, overwrite: bool) -> Iterator[IO[bytes]]:
    """Yield a temporary file (mode 0600) next to ``target``; on success it is
    fsynced and renamed onto ``target``, on any failure (even KeyboardInterrupt)
    deleted."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if not overwrite and target.exists():
            raise FileExistsError(f"{target} appeared while downloading; not replaced")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pulled(target: Path, info: ArtifactInfo, size: int, digest: str) -> PulledArtifact:
    return PulledArtifact(
        path=target, artifact_id=info.artifact_id, size_bytes=size, content_hash=digest, info=info
    )


def expected_hash(info: ArtifactInfo, expected_sha256: str | None) -> str:
    """The hash to enforce: the caller's, which must agree with the server's listing."""
    if expected_sha256 is not None and _normalise_hash(expected_sha256) != _normalise_hash(
        info.content_hash
    ):
        raise ArtifactIntegrityError(
            f"artifact {info.artifact_id}: the server lists a different content hash than expected"
        )
    return expected_sha256 or info.content_hash


def write_key_file(target: Path, content: bytes, *, overwrite: bool) -> Path:
    """Write the exported key file (must be JSON) with mode 0600, atomically."""
    try:
        json.loads(content)
    except ValueError as exc:
        raise ServerError("the key export is not a JSON key file") from exc
    with atomic_file(target, overwrite=overwrite) as handle:
        handle.write(content)
    return target


__all__ = ["PulledArtifact"]
