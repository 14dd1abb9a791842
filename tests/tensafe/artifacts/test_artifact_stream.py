"""Round trips and framing of the streaming chunked AEAD core."""

from __future__ import annotations

import hashlib
import io
import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensafe.artifacts import (
    DEFAULT_CHUNK_SIZE,
    OpeningReader,
    SealingWriter,
    TenantKey,
    open_bytes,
    read_header,
    seal_bytes,
    verify_ciphertext,
)
from tensafe.artifacts.format import TAG_SIZE, sealed_size
from tensafe.errors import ConfigError, IntegrityError

from .conftest import SMALL_CHUNK


def _roundtrip(data: bytes, key: TenantKey, chunk_size: int) -> bytes:
    blob = seal_bytes(data, tenant_key=key, artifact_id="art_1", chunk_size=chunk_size)
    header = read_header(io.BytesIO(blob))
    assert len(blob) == sealed_size(len(data), header_length=header.length, chunk_size=chunk_size)
    return open_bytes(blob, keys=key, tenant_id=key.tenant_id, artifact_id="art_1")


@pytest.mark.parametrize("size", [0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 1000])
def test_roundtrip_small_chunks(tenant_key: TenantKey, size: int) -> None:
    data = os.urandom(size)
    assert _roundtrip(data, tenant_key, SMALL_CHUNK) == data


@pytest.mark.parametrize(
    "size",
    [0, 1, DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1, 5 * (1 << 20) + 3],
)
def test_roundtrip_default_chunks(tenant_key: TenantKey, size: int) -> None:
    data = os.urandom(size)
    assert _roundtrip(data, tenant_key, DEFAULT_CHUNK_SIZE) == data


def test_final_chunk_is_short_and_may_be_empty(tenant_key: TenantKey) -> None:
    # A payload that fills whole chunks ends with an empty final chunk (tag only).
    blob = seal_bytes(bytes(2 * SMALL_CHUNK), tenant_key=tenant_key, artifact_id="a", chunk_size=64)
    header = read_header(io.BytesIO(blob))
    body = len(blob) - header.length
    assert body == 2 * (SMALL_CHUNK + TAG_SIZE) + TAG_SIZE
    report = verify_ciphertext(io.BytesIO(blob))
    assert (report.chunk_count, report.payload_size) == (3, 2 * SMALL_CHUNK)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=1500),
    log2=st.integers(min_value=6, max_value=10),
    cuts=st.lists(st.integers(min_value=0, max_value=1500), max_size=8),
)
def test_roundtrip_property_any_write_pattern(
    tenant_key: TenantKey, data: bytes, log2: int, cuts: list[int]
) -> None:
    """However the plaintext is split into write() calls, the artifact opens to it."""
    out = io.BytesIO()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    with SealingWriter(
        out, tenant_key=tenant_key, artifact_id="art_p", chunk_size=1 << log2, background=False
    ) as writer:
        for start, end in itertools.pairwise(bounds):
            writer.write(data[start:end])
    blob = out.getvalue()
    assert writer.result.content_hash == hashlib.sha256(blob).hexdigest()
    assert writer.result.size_bytes == len(blob)
    assert open_bytes(blob, keys=tenant_key, tenant_id="acme", artifact_id="art_p") == data


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(min_size=1, max_size=600), where=st.integers(min_value=0), bit=st.integers(0, 7)
)
def test_property_any_single_bit_flip_in_body_is_rejected(
    tenant_key: TenantKey, data: bytes, where: int, bit: int
) -> None:
    blob = bytearray(seal_bytes(data, tenant_key=tenant_key, artifact_id="a", chunk_size=64))
    start = read_header(io.BytesIO(bytes(blob))).length
    position = start + where % (len(blob) - start)
    blob[position] ^= 1 << bit
    with pytest.raises(IntegrityError):
        open_bytes(bytes(blob), keys=tenant_key, tenant_id="acme", artifact_id="a")


def test_background_and_inline_writers_agree_on_structure(tenant_key: TenantKey) -> None:
    data = os.urandom(300_000)
    for background in (True, False):
        out = io.BytesIO()
        with SealingWriter(
            out, tenant_key=tenant_key, artifact_id="a", chunk_size=1 << 16, background=background
        ) as writer:
            writer.write(data)
        assert writer.result.chunk_count == 300_000 // (1 << 16) + 1
        assert (
            open_bytes(out.getvalue(), keys=tenant_key, tenant_id="acme", artifact_id="a") == data
        )


def test_salt_is_fresh_per_artifact(tenant_key: TenantKey) -> None:
    one = seal_bytes(b"same", tenant_key=tenant_key, artifact_id="a")
    two = seal_bytes(b"same", tenant_key=tenant_key, artifact_id="a")
    assert one != two
    assert read_header(io.BytesIO(one)).salt != read_header(io.BytesIO(two)).salt


def test_exception_inside_writer_leaves_an_artifact_that_never_opens(tenant_key: TenantKey) -> None:
    out = io.BytesIO()
    with (
        pytest.raises(RuntimeError),
        SealingWriter(out, tenant_key=tenant_key, artifact_id="a", chunk_size=64) as writer,
    ):
        writer.write(b"x" * 200)
        raise RuntimeError("crash mid-save")
    with pytest.raises(IntegrityError):
        open_bytes(out.getvalue(), keys=tenant_key, tenant_id="acme", artifact_id="a")
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_reader_yields_chunk_by_chunk_and_marks_completion(tenant_key: TenantKey) -> None:
    blob = seal_bytes(b"z" * 150, tenant_key=tenant_key, artifact_id="a", chunk_size=64)
    reader = OpeningReader(io.BytesIO(blob), keys=tenant_key, tenant_id="acme", artifact_id=None)
    sizes = []
    for chunk in reader.chunks():
        assert not reader.complete or len(chunk) < 64
        sizes.append(len(chunk))
    assert sizes == [64, 64, 22] and reader.complete and reader.chunk_count == 3


def test_verify_ciphertext_checks_hash_and_framing(tenant_key: TenantKey) -> None:
    blob = seal_bytes(b"q" * 130, tenant_key=tenant_key, artifact_id="a", chunk_size=64)
    digest = hashlib.sha256(blob).hexdigest()
    report = verify_ciphertext(io.BytesIO(blob), expected_content_hash=digest.upper())
    assert (report.content_hash, report.size_bytes, report.chunk_count) == (digest, len(blob), 3)
    with pytest.raises(IntegrityError):
        verify_ciphertext(io.BytesIO(blob), expected_content_hash="0" * 64)
    # Dropping the final chunk leaves a body ending on a full chunk: detectable without a key.
    with pytest.raises(IntegrityError):
        verify_ciphertext(io.BytesIO(blob[: -(130 - 128 + TAG_SIZE)]))


@pytest.mark.parametrize("chunk_size", [0, 32, 100, 1 << 21])
def test_invalid_chunk_sizes_are_refused(tenant_key: TenantKey, chunk_size: int) -> None:
    with pytest.raises(ConfigError) as info:
        seal_bytes(b"", tenant_key=tenant_key, artifact_id="a", chunk_size=chunk_size)
    assert info.value.field == "chunk_size"


@pytest.mark.parametrize("artifact_id", ["", "has space", "a/b", "x" * 129])
def test_invalid_artifact_ids_are_refused(tenant_key: TenantKey, artifact_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        seal_bytes(b"", tenant_key=tenant_key, artifact_id=artifact_id)
    assert info.value.field == "artifact_id"
