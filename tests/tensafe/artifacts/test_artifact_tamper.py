"""Tamper, misbinding and bad-input tests: every failure is closed and releases nothing."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from tensafe.artifacts import (
    ArtifactHeader,
    Manifest,
    TenantKey,
    TenantKeySet,
    decrypt_to_directory,
    open_bytes,
    read_header,
    seal_bytes,
)
from tensafe.artifacts.format import FIXED_HEADER_SIZE, TAG_SIZE
from tensafe.errors import ArtifactFormatError, IntegrityError, KeyProviderError

from .conftest import SMALL_CHUNK

FRAME = SMALL_CHUNK + TAG_SIZE
PAYLOAD = bytes(range(256))[:200]  # 3 full chunks and an 8-byte final chunk


def _seal(key: TenantKey, payload: bytes = PAYLOAD, artifact_id: str = "art_t") -> bytes:
    return seal_bytes(payload, tenant_key=key, artifact_id=artifact_id, chunk_size=SMALL_CHUNK)


def _split(blob: bytes) -> tuple[bytes, list[bytes]]:
    length = read_header(io.BytesIO(blob)).length
    body = blob[length:]
    return blob[:length], [body[i : i + FRAME] for i in range(0, len(body), FRAME)]


def _open(
    blob: bytes, key: TenantKey, *, tenant: str = "acme", artifact: str | None = "art_t"
) -> bytes:
    return open_bytes(blob, keys=key, tenant_id=tenant, artifact_id=artifact)


def _key_selecting_bytes(blob: bytes) -> int:
    """Header bytes before the salt: structure, key selection and ids (all public)."""
    header = read_header(io.BytesIO(blob))
    return FIXED_HEADER_SIZE + len(header.key_id) + len(header.artifact_id)


def test_every_bit_flip_fails_closed_and_opaque(tenant_key: TenantKey) -> None:
    blob = _seal(tenant_key)
    assert 300 < len(blob) < 400
    structural = _key_selecting_bytes(blob)
    messages = set()
    for position in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            if position < structural:
                # magic, version, lengths, key id/version, artifact id: a clear
                # structural or key-lookup error (public fields), or an integrity failure.
                with pytest.raises((ArtifactFormatError, KeyProviderError, IntegrityError)):
                    _open(bytes(tampered), tenant_key)
            else:
                with pytest.raises(IntegrityError) as info:
                    _open(bytes(tampered), tenant_key)
                messages.add(str(info.value))
    assert messages == {"artifact integrity check failed"}


def test_every_truncation_fails(tenant_key: TenantKey) -> None:
    blob = _seal(tenant_key)
    header_length = read_header(io.BytesIO(blob)).length
    for cut in range(len(blob)):
        expected = ArtifactFormatError if cut < header_length else IntegrityError
        with pytest.raises(expected):
            _open(blob[:cut], tenant_key)


def test_truncation_at_each_chunk_boundary_fails(tenant_key: TenantKey) -> None:
    header, frames = _split(_seal(tenant_key))
    for keep in range(len(frames)):
        with pytest.raises(IntegrityError):
            _open(header + b"".join(frames[:keep]), tenant_key)


def test_dropped_swapped_duplicated_chunks_fail(tenant_key: TenantKey) -> None:
    header, frames = _split(_seal(tenant_key))
    variants = []
    for i in range(len(frames)):
        variants.append(frames[:i] + frames[i + 1 :])  # dropped
        variants.append([*frames[: i + 1], frames[i], *frames[i + 1 :]])  # duplicated
        for j in range(i + 1, len(frames)):
            swapped = list(frames)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            variants.append(swapped)
    variants.append([*frames, frames[-1]])  # final chunk twice
    for variant in variants:
        with pytest.raises(IntegrityError):
            _open(header + b"".join(variant), tenant_key)


def test_chunk_spliced_from_another_artifact_fails(tenant_key: TenantKey) -> None:
    header, frames = _split(_seal(tenant_key))
    _, foreign = _split(_seal(tenant_key))  # same key, ids and plaintext; new salt
    for i in range(len(frames)):
        spliced = list(frames)
        spliced[i] = foreign[i]
        with pytest.raises(IntegrityError):
            _open(header + b"".join(spliced), tenant_key)
    foreign_header, _ = _split(_seal(tenant_key))
    with pytest.raises(IntegrityError):
        _open(foreign_header + b"".join(frames), tenant_key)


def test_right_blob_under_another_tenant_fails(tenant_key: TenantKey) -> None:
    blob = _seal(tenant_key)
    # Same key material presented for another tenant: the tenant id is in the KDF.
    impostor = TenantKey("globex", tenant_key.key_id, tenant_key.version, tenant_key.material)
    with pytest.raises(IntegrityError):
        _open(blob, impostor, tenant="globex")
    # Asking for the blob under another tenant with the right key: key lookup refuses.
    with pytest.raises(KeyProviderError):
        _open(blob, tenant_key, tenant="globex")


def test_right_blob_under_another_artifact_id_fails(tenant_key: TenantKey) -> None:
    blob = _seal(tenant_key)
    with pytest.raises(IntegrityError):
        _open(blob, tenant_key, artifact="art_other")
    # Rewriting the id in the header to match another row breaks the commitment.
    forged = blob.replace(b"art_t", b"art_u", 1)
    with pytest.raises(IntegrityError):
        _open(forged, tenant_key, artifact="art_u")
    with pytest.raises(IntegrityError):
        _open(forged, tenant_key, artifact=None)


def test_wrong_key_fails_before_any_chunk(tenant_key: TenantKey, other_key: TenantKey) -> None:
    with pytest.raises(IntegrityError):
        _open(_seal(tenant_key), other_key)


def test_wrong_key_version_is_a_clear_key_error(tenant_key: TenantKey) -> None:
    blob = _seal(tenant_key)
    version_two = TenantKey("acme", "tk_acme", 2, tenant_key.material)
    with pytest.raises(KeyProviderError, match="version 1"):
        _open(blob, version_two)
    with pytest.raises(KeyProviderError, match="version 1"):
        _open(blob, TenantKeySet([version_two]))  # type: ignore[arg-type]


def test_bit_flips_in_a_checkpoint_write_no_plaintext(
    tenant_key: TenantKey, small_manifest: Manifest, tmp_path: Path
) -> None:
    """decrypt_to_directory: every flipped bit fails and leaves no file behind."""
    torch = pytest.importorskip("torch")
    from tensafe.artifacts import seal_checkpoint

    out = io.BytesIO()
    seal_checkpoint(
        tensors={"w": torch.tensor([1.0, 2.0])},
        manifest=small_manifest,
        tenant_key=tenant_key,
        artifact_id="art_t",
        out=out,
        chunk_size=SMALL_CHUNK,
    )
    blob = out.getvalue()
    assert len(blob) < 700
    target = tmp_path / "out"
    structural = _key_selecting_bytes(blob)
    for position in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            expected = (
                (ArtifactFormatError, KeyProviderError, IntegrityError)
                if position < structural
                else IntegrityError
            )
            with pytest.raises(expected):
                decrypt_to_directory(
                    io.BytesIO(bytes(tampered)),
                    target,
                    keys=tenant_key,
                    tenant_id="acme",
                    artifact_id="art_t",
                )
            assert not target.exists()
    # The untouched artifact decrypts, so the loop above tested real failures.
    decrypt_to_directory(
        io.BytesIO(blob), target, keys=tenant_key, tenant_id="acme", artifact_id="art_t"
    )
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.safetensors"]


@pytest.mark.parametrize("data", [b"", b"hello world, not an artifact", bytes(100), b"\x89TSAF"])
def test_not_an_artifact_is_a_clear_error(tenant_key: TenantKey, data: bytes) -> None:
    with pytest.raises(ArtifactFormatError, match="not a TenSafe artifact"):
        _open(data, tenant_key)


def test_unknown_format_version_is_a_clear_error(tenant_key: TenantKey) -> None:
    blob = bytearray(_seal(tenant_key))
    blob[8:10] = struct.pack(">H", 7)
    with pytest.raises(ArtifactFormatError, match="unsupported artifact format version 7"):
        _open(bytes(blob), tenant_key)


def test_oversized_header_is_a_clear_error(tenant_key: TenantKey) -> None:
    blob = bytearray(_seal(tenant_key))
    blob[10:12] = struct.pack(">H", 60_000)
    with pytest.raises(ArtifactFormatError, match="exceeds the 512-byte maximum"):
        _open(bytes(blob), tenant_key)


def test_truncated_header_is_a_clear_error(tenant_key: TenantKey) -> None:
    blob = _seal(tenant_key)
    with pytest.raises(ArtifactFormatError, match="truncated"):
        _open(blob[:40], tenant_key)


def test_header_parse_roundtrip() -> None:
    header = ArtifactHeader.new(
        key_id="tk_x", key_version=3, artifact_id="art_y", chunk_size=1 << 16
    )
    assert ArtifactHeader.parse(header.encode()) == header
    assert header.public_dict()["chunk_size"] == 1 << 16
