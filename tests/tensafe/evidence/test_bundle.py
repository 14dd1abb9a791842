"""Evidence bundles: tensafe's writer, the SDK's independent offline verifier, tamper tests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tg_tinker import evidence as sdk
from tg_tinker.errors import EvidenceError

from tensafe.errors import ConfigError
from tensafe.evidence import (
    CheckpointEvidence,
    key_id,
    pae,
    public_key_pem,
    sign_statement,
    statement_for,
)
from tensafe.privacy import compute_epsilon

HISTORY = ((1.0, 0.01, 100),)
EPSILON = compute_epsilon(history=HISTORY, delta=1e-5, accountant="prv")


def evidence_for(artifact: bytes, **change: object) -> CheckpointEvidence:
    fields: dict[str, object] = {
        "artifact_id": "art_1",
        "artifact_kind": "lora_adapter",
        "created_at": "2026-12-04T18:00:00Z",
        "content_sha256": hashlib.sha256(artifact).hexdigest(),
        "plaintext_sha256": "ab" * 32,
        "base_model": "tiny-llama",
        "dataset_id": "ds_1",
        "dataset_version": 1,
        "dataset_commitment": "cd" * 32,
        "privacy_unit": "record",
        "sampling": "server-poisson",
        "history": HISTORY,
        "max_grad_norm": 1.0,
        "dataset_size": 10_000,
        "delta": 1e-5,
        "accountant": "prv",
        "epsilon_reported": EPSILON,
        "epsilon_prv": EPSILON,
        "epsilon_lower_bound": 0.4,
        "ledger_seq": 101,
        "ledger_link": "ef" * 32,
        "code_version": "0.1.0",
        "library_versions": {"opacus": "1.6"},
        "tenant_id": "ten_1",
        "tenant_key_version": 2,
        "kek_id": "local-keyring-v1",
    }
    fields.update(change)
    return CheckpointEvidence(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def signed(key: Ed25519PrivateKey) -> tuple[bytes, bytes, bytes]:
    artifact = os.urandom(4096)
    bundle = sign_statement(statement_for(evidence_for(artifact)), key)
    return bundle, artifact, public_key_pem(key.public_key())


def test_pae_known_answer_from_the_dsse_spec() -> None:
    expected = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("http://example.com/HelloWorld", b"hello world") == expected
    assert sdk._pae("http://example.com/HelloWorld", b"hello world") == expected


def test_a_bundle_verifies_offline(signed, key) -> None:
    bundle, artifact, public = signed
    result = sdk.verify_bundle(bundle, artifact=artifact, public_key=public)
    assert result.keyid == key_id(key.public_key()) == sdk.key_id(key.public_key())
    assert result.artifact_id == "art_1" and result.plaintext_sha256 == "ab" * 32
    assert result.predicate["dp"]["steps"] == 100
    assert result.predicate["epsilon_lower_bound"] == 0.4
    assert result.predicate["keys"] == {
        "tenant_id": "ten_1",
        "tenant_key_version": 2,
        "kek_id": "local-keyring-v1",
    }
    assert result.epsilon_recomputed == pytest.approx(EPSILON, rel=0.01)
    assert "agrees" in result.epsilon_check


def test_the_envelope_is_dsse_with_an_in_toto_statement(signed) -> None:
    envelope = json.loads(signed[0])
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(signed[1]).hexdigest()
    text = signed[0].decode()
    assert "BEGIN" not in text and "PRIVATE" not in text  # ids only, never key material


def _with_payload(bundle: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    envelope = json.loads(bundle)
    statement = json.loads(base64.b64decode(envelope["payload"]))
    edit(statement)
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(envelope).encode()


def test_any_change_to_the_statement_fails(signed) -> None:
    bundle, artifact, public = signed

    def lower_epsilon(s):  # type: ignore[no-untyped-def]
        s["predicate"]["epsilon"]["reported"] = 0.1

    with pytest.raises(EvidenceError, match="altered"):
        sdk.verify_bundle(
            _with_payload(bundle, lower_epsilon), artifact=artifact, public_key=public
        )


def test_a_changed_signature_fails(signed) -> None:
    bundle, artifact, public = signed
    envelope = json.loads(bundle)
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 1
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(EvidenceError, match="altered"):
        sdk.verify_bundle(json.dumps(envelope).encode(), artifact=artifact, public_key=public)


def test_a_changed_artifact_fails(signed) -> None:
    bundle, artifact, public = signed
    changed = bytearray(artifact)
    changed[-1] ^= 1
    with pytest.raises(EvidenceError, match="does not match the bundle"):
        sdk.verify_bundle(bundle, artifact=bytes(changed), public_key=public)


def test_a_bundle_moved_to_another_artifact_fails(signed, key) -> None:
    bundle, _, public = signed
    other = os.urandom(4096)
    sign_statement(statement_for(evidence_for(other, artifact_id="art_2")), key)
    with pytest.raises(EvidenceError, match="art_1"):
        sdk.verify_bundle(bundle, artifact=other, public_key=public)


def test_a_wrong_or_rotated_key_fails(signed) -> None:
    bundle, artifact, _ = signed
    new = public_key_pem(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(EvidenceError, match="no signature by this key"):
        sdk.verify_bundle(bundle, artifact=artifact, public_key=new)


def test_a_non_ed25519_key_is_refused(signed) -> None:
    bundle, artifact, _ = signed
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(EvidenceError, match="not an Ed25519"):
        sdk.verify_bundle(bundle, artifact=artifact, public_key=pem)


@pytest.mark.parametrize(
    ("bundle", "match"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a DSSE envelope"),
        (b'{"payloadType": "text/plain", "payload": "", "signatures": []}', "payload type"),
    ],
)
def test_malformed_bundles_fail(signed, bundle: bytes, match: str) -> None:
    with pytest.raises(EvidenceError, match=match):
        sdk.verify_bundle(bundle, artifact=signed[1], public_key=signed[2])


def test_an_under_reported_epsilon_fails_the_recomputation(key) -> None:
    artifact = os.urandom(100)
    low = sign_statement(statement_for(evidence_for(artifact, epsilon_reported=EPSILON * 0.9)), key)
    public = public_key_pem(key.public_key())
    with pytest.raises(EvidenceError, match="under-reported"):
        sdk.verify_bundle(low, artifact=artifact, public_key=public)
    # the signature itself is fine: only the recomputation catches it
    assert sdk.verify_bundle(low, artifact=artifact, public_key=public, recompute_epsilon=False)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"content_sha256": "x"}, "content_sha256"),
        ({"artifact_id": ""}, "artifact_id"),
        ({"history": ((1.0, 0.0, 3),)}, "history"),
        ({"epsilon_reported": float("nan")}, "epsilon_reported"),
        ({"ledger_link": "zz"}, "ledger_link"),
    ],
)
def test_evidence_is_validated(change, field) -> None:
    with pytest.raises(ConfigError) as err:
        evidence_for(b"", **change)
    assert err.value.field == field


def test_signing_keys_live_in_the_keyring_and_rotate(tmp_path: Path) -> None:
    from tensafe.artifacts import LocalKeyring, TenantKeyring
    from tensafe.artifacts.keystore import FileTenantKeyStore
    from tensafe.evidence.keys import published_keys, rotate_signing_key, signing_key

    keyring = TenantKeyring(LocalKeyring(tmp_path / "kek"), FileTenantKeyStore(tmp_path / "t"))
    first = signing_key(keyring)
    assert signing_key(keyring).public_key() == first.public_key()  # stable
    artifact = os.urandom(64)
    old_bundle = sign_statement(statement_for(evidence_for(artifact)), first)
    new = rotate_signing_key(keyring)
    keys = published_keys(keyring)
    assert [(k.version, k.current) for k in keys] == [(1, False), (2, True)]
    assert keys[1].keyid == new.keyid != keys[0].keyid == key_id(first.public_key())
    # an old bundle still verifies with the old published key, not with the new one
    old_pem = keys[0].public_key_pem.encode()
    assert sdk.verify_bundle(old_bundle, artifact=artifact, public_key=old_pem)
    with pytest.raises(EvidenceError, match="no signature by this key"):
        sdk.verify_bundle(old_bundle, artifact=artifact, public_key=new.public_key_pem.encode())
    assert "PRIVATE" not in "".join(k.public_key_pem for k in keys)


def test_frozen_weights_hash_matches_the_bare_model(tiny_llama) -> None:
    from tensafe.engine import TrainingEngine
    from tensafe.evidence.weights import frozen_weights_sha256
    from tensafe.models import LoRAConfig
    from tensafe.privacy import DPConfig

    bare = tiny_llama().model
    for p in bare.parameters():
        p.requires_grad_(False)
    expected = frozen_weights_sha256(bare)
    engine = TrainingEngine(
        model=tiny_llama(),
        lora_config=LoRAConfig(rank=2),
        dp_config=DPConfig(noise_multiplier=1.0, dataset_size=10, sample_rate=1.0),
    )
    assert frozen_weights_sha256(engine.model) == expected  # LoRA names map back to HF's
    other = tiny_llama(seed=1).model
    for p in other.parameters():
        p.requires_grad_(False)
    assert frozen_weights_sha256(other) != expected
    for p in bare.parameters():
        p.requires_grad_(True)
    assert frozen_weights_sha256(bare) is None
