"""The TenSafe artifact header, key schedule and chunk framing (format version 1).

This module, :mod:`tensafe.artifacts.writer` and :mod:`tensafe.artifacts.reader` are
the whole cryptographic core. They depend only on the standard library and pyca
``cryptography`` so the client SDK can decrypt pulled artifacts without torch. The
byte-level specification is ``docs/artifact-format.md``; this module is its
reference implementation.

Layout of an artifact::

    header  = magic(8) version(u16) header_length(u16) chunk_size_log2(u8)
              key_id_length(u8) artifact_id_length(u8) reserved(u8)
              key_version(u32) key_id artifact_id salt(32) commitment(32)
    body    = chunk_0 || ... || chunk_n        (each chunk = AES-256-GCM ct || tag)

Every non-final chunk holds exactly ``chunk_size`` plaintext bytes; the final
chunk holds ``0 <= n < chunk_size`` bytes, so a body always ends with a short chunk.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tensafe.errors import ArtifactFormatError, ConfigError, IntegrityError

MAGIC = b"\x89TSAFE\r\n"
FORMAT_VERSION = 1
TAG_SIZE = 16
SALT_SIZE = 32
COMMITMENT_SIZE = 32
KEY_SIZE = 32
NONCE_SIZE = 12
MIN_CHUNK_SIZE_LOG2 = 6  # 64 B: only useful for tests; writers should use 16..20
MAX_CHUNK_SIZE_LOG2 = 20  # 1 MiB bounds the reader's memory
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_HEADER_LENGTH = 512
MAX_CHUNKS = 1 << 32

_FIXED = struct.Struct(">8sHHBBBBI")  # magic .. key_version: 20 bytes
FIXED_HEADER_SIZE = _FIXED.size
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]+")
_MAX_KEY_ID = 64
_MAX_ARTIFACT_ID = 128
_KDF_LABEL = b"tensafe-artifact-v1"
FLAG_MORE = b"\x00"  # associated data of a non-final chunk
FLAG_FINAL = b"\x01"  # associated data of the final chunk


def validate_identifier(value: object, *, field: str, max_length: int) -> str:
    """Return ``value`` if it is a 1..max_length string of ``[A-Za-z0-9_.:-]``.

    Raises:
        ConfigError: naming ``field`` when the value does not qualify.
    """
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise ConfigError(field, f"must be a string of 1..{max_length} characters")
    if not _ID_PATTERN.fullmatch(value):
        raise ConfigError(field, "may contain only letters, digits and '_', '.', ':', '-'")
    return value


def validate_tenant_id(value: object) -> str:
    """Return ``value`` if it is a usable tenant id (non-empty, <= 256 UTF-8 bytes, no NUL).

    Raises:
        ConfigError: otherwise.
    """
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError("tenant_id", "must be a non-empty string without NUL characters")
    if len(value.encode("utf-8")) > 256:
        raise ConfigError("tenant_id", "must be at most 256 UTF-8 bytes")
    return value


def new_artifact_id() -> str:
    """A fresh random artifact id (``art_`` + 32 hex digits, 128 random bits)."""
    return "art_" + secrets.token_hex(16)


def chunk_size_log2(chunk_size: int) -> int:
    """Return log2 of ``chunk_size``.

    Raises:
        ConfigError: unless ``chunk_size`` is a power of two between 64 B and 1 MiB.
    """
    if (
        not isinstance(chunk_size, int)
        or chunk_size <= 0
        or chunk_size & (chunk_size - 1)
        or not MIN_CHUNK_SIZE_LOG2 <= chunk_size.bit_length() - 1 <= MAX_CHUNK_SIZE_LOG2
    ):
        raise ConfigError("chunk_size", "must be a power of two between 64 bytes and 1 MiB")
    return chunk_size.bit_length() - 1


@dataclass(frozen=True)
class ArtifactHeader:
    """The public, unencrypted header of an artifact.

    Everything here is readable without a key and is bound into the key
    commitment, so changing any byte makes authentication fail.

    Example:
        >>> h = ArtifactHeader.new(key_id="tk_1", key_version=1, artifact_id="art_1")
        >>> ArtifactHeader.parse(h.encode()) == h
        True
    """

    format_version: int
    chunk_size: int
    key_id: str
    key_version: int
    artifact_id: str
    salt: bytes
    commitment: bytes

    @classmethod
    def new(
        cls,
        *,
        key_id: str,
        key_version: int,
        artifact_id: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        salt: bytes | None = None,
    ) -> ArtifactHeader:
        """A header for a new artifact with a random salt and an empty commitment.

        The commitment is filled in by :func:`derive_artifact_keys`.

        Raises:
            ConfigError: for an invalid id, version, chunk size or salt.
        """
        validate_identifier(key_id, field="key_id", max_length=_MAX_KEY_ID)
        validate_identifier(artifact_id, field="artifact_id", max_length=_MAX_ARTIFACT_ID)
        if not isinstance(key_version, int) or not 1 <= key_version < 1 << 32:
            raise ConfigError("key_version", "must be an integer in 1..2**32-1")
        chunk_size_log2(chunk_size)
        salt = secrets.token_bytes(SALT_SIZE) if salt is None else salt
        if len(salt) != SALT_SIZE:
            raise ConfigError("salt", f"must be {SALT_SIZE} bytes")
        return cls(FORMAT_VERSION, chunk_size, key_id, key_version, artifact_id, salt, bytes(32))

    @property
    def length(self) -> int:
        """Encoded size of the header in bytes."""
        return FIXED_HEADER_SIZE + len(self.key_id) + len(self.artifact_id) + 64

    def encode_unsigned(self) -> bytes:
        """The header bytes up to (excluding) the commitment."""
        key_id = self.key_id.encode("ascii")
        artifact_id = self.artifact_id.encode("ascii")
        fixed = _FIXED.pack(
            MAGIC,
            self.format_version,
            self.length,
            chunk_size_log2(self.chunk_size),
            len(key_id),
            len(artifact_id),
            0,
            self.key_version,
        )
        return fixed + key_id + artifact_id + self.salt

    def encode(self) -> bytes:
        """The complete header bytes as written at the start of the artifact."""
        return self.encode_unsigned() + self.commitment

    def public_dict(self) -> dict[str, object]:
        """The header as a JSON-ready dict (what ``tensafe artifact inspect`` prints)."""
        return {
            "format_version": self.format_version,
            "header_length": self.length,
            "chunk_size": self.chunk_size,
            "key_id": self.key_id,
            "key_version": self.key_version,
            "artifact_id": self.artifact_id,
            "salt": self.salt.hex(),
            "commitment": self.commitment.hex(),
        }

    @classmethod
    def parse(cls, data: bytes) -> ArtifactHeader:
        """Parse a complete header (exactly :meth:`length` bytes).

        Raises:
            ArtifactFormatError: not an artifact, unsupported version, a bad length
                or a malformed field. Structural only: nothing is authenticated here.
        """
        fixed = parse_fixed_header(data[:FIXED_HEADER_SIZE])
        _magic, version, length, log2, key_len, art_len, _reserved, key_version = fixed
        if len(data) != length:
            raise ArtifactFormatError(f"artifact header is {len(data)} bytes, expected {length}")
        key_end = FIXED_HEADER_SIZE + key_len
        art_end = key_end + art_len
        try:
            key_id = data[FIXED_HEADER_SIZE:key_end].decode("ascii")
            artifact_id = data[key_end:art_end].decode("ascii")
            validate_identifier(key_id, field="key_id", max_length=_MAX_KEY_ID)
            validate_identifier(artifact_id, field="artifact_id", max_length=_MAX_ARTIFACT_ID)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ArtifactFormatError(f"malformed artifact header: {exc}") from None
        salt = data[art_end : art_end + SALT_SIZE]
        commitment = data[art_end + SALT_SIZE : length]
        return cls(version, 1 << log2, key_id, key_version, artifact_id, salt, commitment)


def parse_fixed_header(fixed: bytes) -> tuple[bytes, int, int, int, int, int, int, int]:
    """Check the fixed 20-byte header prefix and return its fields.

    Raises:
        ArtifactFormatError: with a message saying exactly what is wrong.
    """
    if len(fixed) < len(MAGIC) or fixed[: len(MAGIC)] != MAGIC:
        raise ArtifactFormatError("not a TenSafe artifact (bad magic bytes)")
    if len(fixed) < FIXED_HEADER_SIZE:
        raise ArtifactFormatError("artifact header is truncated")
    fields = _FIXED.unpack(fixed)
    _magic, version, length, log2, key_len, art_len, reserved, key_version = fields
    if version != FORMAT_VERSION:
        raise ArtifactFormatError(
            f"unsupported artifact format version {version} (this reader supports {FORMAT_VERSION})"
        )
    if length > MAX_HEADER_LENGTH:
        raise ArtifactFormatError(
            f"artifact header length {length} exceeds the {MAX_HEADER_LENGTH}-byte maximum"
        )
    if not MIN_CHUNK_SIZE_LOG2 <= log2 <= MAX_CHUNK_SIZE_LOG2:
        raise ArtifactFormatError(f"unsupported chunk size 2**{log2}")
    if reserved != 0 or not 0 < key_len <= _MAX_KEY_ID or not 0 < art_len <= _MAX_ARTIFACT_ID:
        raise ArtifactFormatError("malformed artifact header fields")
    if length != FIXED_HEADER_SIZE + key_len + art_len + SALT_SIZE + COMMITMENT_SIZE:
        raise ArtifactFormatError("artifact header length does not match its fields")
    if key_version == 0:
        raise ArtifactFormatError("artifact header names key version 0")
    return fields


@dataclass(frozen=True)
class ArtifactKeys:
    """The per-artifact secrets derived from a tenant key (never stored)."""

    payload_key: bytes
    base_nonce: bytes
    commitment: bytes

    def __repr__(self) -> str:
        return "ArtifactKeys(<redacted>)"


def _hkdf(ikm: bytes, salt: bytes, purpose: bytes, context: bytes, length: int) -> bytes:
    info = _KDF_LABEL + b"\x00" + purpose + b"\x00" + context
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_artifact_keys(
    tenant_key: bytes, header: ArtifactHeader, *, tenant_id: str
) -> ArtifactKeys:
    """Derive payload key, base nonce and key commitment for ``header``.

    The HKDF context is SHA-256(len16(tenant_id) || tenant_id || unsigned header), so
    the commitment binds the tenant key, the tenant id, the artifact id and every
    header field.

    Raises:
        ConfigError: if the tenant key is not 32 bytes or the tenant id is invalid.
    """
    if len(tenant_key) != KEY_SIZE:
        raise ConfigError("tenant_key", "key material must be 32 bytes")
    tenant = validate_tenant_id(tenant_id).encode("utf-8")
    context = hashlib.sha256(
        struct.pack(">H", len(tenant)) + tenant + header.encode_unsigned()
    ).digest()
    salt = header.salt
    return ArtifactKeys(
        payload_key=_hkdf(tenant_key, salt, b"payload-key", context, KEY_SIZE),
        base_nonce=_hkdf(tenant_key, salt, b"base-nonce", context, NONCE_SIZE),
        commitment=_hkdf(tenant_key, salt, b"commitment", context, COMMITMENT_SIZE),
    )


def check_commitment(keys: ArtifactKeys, header: ArtifactHeader) -> None:
    """Constant-time check of the header's key commitment.

    Raises:
        IntegrityError: if it does not match (wrong key, tenant, id or header).
    """
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise IntegrityError()


def chunk_nonce(base_nonce: bytes, index: int) -> bytes:
    """Nonce of chunk ``index``: the base nonce XOR the 96-bit big-endian index."""
    value = int.from_bytes(base_nonce, "big") ^ index
    return value.to_bytes(NONCE_SIZE, "big")


@dataclass(frozen=True)
class BodyLayout:
    """Chunk framing implied by a body (ciphertext after the header) of a given size."""

    chunk_count: int
    payload_size: int


def body_layout(body_size: int, chunk_size: int) -> BodyLayout:
    """Framing of a ``body_size``-byte body; checkable without a key.

    Raises:
        IntegrityError: if no valid chunk sequence has that size (e.g. truncation
            at a chunk boundary or inside a tag).
    """
    frame = chunk_size + TAG_SIZE
    full, last = divmod(body_size, frame)
    if last < TAG_SIZE or full + 1 > MAX_CHUNKS:
        raise IntegrityError()
    return BodyLayout(chunk_count=full + 1, payload_size=full * chunk_size + last - TAG_SIZE)


def sealed_size(payload_size: int, *, header_length: int, chunk_size: int) -> int:
    """Total artifact size for a payload of ``payload_size`` bytes."""
    chunks = payload_size // chunk_size + 1
    return header_length + payload_size + chunks * TAG_SIZE


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER_LENGTH",
    "TAG_SIZE",
    "ArtifactHeader",
    "ArtifactKeys",
    "BodyLayout",
    "body_layout",
    "check_commitment",
    "chunk_nonce",
    "chunk_size_log2",
    "derive_artifact_keys",
    "new_artifact_id",
    "parse_fixed_header",
    "sealed_size",
    "validate_identifier",
    "validate_tenant_id",
]
