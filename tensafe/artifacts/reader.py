"""Opening: authenticate and decrypt artifacts chunk by chunk; keyless verification.

Part of the crypto core: standard library and pyca ``cryptography`` only.

Release rule: :class:`OpeningReader` yields a chunk's plaintext only after that
chunk's tag verified, and raises :class:`~tensafe.errors.IntegrityError` on the
first bad or missing chunk. A caller of the reader must still treat what it got as
provisional until the iterator ends (a truncated stream is only detected at the
end); the public helpers built on it buffer and release nothing before then.

Ciphertext frames are read into a few reused buffers; the content hash (when asked
for) runs on a helper thread while the caller's thread decrypts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tensafe.artifacts.format import (
    FIXED_HEADER_SIZE,
    FLAG_FINAL,
    FLAG_MORE,
    MAX_CHUNKS,
    TAG_SIZE,
    ArtifactHeader,
    body_layout,
    check_commitment,
    chunk_nonce,
    derive_artifact_keys,
    parse_fixed_header,
)
from tensafe.artifacts.pipeline import BufferPool, Hasher, HashingPipe
from tensafe.artifacts.tenant_key import KeyResolver
from tensafe.errors import ArtifactFormatError, IntegrityError

_READ_BLOCK = 1 << 20
FRAME_BUFFERS = 4
"""Ciphertext frame buffers an :class:`OpeningReader` hashing in the background uses."""


def _read_exact(src: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at end of stream."""
    data = src.read(size)
    if data is None:
        raise ArtifactFormatError("non-blocking streams are not supported")
    if len(data) == size or not data:
        return bytes(data)
    parts = [data]
    got = len(data)
    while got < size:
        more = src.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_into(src: BinaryIO, buffer: bytearray) -> memoryview:
    """Fill ``buffer`` from ``src`` (fewer bytes only at end of stream), reusing it."""
    readinto = getattr(src, "readinto", None)
    if readinto is None:
        data = _read_exact(src, len(buffer))
        buffer[: len(data)] = data
        return memoryview(buffer)[: len(data)]
    view = memoryview(buffer)
    got = 0
    while got < len(buffer):
        count = readinto(view[got:])
        if count is None:
            raise ArtifactFormatError("non-blocking streams are not supported")
        if not count:
            break
        got += count
    return view[:got]


def read_header(src: BinaryIO) -> ArtifactHeader:
    """Read and structurally check the header at the current position of ``src``.

    Raises:
        ArtifactFormatError: not an artifact, unsupported version, oversized or
            truncated header.
    """
    fixed = _read_exact(src, FIXED_HEADER_SIZE)
    length = parse_fixed_header(fixed)[2]
    rest = _read_exact(src, length - FIXED_HEADER_SIZE)
    if len(rest) != length - FIXED_HEADER_SIZE:
        raise ArtifactFormatError("artifact header is truncated")
    return ArtifactHeader.parse(fixed + rest)


