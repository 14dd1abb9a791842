"""Sealing: encrypt a byte stream into an artifact, chunk by chunk, in bounded memory.

Part of the crypto core: standard library and pyca ``cryptography`` only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
from dataclasses import dataclass, replace
from types import TracebackType
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tensafe.artifacts.format import (
    DEFAULT_CHUNK_SIZE,
    FLAG_FINAL,
    FLAG_MORE,
    MAX_CHUNKS,
    TAG_SIZE,
    ArtifactHeader,
    chunk_nonce,
    derive_artifact_keys,
)
from tensafe.artifacts.pipeline import BufferPool, HashingPipe
from tensafe.artifacts.tenant_key import TenantKey

PIPELINE_BUFFERS = 6
"""Ciphertext buffers a background :class:`SealingWriter` keeps in flight."""


@dataclass(frozen=True)
class SealResult:
    """What sealing produced: the public header and the ciphertext's identity."""

    header: ArtifactHeader
    content_hash: str
    """Lowercase hex SHA-256 of every byte written (header and chunks)."""
    size_bytes: int
    payload_size: int
    chunk_count: int


class SealingWriter:
    """Encrypt a byte stream into an artifact, chunk by chunk, in bounded memory.

    Each chunk is encrypted on the caller's thread (``AESGCM.encrypt_into``) into
    one of :data:`PIPELINE_BUFFERS` reused ciphertext buffers; with ``background``
    (the default) one helper thread hashes the ciphertext (``content_hash``) and a
    second one writes it to ``out``, each releasing the buffer when done. Memory
    stays within 7 chunks (6 buffers plus the partial chunk) whatever the total
    size. ``out.write`` receives views of reused buffers, as the ``io`` contract
    allows: it must not keep them after it returns. The output stream is written
    sequentially and never seeked.

    Use as a context manager: a clean exit finishes the artifact, an exception
    aborts it (the output is then left unfinished and will fail authentication).
    Any error, including one from ``out.write`` or the hash on a helper thread, is
    re-raised in the caller (by :meth:`write` or :meth:`finish`) and aborts the
    writer.

    Example:
        >>> import io
        >>> key = TenantKey.generate(tenant_id="acme", key_id="tk_demo", version=1)
        >>> out = io.BytesIO()
        >>> with SealingWriter(out, tenant_key=key, artifact_id="art_1") as writer:
        ...     _ = writer.write(b"hello")
        >>> writer.result.size_bytes == len(out.getvalue())
        True
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        tenant_key: TenantKey,
        artifact_id: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        background: bool = True,
    ) -> None:
        """Start an artifact and write its header to ``out``.

        ``background=False`` does everything on the caller's thread (small payloads).

        Raises:
            ConfigError: for an invalid artifact id or chunk size.
        """
        header = ArtifactHeader.new(
            key_id=tenant_key.key_id,
            key_version=tenant_key.version,
            artifact_id=artifact_id,
            chunk_size=chunk_size,
        )
        keys = derive_artifact_keys(tenant_key.material, header, tenant_id=tenant_key.tenant_id)
        self.header = replace(header, commitment=keys.commitment)
        self._aead = AESGCM(keys.payload_key)
        self._base_nonce = keys.base_nonce
        self._chunk_size = chunk_size
        self._out = out
        self._hasher = hashlib.sha256()
        self._written = 0
        count = PIPELINE_BUFFERS if background else 1
        self._pool = BufferPool(size=chunk_size + TAG_SIZE, count=count)
        self._pipe = HashingPipe(
            self._hasher,
            sink=self._write_out,
            background=background,
            depth=count,
            sink_thread=True,
        )
        self._chunk = bytearray(chunk_size)  # the partial chunk between writes
        self._fill = 0
        self._index = 0
        self._payload = 0
        self._result: SealResult | None = None
        self._closed = False
        self._pipe.feed(self.header.encode())

    def _write_out(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._written += len(data)

    def _seal(self, data: bytes | bytearray | memoryview, flag: bytes) -> None:
        if self._index >= MAX_CHUNKS:
            raise OverflowError("artifact exceeds the maximum number of chunks")
        self._pipe.check()  # fail fast rather than encrypt into a pipe that failed
        buffer = self._pool.acquire()
        try:
            frame = memoryview(buffer)[: len(data) + TAG_SIZE]
            nonce = chunk_nonce(self._base_nonce, self._index)
            self._aead.encrypt_into(nonce, data, flag, frame)
        except BaseException:
            self._pool.release(buffer)
            raise
        self._index += 1
        # The helper threads hash and write the frame, then hand the buffer back.
        self._pipe.feed(frame, then=functools.partial(self._pool.release, buffer))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append plaintext; returns ``len(data)``. Full chunks are sealed immediately,
        straight from ``data`` when they do not straddle an earlier write.

        ``data`` may be reused as soon as this returns.

        Raises:
            ValueError: if the writer is finished or aborted.
            OSError: (or any other error) from ``out.write`` or the hash, possibly of
                an earlier chunk; the writer is then aborted.
        """
        if self._closed:
            raise ValueError("write to a finished or aborted SealingWriter")
        try:
            return self._write(data)
        except BaseException:
            self.abort()
            raise

    def _write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        chunk = self._chunk_size
        if self._fill:
            take = min(chunk - self._fill, size)
            self._chunk[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == chunk:
                self._seal(self._chunk, FLAG_MORE)
                self._fill = 0
        while len(view) >= chunk:
            self._seal(view[:chunk], FLAG_MORE)
            view = view[chunk:]
        if len(view):
            self._chunk[: len(view)] = view
            self._fill = len(view)
        self._payload += size
        return size

    def finish(self) -> SealResult:
        """Seal the final (short, possibly empty) chunk, wait for the helper threads
        and flush ``out``; idempotent.

        Raises:
            ValueError: if the writer was aborted.
            OSError: (or any other error) from ``out.write`` or the hash; the writer
                is then aborted.
        """
        if self._result is not None:
            return self._result
        if self._closed:
            raise ValueError("finish() after abort()")
        self._closed = True
        try:
            self._seal(memoryview(self._chunk)[: self._fill], FLAG_FINAL)
            self._fill = 0
            self._pipe.close()
        except BaseException:
            self.abort()
            raise
        flush = getattr(self._out, "flush", None)
        if flush is not None:
            flush()
        self._result = SealResult(
            header=self.header,
            content_hash=self._hasher.hexdigest(),
            size_bytes=self._written,
            payload_size=self._payload,
            chunk_count=self._index,
        )
        return self._result

    def abort(self) -> None:
        """Stop without writing the final chunk; the output will not authenticate."""
        self._closed = True
        self._fill = 0
        with contextlib.suppress(Exception):  # the caller is already handling a failure
            self._pipe.close()

    @property
    def result(self) -> SealResult:
        """The :class:`SealResult` once finished.

        Raises:
            ValueError: if the artifact is not finished.
        """
        if self._result is None:
            raise ValueError("the artifact is not finished")
        return self._result

    def __enter__(self) -> SealingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def seal_bytes(
    data: bytes, *, tenant_key: TenantKey, artifact_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> bytes:
    """Seal a small in-memory payload (tests, key material, small blobs)."""
    out = io.BytesIO()
    with SealingWriter(
        out, tenant_key=tenant_key, artifact_id=artifact_id, chunk_size=chunk_size, background=False
    ) as writer:
        writer.write(data)
    return out.getvalue()


__all__ = ["SealResult", "SealingWriter", "seal_bytes"]
