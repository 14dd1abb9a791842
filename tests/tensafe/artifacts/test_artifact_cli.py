"""``tensafe artifact decrypt | verify | inspect``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tensafe.artifacts import Manifest, TenantKey, write_key_file
from tensafe.cli import main

torch = pytest.importorskip("torch")


@pytest.fixture
def artifact(tmp_path: Path, tenant_key: TenantKey, small_manifest: Manifest) -> Path:
    from tensafe.artifacts import seal_checkpoint

    path = tmp_path / "a.tsa"
    with path.open("wb") as out:
        seal_checkpoint(
            tensors={"w": torch.arange(6.0).reshape(2, 3)},
            manifest=small_manifest,
            tenant_key=tenant_key,
            artifact_id="art_cli",
            out=out,
            chunk_size=64,
        )
    return path


@pytest.fixture
def key_file(tmp_path: Path, tenant_key: TenantKey) -> Path:
    return write_key_file(tmp_path / "acme.key.json", tenant_key)


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    return json.loads(capsys.readouterr().out)


def test_decrypt_writes_safetensors_and_manifest(
    artifact: Path, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    status = main(
        [
            "artifact",
            "decrypt",
            str(artifact),
            "--key-file",
            str(key_file),
            "-o",
            str(out),
            "--content-hash",
            digest,
        ]
    )
    assert status == 0
    summary = _json_out(capsys)
    assert summary["files"] == ["model.safetensors", "manifest.json"]
    assert summary["content_hash"] == digest and summary["artifact_id"] == "art_cli"
    from safetensors.torch import load_file

    assert torch.equal(load_file(out / "model.safetensors")["w"], torch.arange(6.0).reshape(2, 3))


def test_decrypt_with_wrong_key_fails_and_writes_nothing(
    artifact: Path, other_key: TenantKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = write_key_file(tmp_path / "wrong.json", other_key)
    out = tmp_path / "out"
    assert (
        main(["artifact", "decrypt", str(artifact), "--key-file", str(wrong), "-o", str(out)]) == 1
    )
    assert "integrity check failed" in capsys.readouterr().err
    assert not out.exists()


def test_decrypt_with_wrong_artifact_id_fails(
    artifact: Path, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "artifact",
        "decrypt",
        str(artifact),
        "--key-file",
        str(key_file),
        "-o",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--artifact-id", "art_other"]) == 1
    assert not (tmp_path / "o").exists()


def test_verify(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert main(["artifact", "verify", str(artifact), "--content-hash", digest]) == 0
    report = _json_out(capsys)
    assert report["ok"] is True and report["content_hash"] == digest
    assert main(["artifact", "verify", str(artifact), "--content-hash", "0" * 64]) == 1
    assert "integrity check failed" in capsys.readouterr().err
    # flip a bit of the last byte: always a change (writing 0x00 was none when the last
    # ciphertext byte happened to be 0x00, one run in 256)
    blob = artifact.read_bytes()
    artifact.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0x01]))
    assert main(["artifact", "verify", str(artifact), "--content-hash", digest]) == 1


def test_inspect_prints_the_public_header(
    artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["artifact", "inspect", str(artifact)]) == 0
    info = _json_out(capsys)
    assert (
        info["artifact_id"] == "art_cli"
        and info["key_id"] == "tk_acme"
        and info["key_version"] == 1
    )
    assert info["chunk_size"] == 64 and info["format_version"] == 1
    assert info["framing"] == "consistent" and info["size_bytes"] == artifact.stat().st_size


def test_bad_input_gives_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not an artifact")
    assert main(["artifact", "inspect", str(junk)]) == 2
    assert "not a TenSafe artifact" in capsys.readouterr().err
    assert main(["artifact", "verify", str(tmp_path / "missing")]) == 2
    assert "No such file" in capsys.readouterr().err