class OpeningReader:
    """Authenticate and decrypt an artifact chunk by chunk.

    Construction reads the header, checks ``artifact_id`` (when given), resolves the
    tenant key and checks the key commitment, all before any chunk is decrypted.
    :meth:`chunks` (or :meth:`chunks_into`) then yields each chunk's plaintext after
    its tag verified.

    ``content_hasher`` (optional) is updated with every ciphertext byte (header and
    frames), on a helper thread when ``background`` is true; either way it is
    complete before the final chunk is yielded. Memory: up to
    :data:`FRAME_BUFFERS` frames plus the plaintext of the chunk in hand.

    Raises (constructor):
        ArtifactFormatError: the input is not an artifact of a supported version.
        KeyProviderError: the named key is unknown, not given, or destroyed.
        IntegrityError: the commitment, tenant or artifact id does not match.

    Example:
        >>> import io
        >>> from tensafe.artifacts import TenantKey, seal_bytes
        >>> key = TenantKey.generate(tenant_id="acme", key_id="tk_demo", version=1)
        >>> blob = seal_bytes(b"hi", tenant_key=key, artifact_id="art_1")
        >>> reader = OpeningReader(
        ...     io.BytesIO(blob), keys=key, tenant_id="acme", artifact_id="art_1")
        >>> b"".join(reader.chunks())
        b'hi'
    """

    def __init__(
        self,
        src: BinaryIO,
        *,
        keys: KeyResolver,
        tenant_id: str,
        artifact_id: str | None,
        content_hasher: Hasher | None = None,
        background: bool = True,
    ) -> None:
        self._src = src
        self._background = background
        self.header = read_header(src)
        if artifact_id is not None and artifact_id != self.header.artifact_id:
            raise IntegrityError()
        key = keys.resolve_key(
            tenant_id=tenant_id, key_id=self.header.key_id, version=self.header.key_version
        )
        derived = derive_artifact_keys(key.material, self.header, tenant_id=tenant_id)
        check_commitment(derived, self.header)
        self._aead = AESGCM(derived.payload_key)
        self._base_nonce = derived.base_nonce
        self._hasher = content_hasher
        if content_hasher is not None:
            content_hasher.update(self.header.encode())
        self.complete = False
        self.payload_size = 0
        self.chunk_count = 0

    def chunks(self) -> Iterator[bytes]:
        """Yield each chunk's verified plaintext (a new ``bytes`` object per chunk, the
        caller may keep it); sets :attr:`complete` at the end.

        Raises:
            IntegrityError: a chunk failed, or chunks are missing, extra or reordered.
        """
        return cast(Iterator[bytes], self._chunks(None))

    def chunks_into(self, destination: Callable[[int], memoryview]) -> Iterator[memoryview]:
        """Like :meth:`chunks`, but decrypt each chunk into ``destination(size)``.

        ``destination`` is called once per chunk with its plaintext size and must
        return a writable buffer of exactly that many bytes (for example a slice of
        the final output, or a reused buffer); it is yielded, as a byte
        ``memoryview``, once the chunk's tag verified. If a tag does not verify the
        buffer is zeroed before :class:`~tensafe.errors.IntegrityError` is raised,
        so it never holds unauthenticated plaintext.

        Raises:
            IntegrityError: a chunk failed, or chunks are missing, extra or reordered.
            ValueError: if ``destination`` returned a buffer of the wrong size.
        """
        return cast(Iterator[memoryview], self._chunks(destination))

    def _chunks(
        self, destination: Callable[[int], memoryview] | None
    ) -> Iterator[bytes | memoryview]:
        frame_size = self.header.chunk_size + TAG_SIZE
        pipe: HashingPipe | None = None
        count = 1
        if self._hasher is not None:
            count = FRAME_BUFFERS if self._background else 1
            pipe = HashingPipe(self._hasher, background=self._background, depth=count)
        pool = BufferPool(size=frame_size, count=count)
        index = 0
        try:
            while True:
                # Only this thread acquires, and only after it is done with the last
                # frame, so the hash thread may release a frame while it is decrypted.
                buffer = pool.acquire()
                frame = _read_into(self._src, buffer)
                if len(frame) < TAG_SIZE or index >= MAX_CHUNKS:
                    raise IntegrityError()
                if pipe is None:
                    pool.release(buffer)
                else:
                    pipe.feed(frame, then=functools.partial(pool.release, buffer))
                final = len(frame) < frame_size
                plain = self._decrypt(index, frame, final, destination)
                index += 1
                self.chunk_count = index
                self.payload_size += len(plain)
                if final:
                    if pipe is not None:
                        pipe.close()  # the content hash is complete before the last chunk
                    self.complete = True
                    yield plain
                    return
                yield plain
        except BaseException:
            if pipe is not None:
                with contextlib.suppress(Exception):  # the failure being raised matters
                    pipe.close()
            raise

    def _decrypt(
        self,
        index: int,
        frame: memoryview,
        final: bool,
        destination: Callable[[int], memoryview] | None,
    ) -> bytes | memoryview:
        nonce = chunk_nonce(self._base_nonce, index)
        flag = FLAG_FINAL if final else FLAG_MORE
        if destination is None:
            try:
                return self._aead.decrypt(nonce, frame, flag)
            except InvalidTag:
                raise IntegrityError() from None
        size = len(frame) - TAG_SIZE
        target = memoryview(destination(size)).cast("B")
        if len(target) != size:
            raise ValueError(f"destination returned {len(target)} bytes, expected {size}")
        try:
            self._aead.decrypt_into(nonce, frame, flag, target)
        except InvalidTag:
            target[:] = bytes(size)  # decrypt_into leaves unverified plaintext behind
            raise IntegrityError() from None
        return target


def open_bytes(blob: bytes, *, keys: KeyResolver, tenant_id: str, artifact_id: str | None) -> bytes:
    """Open a small in-memory artifact; returns the payload only if all of it verified.

    Raises:
        ArtifactFormatError, KeyProviderError, IntegrityError: as :class:`OpeningReader`.
    """
    reader = OpeningReader(
        io.BytesIO(blob), keys=keys, tenant_id=tenant_id, artifact_id=artifact_id
    )
    return b"".join(list(reader.chunks()))


@dataclass(frozen=True)
class VerificationReport:
    """Result of :func:`verify_ciphertext`: what was checked without a key."""

    header: ArtifactHeader
    content_hash: str
    size_bytes: int
    chunk_count: int
    payload_size: int


def verify_ciphertext(
    src: BinaryIO, *, expected_content_hash: str | None = None
) -> VerificationReport:
    """Check an artifact without a key: header structure, chunk framing, SHA-256.

    This proves the bytes are exactly the ones registered under
    ``expected_content_hash`` and are framed like a complete artifact. It does not
    prove who made them or that they decrypt: only opening with the key does.

    Raises:
        ArtifactFormatError: not an artifact of a supported format version.
        IntegrityError: the framing is impossible (truncated) or the hash differs.
    """
    hasher = hashlib.sha256()
    header = read_header(src)
    encoded = header.encode()
    hasher.update(encoded)
    body = 0
    while block := src.read(_READ_BLOCK):
        hasher.update(block)
        body += len(block)
    layout = body_layout(body, header.chunk_size)
    digest = hasher.hexdigest()
    if expected_content_hash is not None and digest != expected_content_hash.strip().lower():
        raise IntegrityError()
    return VerificationReport(
        header=header,
        content_hash=digest,
        size_bytes=len(encoded) + body,
        chunk_count=layout.chunk_count,
        payload_size=layout.payload_size,
    )


__all__ = [
    "OpeningReader",
    "VerificationReport",
    "open_bytes",
    "read_header",
    "verify_ciphertext",
]
