"""The plaintext payload layout, and streaming decryption to a model directory.

Payload (what the chunks encrypt)::

    u64_be(len(S)) || S || M

``S`` is a complete safetensors file, ``M`` the manifest JSON (UTF-8), whose
``plaintext_sha256`` is SHA-256(S). Putting ``M`` last lets a writer hash ``S``
while it streams, in one pass. Needs only the standard library and the core.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tensafe.artifacts.format import ArtifactHeader
from tensafe.artifacts.manifest import ArtifactKind, Manifest
from tensafe.artifacts.pipeline import BufferPool, HashingPipe
from tensafe.artifacts.reader import FRAME_BUFFERS, OpeningReader
from tensafe.artifacts.tenant_key import KeyResolver
from tensafe.artifacts.writeback import WriteBehind
from tensafe.errors import ArtifactFormatError, ConfigError, IntegrityError

PREFIX = struct.Struct(">Q")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
WEIGHT_FILES: dict[str, str] = {
    "lora_adapter": "adapter_model.safetensors",
    "full_weights": "model.safetensors",
    "training_state": "training_state.safetensors",
    "dataset_shard": "records.safetensors",
}
MANIFEST_FILE = "manifest.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def encode_prefix(safetensors_size: int) -> bytes:
    """The 8-byte payload prefix announcing the size of ``S``."""
    return PREFIX.pack(safetensors_size)


class PayloadSplitter:
    """Route a payload arriving in arbitrary pieces: ``S`` to a sink, ``M`` to memory.

    ``on_size`` (optional) is called with ``len(S)`` as soon as the prefix is read.

    Example:
        >>> got = []
        >>> splitter = PayloadSplitter(got.append)
        >>> splitter.feed(encode_prefix(2) + b"ab{")
        >>> splitter.feed(b"}")
        >>> splitter.finish(), b"".join(got)
        (b'{}', b'ab')
    """

    def __init__(
        self,
        sink: Callable[[memoryview], object],
        *,
        on_size: Callable[[int], object] | None = None,
    ) -> None:
        self._sink = sink
        self._on_size = on_size
        self._prefix = bytearray()
        self._remaining: int | None = None
        self._manifest = bytearray()
        self.safetensors_size: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next piece of payload. ``sink`` gets views of ``data`` (parts
        of ``S``) and may use them only until it returns unless ``data`` stays valid.

        Raises:
            ArtifactFormatError: if the manifest section exceeds 16 MiB.
        """
        view = memoryview(data)
        if self._remaining is None:
            take = min(PREFIX.size - len(self._prefix), len(view))
            self._prefix += view[:take]
            view = view[take:]
            if len(self._prefix) < PREFIX.size:
                return
            self._remaining = self.safetensors_size = PREFIX.unpack(self._prefix)[0]
            if self._on_size is not None:
                self._on_size(self._remaining)
        if self._remaining:
            part = view[: self._remaining]
            if len(part):
                self._sink(part)
                self._remaining -= len(part)
            view = view[len(part) :]
        if len(view):
            if len(self._manifest) + len(view) > MAX_MANIFEST_BYTES:
                raise ArtifactFormatError("artifact manifest exceeds 16 MiB")
            self._manifest += view

    def finish(self) -> bytes:
        """Return the manifest bytes once the whole payload was fed.

        Raises:
            ArtifactFormatError: if the payload ended inside the prefix or ``S``.
        """
        if self._remaining is None or self._remaining:
            raise ArtifactFormatError("artifact payload is shorter than its declared layout")
        return bytes(self._manifest)


@dataclass(frozen=True)
class DecryptedArtifact:
    """What :func:`decrypt_to_directory` wrote, after every check passed."""

    directory: Path
    manifest: Manifest
    files: tuple[Path, ...]
    header: ArtifactHeader
    content_hash: str


def parse_manifest(data: bytes) -> Manifest:
    """Parse the manifest of an authenticated payload.

    Raises:
        ArtifactFormatError: if the (authentic) manifest is not a valid manifest.
    """
    try:
        return Manifest.from_json(data)
    except ConfigError as exc:
        raise ArtifactFormatError(f"artifact manifest is invalid: {exc}") from None


def output_files(kind: ArtifactKind) -> tuple[str, ...]:
    """Names of the files :func:`decrypt_to_directory` writes for ``kind``."""
    extra = (ADAPTER_CONFIG_FILE,) if kind == "lora_adapter" else ()
    return (WEIGHT_FILES[kind], MANIFEST_FILE, *extra)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _check_free(target: Path, names: tuple[str, ...], overwrite: bool) -> None:
    if overwrite:
        return
    for name in names:
        if (target / name).exists():
            raise FileExistsError(f"{target / name} exists (pass overwrite=True to replace it)")


