"""The server's evidence signing keys, held by the key provider and rotatable.

Each key version is an Ed25519 key whose 32-byte seed is derived (HKDF-SHA256) from a
256-bit secret kept by the tenant keyring under the reserved owner ``__evidence__`` —
wrapped by the KEK like every tenant key, never stored in clear. Rotating it
(:func:`rotate_signing_key`) adds a version and signs new bundles with it; older
versions stay published (:func:`published_keys`), so bundles signed before a rotation
keep verifying with the key that signed them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tensafe.artifacts import TenantKeyring
from tensafe.evidence.dsse import key_id, public_key_pem

#: The reserved keyring owner of the evidence signing secrets.
EVIDENCE_KEY_OWNER = "__evidence__"
_HKDF_INFO = b"tensafe evidence ed25519 v1"


@dataclass(frozen=True)
class PublishedKey:
    """One public evidence key, as the well-known route publishes it.

    Attributes:
        version: the key version (1, 2, … in rotation order).
        keyid: lowercase hex SHA-256 of the raw public key (bundles name it).
        public_key_pem: the public key, PEM (SubjectPublicKeyInfo).
        current: whether new bundles are signed with it.
    """

    version: int
    keyid: str
    public_key_pem: str
    current: bool


def signing_key(keyring: TenantKeyring, *, version: int | None = None) -> Ed25519PrivateKey:
    """The Ed25519 signing key of ``version`` (default: the current one, created on first
    use).

    Raises:
        KeyProviderError: unknown version, or the keyring cannot unwrap it.
    """
    if version is None:
        version = keyring.current_key(EVIDENCE_KEY_OWNER).version
    material = keyring.export_tenant_key(EVIDENCE_KEY_OWNER, version=version).material
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(material)
    return Ed25519PrivateKey.from_private_bytes(seed)


def rotate_signing_key(keyring: TenantKeyring) -> PublishedKey:
    """Make a new signing key version current; returns it as published."""
    version = keyring.rotate_tenant_key(EVIDENCE_KEY_OWNER).version
    public = signing_key(keyring, version=version).public_key()
    return PublishedKey(
        version=version,
        keyid=key_id(public),
        public_key_pem=public_key_pem(public).decode("ascii"),
        current=True,
    )


def published_keys(keyring: TenantKeyring) -> list[PublishedKey]:
    """Every signing key version's public key, oldest first (creates the first)."""
    current = keyring.current_key(EVIDENCE_KEY_OWNER).version
    out = []
    for version in keyring.key_versions(EVIDENCE_KEY_OWNER):
        public = signing_key(keyring, version=version).public_key()
        out.append(
            PublishedKey(
                version=version,
                keyid=key_id(public),
                public_key_pem=public_key_pem(public).decode("ascii"),
                current=version == current,
            )
        )
    return out


__all__ = [
    "EVIDENCE_KEY_OWNER",
    "PublishedKey",
    "published_keys",
    "rotate_signing_key",
    "signing_key",
]
