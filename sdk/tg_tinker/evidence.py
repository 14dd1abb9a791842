"""Verify a TenSafe evidence bundle offline: no server, no tenant key.

A bundle is an in-toto Statement in a DSSE envelope signed with Ed25519
(``docs/audit.md``, "Evidence bundles"). This verifier is written from that
description alone and shares no code with the server's writer. It needs only the
standard library and ``cryptography``; with Google ``dp-accounting`` installed it also
recomputes ε from the predicate's DP parameters.

What it checks, in order — the first failure raises :class:`EvidenceError` naming it:

1. the envelope's structure and payload type (``application/vnd.in-toto+json``);
2. a signature by the given public key (its key id: SHA-256 of the raw key) over
   DSSE's pre-authentication encoding of the payload;
3. the statement's type and predicate type;
4. that the artifact's SHA-256 is the bundle's subject (a bundle moved to another
   artifact fails here);
5. with dp-accounting: ε of the predicate's ``(σ, q, steps)`` history at its δ by PLD;
   a reported ε more than 1 % below it fails (under-reported privacy loss).

Example::

    from tg_tinker.evidence import verify_bundle

    result = verify_bundle("final.evidence.json", artifact="final.tsf",
                           public_key="tensafe-evidence.pem")
    print(result.predicate["epsilon"], result.epsilon_check)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tg_tinker.errors import EvidenceError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://tensafe.dev/evidence/checkpoint/v1"

#: A reported ε below the recomputed one by more than this fraction fails.
EPSILON_TOLERANCE = 0.01

Source = bytes | str | os.PathLike[str]


@dataclass(frozen=True)
class VerifiedEvidence:
    """A bundle that verified.

    Attributes:
        keyid: the signing key's id.
        artifact_id: the artifact the bundle is about.
        content_sha256: the artifact's SHA-256 (it matched).
        plaintext_sha256: its plaintext's SHA-256 (check after decrypting).
        predicate: everything the bundle records (see ``docs/audit.md``).
        epsilon_recomputed: ε recomputed with dp-accounting PLD, or ``None`` (not
            installed, or nothing to recompute).
        epsilon_check: the recomputation's outcome in words.
    """

    keyid: str
    artifact_id: str
    content_sha256: str
    plaintext_sha256: str | None
    predicate: Mapping[str, Any]
    epsilon_recomputed: float | None
    epsilon_check: str


def load_public_key(source: Source | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes, a PEM file, or the key itself.

    Raises:
        EvidenceError: not an Ed25519 public key in PEM.
    """
    if isinstance(source, Ed25519PublicKey):
        return source
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"the public key is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError("the public key is not an Ed25519 key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """Lowercase hex SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def verify_bundle(
    bundle: Source,
    *,
    artifact: Source | BinaryIO,
    public_key: Source | Ed25519PublicKey,
    recompute_epsilon: bool = True,
) -> VerifiedEvidence:
    """Verify ``bundle`` for ``artifact`` under ``public_key`` (see the module docstring).

    Args:
        bundle: the envelope's JSON bytes, or a path to it.
        artifact: the encrypted artifact's bytes, a path, or an open binary file.
        public_key: the server's evidence public key (PEM bytes or file), from its
            well-known route or your records; an old key verifies old bundles.
        recompute_epsilon: recompute ε with dp-accounting when it is installed.

    Raises:
        EvidenceError: naming the first check that failed.
    """
    key = load_public_key(public_key)
    envelope = _envelope(bundle)
    payload = _payload(envelope)
    keyid = key_id(key)
    _check_signature(envelope, payload, key, keyid)
    statement = _statement(payload)
    subjects = {s.get("name"): s.get("digest", {}).get("sha256") for s in statement["subject"]}
    predicate = statement["predicate"]
    artifact_id = predicate.get("artifact", {}).get("id")
    expected = subjects.get(artifact_id)
    if not isinstance(expected, str):
        raise EvidenceError("the bundle names no subject digest for its artifact")
    actual = _sha256(artifact)
    if actual != expected:
        raise EvidenceError(
            f"the artifact does not match the bundle: its SHA-256 is {actual}, the bundle is "
            f"for artifact {artifact_id} with SHA-256 {expected} (another or altered artifact)"
        )
    recomputed, check = _check_epsilon(predicate) if recompute_epsilon else (None, "not run")
    return VerifiedEvidence(
        keyid=keyid,
        artifact_id=artifact_id,
        content_sha256=actual,
        plaintext_sha256=subjects.get(f"{artifact_id}#plaintext"),
        predicate=predicate,
        epsilon_recomputed=recomputed,
        epsilon_check=check,
    )


def _envelope(bundle: Source) -> Mapping[str, Any]:
    data = bundle if isinstance(bundle, bytes) else Path(bundle).read_bytes()
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EvidenceError("the bundle is not JSON") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signatures"), list):
        raise EvidenceError("the bundle is not a DSSE envelope")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise EvidenceError(f"the payload type is {envelope.get('payloadType')!r}, not in-toto")
    return envelope


def _payload(envelope: Mapping[str, Any]) -> bytes:
    try:
        return base64.b64decode(envelope["payload"], validate=True)
    except (KeyError, TypeError, binascii.Error):
        raise EvidenceError("the envelope's payload is not base64") from None


def _pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode("utf-8")
    return (
        b"DSSEv1 "
        + str(len(kind)).encode()
        + b" "
        + kind
        + b" "
        + (str(len(payload)).encode() + b" " + payload)
    )


def _check_signature(
    envelope: Mapping[str, Any], payload: bytes, key: Ed25519PublicKey, keyid: str
) -> None:
    mine = [s for s in envelope["signatures"] if isinstance(s, dict) and s.get("keyid") == keyid]
    if not mine:
        others = ", ".join(str(s.get("keyid", "?"))[:16] for s in envelope["signatures"]
                           if isinstance(s, dict))  # fmt: skip
        raise EvidenceError(
            f"the bundle has no signature by this key (key id {keyid[:16]}…); it was signed "
            f"by {others or 'nobody'}: wrong or rotated key"
        )
    message = _pae(PAYLOAD_TYPE, payload)
    for signature in mine:
        try:
            key.verify(base64.b64decode(signature.get("sig", ""), validate=True), message)
            return
        except (InvalidSignature, binascii.Error, TypeError, ValueError):
            continue
    raise EvidenceError("the signature does not match the bundle's contents: it was altered")


def _statement(payload: bytes) -> Mapping[str, Any]:
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EvidenceError("the signed payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise EvidenceError("the signed payload is not an in-toto Statement v1")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise EvidenceError(f"unknown predicate type {statement.get('predicateType')!r}")
    if not isinstance(statement.get("subject"), list) or not isinstance(
        statement.get("predicate"), dict
    ):
        raise EvidenceError("the statement has no subject list or no predicate")
    return statement


def _sha256(artifact: Source | BinaryIO) -> str:
    digest = hashlib.sha256()
    if isinstance(artifact, bytes):
        digest.update(artifact)
        return digest.hexdigest()
    if hasattr(artifact, "read"):
        source: BinaryIO = artifact  # type: ignore[assignment]
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
        return digest.hexdigest()
    with open(artifact, "rb") as fh:  # type: ignore[arg-type]
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_epsilon(predicate: Mapping[str, Any]) -> tuple[float | None, str]:
    """ε of the predicate's history by dp-accounting PLD, against the reported ε."""
    dp = predicate.get("dp") or {}
    reported = (predicate.get("epsilon") or {}).get("reported")
    history, delta = dp.get("history") or [], dp.get("delta")
    if reported is None or not history or delta is None:
        return None, "nothing to recompute (no DP history, δ or finite ε in the bundle)"
    try:
        import dp_accounting
    except ModuleNotFoundError:
        return None, "skipped: install dp-accounting to recompute ε"
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for sigma, q, steps in history:
        if steps and q > 0:
            event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
            accountant.compose(event, int(steps))
    recomputed = float(accountant.get_epsilon(delta))
    if math.isfinite(recomputed) and reported < recomputed * (1 - EPSILON_TOLERANCE):
        raise EvidenceError(
            f"the bundle reports ε = {reported:.6g}, but recomputing it from its own DP "
            f"parameters gives {recomputed:.6g} (Google dp-accounting PLD): under-reported"
        )
    if reported > recomputed * (1 + EPSILON_TOLERANCE):
        return (
            recomputed,
            f"reported ε {reported:.6g} is above the recomputed {recomputed:.6g} (safe side)",
        )
    return recomputed, f"reported ε {reported:.6g} agrees with the recomputed {recomputed:.6g}"


__all__ = [
    "EPSILON_TOLERANCE",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "EvidenceError",
    "VerifiedEvidence",
    "key_id",
    "load_public_key",
    "verify_bundle",
]
