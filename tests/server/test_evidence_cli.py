"""``tensafe evidence verify``: offline, exit 0 verified, 1 not (with the reason), 2 bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tensafe.cli import main
from tensafe.evidence import public_key_pem, sign_statement, statement_for
from tests.tensafe.evidence.test_bundle import evidence_for


@pytest.fixture
def signed() -> tuple[bytes, bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    artifact = os.urandom(4096)
    bundle = sign_statement(statement_for(evidence_for(artifact)), key)
    return bundle, artifact, public_key_pem(key.public_key())


def test_cli_verifies_and_names_the_failure(
    tmp_path: Path, signed, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, artifact, public = signed
    (tmp_path / "b.json").write_bytes(bundle)
    (tmp_path / "a.tsf").write_bytes(artifact)
    (tmp_path / "k.pem").write_bytes(public)
    args = ["evidence", "verify", str(tmp_path / "b.json"), "--artifact", str(tmp_path / "a.tsf"),
            "--public-key", str(tmp_path / "k.pem")]  # fmt: skip
    assert main(args) == 0
    assert "verified: artifact art_1" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predicate"]["dataset"]["id"] == "ds_1"
    (tmp_path / "a.tsf").write_bytes(artifact + b"x")
    assert main(args) == 1
    assert "NOT VERIFIED: the artifact does not match" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "missing.pem")]) == 2


def test_operator_rotates_the_evidence_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["keys", "evidence-keys", "--json", *data]) == 0
    (first,) = json.loads(capsys.readouterr().out)
    assert first["version"] == 1 and first["current"]
    assert main(["keys", "rotate-evidence", *data]) == 0
    assert "rotated to version 2" in capsys.readouterr().out
    assert main(["keys", "evidence-keys", "--json", *data]) == 0
    old, new = json.loads(capsys.readouterr().out)
    assert old == {**first, "current": False}  # the old public key is still published
    assert new["current"] and new["keyid"] != old["keyid"]
    assert main(["keys", "evidence-keys", *data]) == 0
    text = capsys.readouterr().out
    assert "version 2 (current)" in text and "PRIVATE" not in text
