"""DSSE envelopes (Dead Simple Signing Envelope, v1) signed with Ed25519.

The signature covers the *pre-authentication encoding* of the payload, never the JSON
around it::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

(``LEN`` in ASCII decimal, ``SP`` one space; bytes). The envelope is::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": base64(statement bytes),
     "signatures": [{"keyid": KEYID, "sig": base64(Ed25519(PAE))}]}

A key's id is the lowercase hex SHA-256 of its raw 32-byte public key, so a verifier
holding a public key can tell which signature is meant for it (and a rotated key has a
new id).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tensafe.errors import ConfigError

#: The payload type of an in-toto statement.
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of ``payload`` (what is signed)."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Lowercase hex SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo), the form verifiers are given."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_statement(statement: Mapping[str, object], private_key: Ed25519PrivateKey) -> bytes:
    """The DSSE envelope (JSON bytes) of ``statement`` signed by ``private_key``.

    The statement is serialised once (compact, sorted keys, UTF-8) and those exact
    bytes are what is signed and carried.

    Raises:
        ConfigError: (``private_key``) not an Ed25519 private key; (``statement``) not
            JSON-serialisable (e.g. a NaN).
    """
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ConfigError("private_key", "must be an Ed25519 private key")
    try:
        body = json.dumps(
            statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ConfigError("statement", f"not JSON-serialisable: {exc}") from None
    signature = private_key.sign(pae(PAYLOAD_TYPE, body))
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [
            {
                "keyid": key_id(private_key.public_key()),
                "sig": base64.b64encode(signature).decode("ascii"),
            }
        ],
    }
    return json.dumps(envelope, indent=2).encode("utf-8") + b"\n"


__all__ = ["PAYLOAD_TYPE", "key_id", "pae", "public_key_pem", "sign_statement"]
