"""Seal torch tensors + a manifest into an artifact, and open one back into memory.

This is the torch-facing layer the server uses. The stream is produced in one
pass over the tensors' own memory (no copy): the caller's thread encrypts it chunk
by chunk, one helper thread computes the plaintext SHA-256 of the same chunks
(still in cache), and two more hash and write the ciphertext, so the two SHA-256
streams run on different cores. Opening decrypts straight into the final tensor
buffer while helper threads hash the ciphertext and the plaintext. Nothing is
written to disk in the clear.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import torch

from tensafe.artifacts.format import DEFAULT_CHUNK_SIZE, ArtifactHeader
from tensafe.artifacts.manifest import Manifest
from tensafe.artifacts.payload import PREFIX, PayloadSplitter, encode_prefix, parse_manifest
from tensafe.artifacts.pipeline import HashingPipe
from tensafe.artifacts.reader import OpeningReader
from tensafe.artifacts.safetensors_io import (
    iter_safetensors_bytes,
    safetensors_layout,
    tensors_from_buffer,
)
from tensafe.artifacts.tenant_key import KeyResolver, TenantKey
from tensafe.artifacts.writer import SealingWriter
from tensafe.errors import ConfigError, IntegrityError

PLAIN_HASH_DEPTH = 8
"""Chunks the plaintext-hash thread may lag behind (views of memory that exists anyway)."""


def peft_config_dict(config: object) -> dict[str, object]:
    """A peft config (e.g. ``LoraConfig``) as the JSON dict ``Manifest.lora_config``
    wants and ``adapter_config.json`` holds: sets become sorted lists, enums values.

    Raises:
        ConfigError: if ``config`` has no ``to_dict()``.
    """
    to_dict = getattr(config, "to_dict", None)
    if to_dict is None:
        raise ConfigError("lora_config", "must be a peft config with to_dict()")

    def plain(value: object) -> object:
        if isinstance(value, enum.Enum):
            return plain(value.value)
        if isinstance(value, set | frozenset):
            return sorted(plain(v) for v in value)  # type: ignore[type-var]
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    result = plain(to_dict())
    assert isinstance(result, dict)
    return result


@dataclass(frozen=True)
class SealedInfo:
    """Identity of a sealed checkpoint, for the artifact row."""

    artifact_id: str
    content_hash: str
    """Hex SHA-256 of the whole ciphertext (the content address)."""
    size_bytes: int
    plaintext_sha256: str
    """Hex SHA-256 of the safetensors bytes (also inside the sealed manifest)."""
    manifest: Manifest
    """The manifest as sealed (stamped with ``plaintext_sha256``)."""
    header: ArtifactHeader


def seal_checkpoint(
    *,
    tensors: Mapping[str, torch.Tensor],
    manifest: Manifest,
    tenant_key: TenantKey,
    artifact_id: str,
    out: BinaryIO,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> SealedInfo:
    """Write ``tensors`` (as safetensors) and ``manifest`` to ``out`` as an artifact.

    The artifact is bound to ``tenant_key.tenant_id`` and ``artifact_id``. ``out``
    is written sequentially (a file, a pipe or an upload from
    :mod:`server.storage`); extra memory stays within a few chunks plus one
    tensor if a tensor must be moved off the GPU or made contiguous. The tensors
    must not be modified while sealing.

    Raises:
        ConfigError: invalid artifact id, chunk size, tensor name or dtype.
        OSError: if writing to ``out`` fails (the output is then incomplete and
            will never authenticate).
    """
    layout = safetensors_layout(tensors)
    plain = hashlib.sha256()
    with (
        SealingWriter(
            out, tenant_key=tenant_key, artifact_id=artifact_id, chunk_size=chunk_size
        ) as writer,
        # The plaintext hash runs on its own thread over the (immutable) tensor
        # memory, a few chunks behind the encryption: still in cache.
        HashingPipe(plain, depth=PLAIN_HASH_DEPTH) as plain_pipe,
    ):
        prefix = encode_prefix(layout.total_size)
        writer.write(prefix)
        offset = len(prefix)
        for data in iter_safetensors_bytes(layout):
            # Pieces end on chunk boundaries, so the writer seals straight from the
            # tensors' memory.
            while len(data):
                piece = data[: chunk_size - offset % chunk_size]
                plain_pipe.feed(piece)
                writer.write(piece)
                offset += len(piece)
                data = data[len(piece) :]
        plain_pipe.close()
        stamped = manifest.with_plaintext_sha256(plain.hexdigest())
        writer.write(stamped.to_json().encode("utf-8"))
    result = writer.result
    return SealedInfo(
        artifact_id=artifact_id,
        content_hash=result.content_hash,
        size_bytes=result.size_bytes,
        plaintext_sha256=plain.hexdigest(),
        manifest=stamped,
        header=result.header,
    )


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A fully verified checkpoint in memory."""

    tensors: dict[str, torch.Tensor]
    manifest: Manifest
    header: ArtifactHeader
    content_hash: str


