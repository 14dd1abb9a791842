"""Opening: authenticate and decrypt artifacts chunk by chunk; keyless verification.

Part of the crypto core: standard library and pyca ``cryptography`` only.

Release rule: :class:`OpeningReader` yields a chunk's plaintext only after that
chunk's tag verified, and raises :class:`~tensafe.errors.IntegrityError` on the
first bad or missing chunk. A caller of the reader must still treat what it got as
provisional until the iterator ends (a truncated stream is only detected at the
end); the public helpers built on it buffer and release nothing before then.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

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
from tensafe.artifacts.pipeline import Hasher
from tensafe.artifacts.tenant_key import KeyResolver
from tensafe.errors import ArtifactFormatError, IntegrityError

_READ_BLOCK = 1 << 20


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
    :meth:`chunks` then yields each chunk's plaintext after its tag verified.

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
    ) -> None:
        self._src = src
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
        """Yield each chunk's verified plaintext; sets :attr:`complete` at the end.

        Raises:
            IntegrityError: a chunk failed, or chunks are missing, extra or reordered.
        """
        frame_size = self.header.chunk_size + TAG_SIZE
        buffer = bytearray(frame_size)  # reused: plaintext is always a fresh object
        index = 0
        while True:
            frame = _read_into(self._src, buffer)
            if len(frame) < TAG_SIZE or index >= MAX_CHUNKS:
                raise IntegrityError()
            if self._hasher is not None:
                self._hasher.update(frame)
            final = len(frame) < frame_size
            try:
                plain = self._aead.decrypt(
                    chunk_nonce(self._base_nonce, index), frame, FLAG_FINAL if final else FLAG_MORE
                )
            except InvalidTag:
                raise IntegrityError() from None
            index += 1
            self.chunk_count = index
            self.payload_size += len(plain)
            if final:
                self.complete = True
                yield plain
                return
            yield plain


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
