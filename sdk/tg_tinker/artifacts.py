"""Decrypt and verify pulled TenSafe artifacts on your own machine, offline.

This reader is written from ``docs/artifact-format.md`` alone and shares no code
with the server's writer (the SDK imports nothing of TenSafe's), so it is also a
standing proof that the published format is complete. It needs only the standard
library and ``cryptography``.

What it checks, in order: the header's structure; that the header names a key you
hold; the key commitment (binds key, tenant, artifact id and every header field)
*before* decrypting anything; every chunk's AES-256-GCM tag, its position and the
final-chunk marker; the SHA-256 of the whole file when you give the expected
``content_hash``; and ``SHA-256(safetensors) == manifest.plaintext_sha256``.
Any authentication failure raises one opaque :class:`ArtifactIntegrityError`;
no plaintext is returned, and no file is left, unless every check passed.

Memory stays bounded: the reader holds one chunk (≤ 1 MiB) at a time, and
:func:`decrypt_to_directory` streams the tensors to a private temporary file.

Example::

    from tg_tinker.artifacts import decrypt_to_directory, load_key_file

    key = load_key_file("tenant-key.json")          # from ServiceClient.export_tenant_key
    out = decrypt_to_directory("final.tsf", key, "adapter/")
    print(out.manifest["kind"], out.files)  # then PeftModel.from_pretrained(base, "adapter/")
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tg_tinker.errors import ArtifactIntegrityError, ValidationError

MAGIC = b"\x89TSAFE\r\n"
FORMAT_VERSION = 1
KEY_FILE_FORMAT = "tensafe-tenant-key/1"
_FIXED = struct.Struct(
    ">8sHHBBBBI"
)  # magic, version, header_len, log2, K, A, reserved, key version
_MAX_HEADER = 512
_MAX_MANIFEST = 16 << 20
_TAG = 16
_INFO_PREFIX = b"tensafe-artifact-v1\x00"
_FILES = {
    "lora_adapter": "adapter_model.safetensors",
    "full_weights": "model.safetensors",
    "training_state": "training_state.safetensors",
}

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


@dataclass(frozen=True)
class TenantKeyFile:
    """One exported tenant key version (the JSON file ``export_tenant_key`` writes).

    The key bytes never appear in ``repr``.
    """

    tenant_id: str
    key_id: str
    version: int
    key: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"TenantKeyFile(tenant_id={self.tenant_id!r}, key_id={self.key_id!r}, "
            f"version={self.version}, key=<redacted>)"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TenantKeyFile:
        """Parse the exported JSON object.

        Raises:
            ValidationError: wrong format marker, missing field, or a key that is not
                32 bytes of base64.
        """
        if data.get("format") != KEY_FILE_FORMAT:
            raise ValidationError(
                f"not a TenSafe tenant key file (format must be {KEY_FILE_FORMAT!r})",
                field="format",
            )
        for name in ("tenant_id", "key_id", "version", "key"):
            if name not in data:
                raise ValidationError("missing from the key file", field=name)
        try:
            key = base64.b64decode(data["key"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ValidationError("is not valid base64", field="key") from None
        if len(key) != 32:
            raise ValidationError("must decode to 32 bytes", field="key")
        version = data["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValidationError("must be a positive integer", field="version")
        return cls(str(data["tenant_id"]), str(data["key_id"]), version, key)


def load_key_file(path: str | os.PathLike[str]) -> TenantKeyFile:
    """Read a key file written by :meth:`ServiceClient.export_tenant_key`.

    The file may hold one key object or ``{"keys": [...]}`` for several versions;
    use :func:`load_key_files` for the latter.
    """
    keys = load_key_files(path)
    if len(keys) != 1:
        raise ValidationError("the file holds several keys; use load_key_files", field="path")
    return keys[0]


def load_key_files(path: str | os.PathLike[str]) -> list[TenantKeyFile]:
    """Every key in a key file (one object, or ``{"keys": [...]}``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(f"cannot read key file: {exc}", field="path") from None
    if isinstance(data, dict) and isinstance(data.get("keys"), list):
        return [TenantKeyFile.from_dict(k) for k in data["keys"]]
    if not isinstance(data, dict):
        raise ValidationError("a key file is a JSON object", field="path")
    return [TenantKeyFile.from_dict(data)]


@dataclass(frozen=True)
class ArtifactHeader:
    """The public header (no secrets): which key, which artifact, the chunk size."""

    key_id: str
    key_version: int
    artifact_id: str
    chunk_size: int
    salt: bytes = field(repr=False)
    commitment: bytes = field(repr=False)
    unsigned: bytes = field(repr=False)


@dataclass(frozen=True)
class DecryptedArtifact:
    """A verified artifact in memory: the safetensors file and the manifest."""

    header: ArtifactHeader
    manifest: dict[str, Any]
    safetensors: bytes
    content_hash: str


@dataclass(frozen=True)
class DecryptedDirectory:
    """A verified artifact written to ``path``: ``files`` lists what was written."""

    path: Path
    files: tuple[str, ...]
    header: ArtifactHeader
    manifest: dict[str, Any]
    content_hash: str


def _fail() -> ArtifactIntegrityError:
    return ArtifactIntegrityError("artifact integrity check failed")


def _read_exact(src: BinaryIO, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = src.read(n - len(buf))
        if not part:
            break
        buf += part
    return buf


def read_header(src: BinaryIO) -> ArtifactHeader:
    """Parse and check the public header (section 2 of the spec).

    Raises:
        ArtifactIntegrityError: the input is not a TenSafe artifact, uses an unsupported
            format version, or has a malformed or truncated header — one opaque error,
            like every other failure of an artifact's checks.
    """
    fixed = _read_exact(src, _FIXED.size)
    if len(fixed) < _FIXED.size or fixed[:8] != MAGIC:
        raise _fail()
    _, version, header_len, log2, k, a, reserved, key_version = _FIXED.unpack(fixed)
    if (
        version != FORMAT_VERSION
        or header_len > _MAX_HEADER
        or not 6 <= log2 <= 20
        or not 1 <= k <= 64
        or not 1 <= a <= 128
        or reserved != 0
        or key_version < 1
        or header_len != _FIXED.size + k + a + 64
    ):
        raise _fail()
    rest = _read_exact(src, header_len - _FIXED.size)
    if len(rest) != header_len - _FIXED.size:
        raise _fail()
    try:
        key_id = rest[:k].decode("ascii")
        artifact_id = rest[k : k + a].decode("ascii")
    except UnicodeDecodeError:
        raise _fail() from None
    return ArtifactHeader(
        key_id=key_id,
        key_version=key_version,
        artifact_id=artifact_id,
        chunk_size=1 << log2,
        salt=rest[k + a : k + a + 32],
        commitment=rest[k + a + 32 :],
        unsigned=fixed + rest[: k + a + 32],
    )


def _derive(key: bytes, header: ArtifactHeader, tenant_id: str, purpose: bytes, n: int) -> bytes:
    tenant = tenant_id.encode("utf-8")
    context = hashlib.sha256(struct.pack(">H", len(tenant)) + tenant + header.unsigned).digest()
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=n,
        salt=header.salt,
        info=_INFO_PREFIX + purpose + b"\x00" + context,
    )
    return hkdf.derive(key)


def _pick_key(
    keys: TenantKeyFile | Iterable[TenantKeyFile], header: ArtifactHeader
) -> TenantKeyFile:
    candidates = [keys] if isinstance(keys, TenantKeyFile) else list(keys)
    for k in candidates:
        if k.key_id == header.key_id and k.version == header.key_version:
            return k
    # A wrong key file and a header whose key id was altered look alike: both are the
    # one opaque error (which ids were expected is a hint to whoever altered it).
    raise _fail()


def _chunks(src: BinaryIO, header: ArtifactHeader, key: TenantKeyFile, hasher) -> Iterator[bytes]:
    """Verified plaintext chunks in order; raises the opaque error on any failure.

    The caller must treat what it received as provisional until the iterator is
    exhausted (truncation is only detectable at the end).
    """
    commitment = _derive(key.key, header, key.tenant_id, b"commitment", 32)
    if not hmac.compare_digest(commitment, header.commitment):
        raise _fail()
    aead = AESGCM(_derive(key.key, header, key.tenant_id, b"payload-key", 32))
    base = int.from_bytes(_derive(key.key, header, key.tenant_id, b"base-nonce", 12), "big")
    frame = header.chunk_size + _TAG
    current = _read_exact(src, frame)
    index = 0
    while True:
        final = len(current) < frame
        nxt = b"" if final else _read_exact(src, frame)
        if final and len(current) < _TAG:
            raise _fail()
        if not final and not nxt:  # a full frame must be followed by more: the end is short
            raise _fail()
        if final and _read_exact(src, 1):
            raise _fail()
        if index >= 1 << 32:
            raise _fail()
        hasher(current)
        nonce = (base ^ index).to_bytes(12, "big")
        try:
            yield aead.decrypt(nonce, current, b"\x01" if final else b"\x00")
        except InvalidTag:
            raise _fail() from None
        if final:
            return
        current = nxt
        index += 1


class _PayloadSplitter:
    """Consumes the payload ``u64(len S) || S || M``: S to a sink, M buffered."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.s_hash = hashlib.sha256()
        self.s_left: int | None = None
        self.prefix = b""
        self.manifest = bytearray()

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        if self.s_left is None:
            need = 8 - len(self.prefix)
            self.prefix += bytes(view[:need])
            view = view[need:]
            if len(self.prefix) < 8:
                return
            self.s_left = struct.unpack(">Q", self.prefix)[0]
        if self.s_left:
            take = view[: self.s_left]
            self.sink(take)
            self.s_hash.update(take)
            self.s_left -= len(take)
            view = view[len(take) :]
        if len(view):
            if len(self.manifest) + len(view) > _MAX_MANIFEST:
                raise _fail()
            self.manifest += view

    def finish(self) -> dict[str, Any]:
        if self.s_left is None or self.s_left:
            raise _fail()
        try:
            manifest = json.loads(bytes(self.manifest).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _fail() from None
        if not isinstance(manifest, dict) or not hmac.compare_digest(
            str(manifest.get("plaintext_sha256", "")), self.s_hash.hexdigest()
        ):
            raise _fail()
        return manifest


def _open_source(source: Source) -> tuple[BinaryIO, bool]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), True
    if isinstance(source, (str, os.PathLike)):
        return open(source, "rb"), True
    return source, False


def _run(
    source: Source,
    keys: TenantKeyFile | Iterable[TenantKeyFile],
    *,
    artifact_id: str | None,
    expected_content_hash: str | None,
    sink,
) -> tuple[ArtifactHeader, dict[str, Any], str]:
    src, owned = _open_source(source)
    try:
        file_hash = hashlib.sha256()
        header = read_header(src)
        file_hash.update(header.unsigned + header.commitment)
        if artifact_id is not None and not hmac.compare_digest(
            artifact_id.encode(), header.artifact_id.encode()
        ):
            raise _fail()
        key = _pick_key(keys, header)
        splitter = _PayloadSplitter(sink)
        for chunk in _chunks(src, header, key, file_hash.update):
            splitter.feed(chunk)
        manifest = splitter.finish()
        content_hash = file_hash.hexdigest()
        if expected_content_hash is not None and not hmac.compare_digest(
            expected_content_hash.lower(), content_hash
        ):
            raise _fail()
        return header, manifest, content_hash
    finally:
        if owned:
            src.close()


def decrypt(
    source: Source,
    key: TenantKeyFile | Iterable[TenantKeyFile],
    *,
    artifact_id: str | None = None,
    expected_content_hash: str | None = None,
) -> DecryptedArtifact:
    """Decrypt and fully verify an artifact into memory.

    Args:
        source: a path, the artifact bytes, or a binary file object.
        key: the tenant key (or several versions) from ``export_tenant_key``.
        artifact_id: the id you expect (the blob must carry exactly it).
        expected_content_hash: the ``content_hash`` the server reported.

    Raises:
        ArtifactIntegrityError: any authentication or consistency failure (opaque).
        ArtifactIntegrityError: not an artifact, unsupported version, no matching key,
            or any failed check (one opaque error).
    """
    out = io.BytesIO()
    header, manifest, content_hash = _run(
        source,
        key,
        artifact_id=artifact_id,
        expected_content_hash=expected_content_hash,
        sink=out.write,
    )
    return DecryptedArtifact(
        header=header, manifest=manifest, safetensors=out.getvalue(), content_hash=content_hash
    )


def decrypt_to_directory(
    source: Source,
    key: TenantKeyFile | Iterable[TenantKeyFile],
    directory: str | os.PathLike[str],
    *,
    artifact_id: str | None = None,
    expected_content_hash: str | None = None,
    overwrite: bool = False,
) -> DecryptedDirectory:
    """Decrypt, verify, and write the artifact as files in ``directory``.

    Writes ``adapter_model.safetensors`` + ``adapter_config.json`` (LoRA adapters —
    loadable with ``peft.PeftModel.from_pretrained(base, directory)``),
    ``model.safetensors`` (full weights) or ``training_state.safetensors``, plus
    ``manifest.json``. Everything is written into a private temporary directory and
    moved into place only after every check passed; on failure nothing is left.

    Raises:
        ArtifactIntegrityError: any authentication or consistency failure (opaque).
        ValidationError: bad input, or files exist and not ``overwrite``.
        ArtifactIntegrityError: no matching key, or any failed check (one opaque error).
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tensafe-decrypt-", dir=target))
    try:
        os.chmod(staging, 0o700)
        with open(staging / "tensors.safetensors", "wb") as fh:
            header, manifest, content_hash = _run(
                source,
                key,
                artifact_id=artifact_id,
                expected_content_hash=expected_content_hash,
                sink=fh.write,
            )
        kind = manifest.get("kind")
        if kind not in _FILES:
            raise _fail()
        files = {_FILES[kind]: staging / "tensors.safetensors"}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        files["manifest.json"] = staging / "manifest.json"
        if kind == "lora_adapter":
            if not isinstance(manifest.get("lora_config"), dict):
                raise _fail()
            (staging / "adapter_config.json").write_text(
                json.dumps(manifest["lora_config"], indent=2)
            )
            files["adapter_config.json"] = staging / "adapter_config.json"
        clashes = [name for name in files if (target / name).exists()]
        if clashes and not overwrite:
            raise ValidationError(
                f"{', '.join(sorted(clashes))} already exist in {target}; pass overwrite=True",
                field="directory",
            )
        for name, path in files.items():
            os.replace(path, target / name)
        return DecryptedDirectory(
            path=target,
            files=tuple(sorted(files)),
            header=header,
            manifest=manifest,
            content_hash=content_hash,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "ArtifactHeader",
    "DecryptedArtifact",
    "DecryptedDirectory",
    "TenantKeyFile",
    "decrypt",
    "decrypt_to_directory",
    "load_key_file",
    "load_key_files",
    "read_header",
]