class _BufferSink:
    """Receives the safetensors bytes into one uninitialized uint8 tensor.

    :meth:`place` tells the reader where to decrypt each chunk: straight into the
    tensor buffer when the chunk lies entirely inside the safetensors bytes and
    their size is known, else into a scratch buffer (the first chunk, which holds
    the size prefix, and the last ones, which hold the manifest). The splitter then
    hands every safetensors part to :meth:`__call__`, which copies only what was not
    decrypted in place, and feeds the buffer's bytes to the plaintext hash.
    """

    def __init__(self, pipe: HashingPipe, chunk_size: int) -> None:
        self.pipe = pipe
        self.buffer = torch.empty(0, dtype=torch.uint8)
        self._view = memoryview(b"")
        self._position = 0
        self._size: int | None = None
        self._scratch = bytearray(chunk_size)
        self._payload_offset = 0  # of the next chunk
        self._placed = (-1, -1)  # safetensors range decrypted in place, not yet received

    def allocate(self, size: int) -> None:
        self.buffer = torch.empty(size, dtype=torch.uint8)
        self._view = memoryview(self.buffer.numpy()) if size else memoryview(bytearray())
        self._size = size

    def place(self, size: int) -> memoryview:
        start = self._payload_offset - PREFIX.size  # offset in the safetensors bytes
        self._payload_offset += size
        if self._size is not None and start >= 0 and start + size <= self._size:
            self._placed = (start, start + size)
            return self._view[start : start + size]
        return memoryview(self._scratch)[:size]

    def __call__(self, part: memoryview) -> None:
        end = self._position + len(part)
        if (self._position, end) != self._placed:
            self._view[self._position : end] = part
        self.pipe.feed(self._view[self._position : end])
        self._position = end


def open_checkpoint(
    src: BinaryIO,
    *,
    keys: KeyResolver,
    tenant_id: str,
    artifact_id: str | None,
    expected_content_hash: str | None = None,
) -> OpenedCheckpoint:
    """Decrypt and verify an artifact into memory; nothing touches disk.

    Returns only after the final chunk, the plaintext SHA-256 and (if given) the
    content hash verified. The tensors are CPU views into one buffer of the
    safetensors size; extra memory beyond that stays within a few chunks.

    ``artifact_id`` is the id the artifact is presented under; the server must
    pass it. ``None`` trusts the (authenticated) id in the header.

    Raises:
        ArtifactFormatError: not an artifact, unsupported version, bad layout.
        KeyProviderError: the key the header names is unknown or destroyed.
        IntegrityError: any authentication or hash check failed (opaque).
    """
    content = hashlib.sha256()
    reader = OpeningReader(
        src, keys=keys, tenant_id=tenant_id, artifact_id=artifact_id, content_hasher=content
    )
    plain = hashlib.sha256()
    with HashingPipe(plain, depth=PLAIN_HASH_DEPTH) as pipe:
        sink = _BufferSink(pipe, reader.header.chunk_size)
        splitter = PayloadSplitter(sink, on_size=sink.allocate)
        for chunk in reader.chunks_into(sink.place):
            splitter.feed(chunk)
    manifest = parse_manifest(splitter.finish())
    if manifest.plaintext_sha256 != plain.hexdigest():
        raise IntegrityError()
    if expected_content_hash is not None and (
        content.hexdigest() != expected_content_hash.strip().lower()
    ):
        raise IntegrityError()
    tensors, _metadata = tensors_from_buffer(sink.buffer)
    return OpenedCheckpoint(
        tensors=tensors, manifest=manifest, header=reader.header, content_hash=content.hexdigest()
    )


__all__ = [
    "OpenedCheckpoint",
    "SealedInfo",
    "open_checkpoint",
    "peft_config_dict",
    "seal_checkpoint",
]