class _PlainFile:
    """The sink of the decrypted weights: a file written with write-behind."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._behind = WriteBehind(handle.fileno())

    def __call__(self, data: bytes | memoryview) -> None:
        self._handle.write(data)
        self._behind.wrote(len(data))


def _decrypt_into(
    temp: Path, reader: OpeningReader, content_hash: Callable[[], str], expected: str | None
) -> Manifest:
    plain_hash = hashlib.sha256()
    weights = temp / "weights.safetensors"
    fd = os.open(weights, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    # Plaintext chunks are decrypted into a few reused buffers; helper threads hash
    # and write them, then hand each buffer back.
    pool = BufferPool(size=reader.header.chunk_size, count=FRAME_BUFFERS + 2)
    held: list[bytearray] = []

    def destination(size: int) -> memoryview:
        held.append(pool.acquire())
        return memoryview(held[-1])[:size]

    with os.fdopen(fd, "wb") as handle:
        with HashingPipe(
            plain_hash, sink=_PlainFile(handle), depth=pool.count, sink_thread=True
        ) as pipe:
            splitter = PayloadSplitter(pipe.feed)
            for chunk in reader.chunks_into(destination):
                splitter.feed(chunk)
                pipe.after(functools.partial(pool.release, held.pop()))
        handle.flush()
        os.fsync(handle.fileno())
    manifest_bytes = splitter.finish()
    if expected is not None and content_hash() != expected.strip().lower():
        raise IntegrityError()
    manifest = parse_manifest(manifest_bytes)
    if manifest.plaintext_sha256 != plain_hash.hexdigest():
        raise IntegrityError()
    weights.rename(temp / WEIGHT_FILES[manifest.kind])
    _write_private(temp / MANIFEST_FILE, (manifest.to_json(indent=2) + "\n").encode("utf-8"))
    if manifest.kind == "lora_adapter":
        config = json.dumps(manifest.lora_config, indent=2, sort_keys=True) + "\n"
        _write_private(temp / ADAPTER_CONFIG_FILE, config.encode("utf-8"))
    return manifest


def decrypt_to_directory(
    src: BinaryIO,
    directory: str | os.PathLike[str],
    *,
    keys: KeyResolver,
    tenant_id: str,
    artifact_id: str | None,
    expected_content_hash: str | None = None,
    overwrite: bool = False,
) -> DecryptedArtifact:
    """Decrypt, fully verify, then publish the weights and manifest in ``directory``.

    Writes ``adapter_model.safetensors`` + ``adapter_config.json`` (a directory
    ``peft.PeftModel.from_pretrained`` loads), ``model.safetensors`` or
    ``training_state.safetensors``, and ``manifest.json``. Plaintext goes to a
    private (0700) temporary directory inside ``directory`` and is renamed into
    place only after the final chunk, the plaintext SHA-256 and (if given) the
    content hash verified; on any failure the temporary output is deleted and
    nothing is published. Memory stays bounded by a few chunks: decryption runs on
    the caller's thread into reused buffers while helper threads hash the
    ciphertext, hash the plaintext and write it (starting disk writeback as it
    goes, so the final ``fsync`` is short).

    ``artifact_id`` must be the id the artifact is presented under (the server
    always passes it); ``None`` trusts the id in the header, which the key
    commitment authenticates.

    Raises:
        ArtifactFormatError: not an artifact / unsupported version / bad layout.
        KeyProviderError: the key the header names is not available or destroyed.
        IntegrityError: any authentication or hash check failed (opaque).
        FileExistsError: an output file exists and ``overwrite`` is false.
    """
    target = Path(directory)
    _check_free(target, (MANIFEST_FILE,), overwrite)  # the kind-specific names: at the end
    content = hashlib.sha256()
    # Header, key and commitment are checked before anything is created on disk.
    reader = OpeningReader(
        src, keys=keys, tenant_id=tenant_id, artifact_id=artifact_id, content_hasher=content
    )
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".tensafe-decrypt-", dir=target))
    try:
        manifest = _decrypt_into(temp, reader, content.hexdigest, expected_content_hash)
        names = output_files(manifest.kind)
        _check_free(target, names, overwrite)
        for name in names:
            os.replace(temp / name, target / name)
        dir_fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()  # only if still empty
        raise
    shutil.rmtree(temp, ignore_errors=True)
    return DecryptedArtifact(
        directory=target,
        manifest=manifest,
        files=tuple(target / name for name in names),
        header=reader.header,
        content_hash=content.hexdigest(),
    )


__all__ = [
    "ADAPTER_CONFIG_FILE",
    "MANIFEST_FILE",
    "WEIGHT_FILES",
    "DecryptedArtifact",
    "PayloadSplitter",
    "decrypt_to_directory",
    "encode_prefix",
    "output_files",
    "parse_manifest",
]
