"""Known-answer vector, and an independent reader written only from docs/artifact-format.md."""

from __future__ import annotations

import hashlib
import hmac
import io
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tensafe.artifacts import TenantKey, open_bytes, read_header, seal_bytes, verify_ciphertext

KAT_KEY = TenantKey("tenant-kat", "tk_kat", 3, bytes(range(32)))
KAT_PAYLOAD = b"TenSafe artifact format v1 known-answer vector." * 3
KAT_ARTIFACT = bytes.fromhex(
    "8954534146450d0a000100610606070000000003746b5f6b61746172745f6b6174237e7e0ddec4a1"
    "008860027e97b1b45b0cf65d8cd675ecfff8f831482b89a05e8e208e50706c43f7170a4838170041"
    "40352041e33cd9f7d99a0c3a4da629942be299427846cefc8e91adf4e5fad8c390575f100567b5a1"
    "5029d2ffd1e3dbc41fa6b44285647dd6238bb38b0a38defe2f8893c5a3182513b45a785ba85a5231"
    "62f44e3ff48c39c6d496fa865753f4fb46d398977b41f6211b6cd72530ac534e191587d4392d9282"
    "2e87d41edb5c90fe9a8d9413a8aa533883a04d12854874134c61e6dcd9cb5eba2f89a9055937e014"
    "8a39f2324ba1c9ec4d78207fc60e5dcbb983c85ab371e11d55fdcdab45f6102271ee6aa809482c3c"
    "e58071c4cf0a"
)


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 from hmac alone, independent of the implementation under test."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _spec_reader(blob: bytes, key: bytes, tenant_id: str) -> tuple[dict[str, object], bytes]:
    """A reader written from the document: parse, derive, check commitment, open chunks."""
    magic, version, header_len, log2, key_len, art_len, reserved, key_version = struct.unpack(
        ">8sHHBBBBI", blob[:20]
    )
    assert magic == b"\x89TSAFE\r\n" and version == 1 and reserved == 0
    assert header_len == 20 + key_len + art_len + 64
    key_id = blob[20 : 20 + key_len].decode()
    artifact_id = blob[20 + key_len : 20 + key_len + art_len].decode()
    salt = blob[header_len - 64 : header_len - 32]
    commitment = blob[header_len - 32 : header_len]
    tenant = tenant_id.encode()
    context = hashlib.sha256(
        struct.pack(">H", len(tenant)) + tenant + blob[: header_len - 32]
    ).digest()

    def derive(purpose: bytes, n: int) -> bytes:
        return _hkdf_sha256(key, salt, b"tensafe-artifact-v1\x00" + purpose + b"\x00" + context, n)

    assert hmac.compare_digest(derive(b"commitment", 32), commitment)
    aead = AESGCM(derive(b"payload-key", 32))
    base = int.from_bytes(derive(b"base-nonce", 12), "big")
    frame = (1 << log2) + 16
    body = blob[header_len:]
    plaintext, index, offset = b"", 0, 0
    while True:
        chunk = body[offset : offset + frame]
        final = len(chunk) < frame
        nonce = (base ^ index).to_bytes(12, "big")
        plaintext += aead.decrypt(nonce, chunk, b"\x01" if final else b"\x00")
        offset += len(chunk)
        index += 1
        if final:
            assert offset == len(body)
            break
    header = {
        "key_id": key_id,
        "key_version": key_version,
        "artifact_id": artifact_id,
        "chunk_size": 1 << log2,
    }
    return header, plaintext


def test_known_answer_vector_opens_to_its_payload() -> None:
    assert (
        open_bytes(KAT_ARTIFACT, keys=KAT_KEY, tenant_id="tenant-kat", artifact_id="art_kat")
        == KAT_PAYLOAD
    )
    header = read_header(io.BytesIO(KAT_ARTIFACT))
    assert (header.key_id, header.key_version, header.artifact_id, header.chunk_size) == (
        "tk_kat",
        3,
        "art_kat",
        64,
    )
    report = verify_ciphertext(io.BytesIO(KAT_ARTIFACT))
    assert (report.chunk_count, report.payload_size) == (3, len(KAT_PAYLOAD))
    assert report.content_hash == hashlib.sha256(KAT_ARTIFACT).hexdigest()


def test_independent_reader_opens_the_known_answer_vector() -> None:
    header, plaintext = _spec_reader(KAT_ARTIFACT, KAT_KEY.material, "tenant-kat")
    assert plaintext == KAT_PAYLOAD
    assert header == {
        "key_id": "tk_kat",
        "key_version": 3,
        "artifact_id": "art_kat",
        "chunk_size": 64,
    }


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 200, 5000])
def test_independent_reader_agrees_with_fresh_artifacts(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    blob = seal_bytes(payload, tenant_key=KAT_KEY, artifact_id="art_x", chunk_size=64)
    assert _spec_reader(blob, KAT_KEY.material, "tenant-kat")[1] == payload


def test_independent_reader_rejects_another_tenant() -> None:
    with pytest.raises(AssertionError):
        _spec_reader(KAT_ARTIFACT, KAT_KEY.material, "tenant-other")
