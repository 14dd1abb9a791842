"""Checkpoints through the pipelined paths: in-place decryption, pooled plaintext
buffers, the plaintext-hash thread."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from tensafe.artifacts import (  # noqa: E402
    Manifest,
    TenantKey,
    decrypt_to_directory,
    open_checkpoint,
    read_header,
    seal_checkpoint,
)
from tensafe.artifacts import checkpoint as checkpoint_module  # noqa: E402
from tensafe.artifacts.format import TAG_SIZE  # noqa: E402
from tensafe.errors import IntegrityError  # noqa: E402


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "a": torch.randn(3001, generator=gen),  # odd sizes: chunks straddle tensors
        "b": torch.randn(17, 33, generator=gen).half(),
        "c": torch.arange(12345, dtype=torch.int8),
        "d": torch.randn(2048, generator=gen).double(),
    }


def _manifest() -> Manifest:
    # A long base model name makes the manifest span several small chunks.
    return Manifest(kind="full_weights", base_model="m" * 400, step=2, library_versions={})


def _seal(tensors: dict[str, torch.Tensor], key: TenantKey, chunk_size: int) -> bytes:
    out = io.BytesIO()
    seal_checkpoint(
        tensors=tensors,
        manifest=_manifest(),
        tenant_key=key,
        artifact_id="art_p",
        out=out,
        chunk_size=chunk_size,
    )
    return out.getvalue()


@pytest.mark.parametrize("chunk_size", [64, 1024, 4096, 1 << 16])
def test_open_checkpoint_in_place_round_trip(tenant_key: TenantKey, chunk_size: int) -> None:
    tensors = _tensors()
    blob = _seal(tensors, tenant_key, chunk_size)
    opened = open_checkpoint(
        io.BytesIO(blob),
        keys=tenant_key,
        tenant_id="acme",
        artifact_id="art_p",
        expected_content_hash=hashlib.sha256(blob).hexdigest(),
    )
    assert set(opened.tensors) == set(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(opened.tensors[name], tensor), name
    assert opened.manifest.base_model == "m" * 400


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_open_checkpoint_rejects_a_flipped_bit_in_any_chunk(
    tenant_key: TenantKey, where: str
) -> None:
    blob = bytearray(_seal(_tensors(), tenant_key, 1024))
    start = read_header(io.BytesIO(bytes(blob))).length
    frames = (len(blob) - start) // (1024 + TAG_SIZE)
    index = {"first": 0, "middle": frames // 2, "last": frames}[where]
    blob[start + index * (1024 + TAG_SIZE) + 5] ^= 0x40
    with pytest.raises(IntegrityError):
        open_checkpoint(
            io.BytesIO(bytes(blob)), keys=tenant_key, tenant_id="acme", artifact_id=None
        )


def test_decrypt_to_directory_through_pooled_buffers(tenant_key: TenantKey, tmp_path: Path) -> None:
    tensors = _tensors()
    blob = _seal(tensors, tenant_key, 1024)  # ~70 chunks through a handful of buffers
    result = decrypt_to_directory(
        io.BytesIO(blob),
        tmp_path / "out",
        keys=tenant_key,
        tenant_id="acme",
        artifact_id="art_p",
        expected_content_hash=hashlib.sha256(blob).hexdigest(),
    )
    loaded = load_file(result.directory / "model.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name


def test_plaintext_hash_thread_failure_propagates(
    tenant_key: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Exploding:
        def update(self, data: bytes | memoryview) -> None:
            raise RuntimeError("plaintext hash failed")

        def hexdigest(self) -> str:
            raise AssertionError("must not be reached")

    monkeypatch.setattr(checkpoint_module, "hashlib", SimpleNamespace(sha256=Exploding))
    out = io.BytesIO()
    with pytest.raises(RuntimeError, match="plaintext hash failed"):
        seal_checkpoint(
            tensors={"w": torch.zeros(1 << 16)},
            manifest=_manifest(),
            tenant_key=tenant_key,
            artifact_id="art_p",
            out=out,
            chunk_size=1024,
        )
    monkeypatch.undo()
    with pytest.raises(IntegrityError):  # aborted: the partial output never opens
        open_checkpoint(
            io.BytesIO(out.getvalue()), keys=tenant_key, tenant_id="acme", artifact_id="art_p"
        )
