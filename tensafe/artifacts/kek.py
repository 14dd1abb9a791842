"""Key-encryption keys (KEKs): the provider interface and the environment provider.

A :class:`KeyProvider` wraps and unwraps tenant keys with a versioned KEK that it
never hands out. The interface is shaped after HashiCorp Vault transit and cloud
KMS so either can stand behind it:

==================  ================================  ===============================
this interface      Vault transit                     AWS / GCP KMS
==================  ================================  ===============================
``wrap``            ``POST transit/encrypt/<key>``    ``Encrypt`` / ``encrypt``
``unwrap``          ``POST transit/decrypt/<key>``    ``Decrypt`` / ``decrypt``
``rewrap``          ``POST transit/rewrap/<key>``     ``ReEncrypt`` / decrypt+encrypt
``rotate``          ``POST transit/keys/<key>/rotate``  ``RotateKey`` / new key version
``context``         ``context`` (derived keys)        encryption context / AAD
``kek_version``     ``vault:v<N>:`` prefix            key version in the ciphertext
==================  ================================  ===============================

Providers never log key material; reprs redact it.
"""

from __future__ import annotations

import base64
import binascii
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tensafe.errors import KeyProviderError

KEK_SIZE = 32
_NONCE = 12


@dataclass(frozen=True)
class WrappedKey:
    """A tenant key encrypted under one KEK version; opaque to everyone but its provider."""

    kek_id: str
    kek_version: int
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(kek_id={self.kek_id!r}, kek_version={self.kek_version}, ...)"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "kek_id": self.kek_id,
            "kek_version": self.kek_version,
            "ciphertext": base64.b64encode(self.ciphertext).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> WrappedKey:
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyProviderError: if the record is malformed.
        """
        try:
            kek_id, version = data["kek_id"], data["kek_version"]
            ciphertext = base64.b64decode(str(data["ciphertext"]), validate=True)
        except (KeyError, binascii.Error, ValueError):
            raise KeyProviderError("malformed wrapped key record") from None
        if not isinstance(kek_id, str) or not isinstance(version, int):
            raise KeyProviderError("malformed wrapped key record")
        return cls(kek_id, version, ciphertext)


class KeyProvider(ABC):
    """Wraps tenant keys under a versioned KEK it keeps to itself.

    ``context`` is bound to the wrapped key (as AAD): unwrapping with a different
    context fails, so a wrapped key cannot be moved to another tenant or version.
    """

    @property
    @abstractmethod
    def kek_id(self) -> str:
        """Stable identifier of this KEK (keyring id, variable name, Vault key name)."""

    @abstractmethod
    def current_version(self) -> int:
        """The KEK version :meth:`wrap` uses."""

    @abstractmethod
    def wrap(self, key: bytes, *, context: bytes) -> WrappedKey:
        """Encrypt ``key`` under the current KEK version.

        Raises:
            KeyProviderError: if the KEK is unavailable.
        """

    @abstractmethod
    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        """Decrypt a wrapped key.

        Raises:
            KeyProviderError: unknown KEK or version, or authentication failed.
        """

    def rewrap(self, wrapped: WrappedKey, *, context: bytes) -> WrappedKey:
        """Re-encrypt under the current KEK version (Vault: ``transit/rewrap``)."""
        return self.wrap(self.unwrap(wrapped, context=context), context=context)

    def rotate(self) -> int:
        """Create a new KEK version, make it current and return it.

        Raises:
            KeyProviderError: if this provider cannot rotate by itself.
        """
        raise KeyProviderError(f"{type(self).__name__} cannot rotate its KEK by itself")


def aesgcm_wrap(kek: bytes, key: bytes, *, context: bytes) -> bytes:
    """AES-256-GCM wrap: ``nonce(12) || ciphertext || tag``."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(kek).encrypt(nonce, key, context)


def aesgcm_unwrap(kek: bytes, blob: bytes, *, context: bytes) -> bytes:
    """Inverse of :func:`aesgcm_wrap`.

    Raises:
        KeyProviderError: if authentication fails (wrong KEK or context).
    """
    try:
        return AESGCM(kek).decrypt(blob[:_NONCE], blob[_NONCE:], context)
    except (InvalidTag, ValueError):
        raise KeyProviderError("wrapped key failed to authenticate under its KEK") from None


def decode_master_key(value: str, *, source: str) -> bytes:
    """Decode a base64 256-bit master key; the error never echoes the value.

    Raises:
        KeyProviderError: if it is not base64 of exactly 32 bytes.
    """
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyProviderError(f"{source} is not valid base64") from None
    if len(key) != KEK_SIZE:
        raise KeyProviderError(f"{source} must decode to {KEK_SIZE} bytes, not {len(key)}")
    return key


class EnvKeyProvider(KeyProvider):
    """A KEK taken from an environment variable holding a base64 256-bit key.

    Rotation is done outside the process: put the new key in a new variable,
    construct ``EnvKeyProvider("NEW", version=2, previous={1: "OLD"})`` and call
    :meth:`tensafe.artifacts.tenant_keyring.TenantKeyring.rewrap_all`; then drop ``OLD``.

    Example:
        >>> env = {"TENSAFE_MASTER_KEY": base64.b64encode(bytes(32)).decode()}
        >>> provider = EnvKeyProvider(environ=env)
        >>> w = provider.wrap(b"k" * 32, context=b"ctx")
        >>> provider.unwrap(w, context=b"ctx") == b"k" * 32
        True

    Raises (constructor):
        KeyProviderError: if a variable is missing or not a base64 32-byte key.
    """

    def __init__(
        self,
        variable: str = "TENSAFE_MASTER_KEY",
        *,
        version: int = 1,
        previous: Mapping[int, str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._variable = variable
        self._version = version
        self._keys: dict[int, bytes] = {}
        for ver, name in {**(previous or {}), version: variable}.items():
            if name not in env:
                raise KeyProviderError(
                    f"environment variable {name} (KEK version {ver}) is not set"
                )
            self._keys[ver] = decode_master_key(env[name], source=f"environment variable {name}")

    def __repr__(self) -> str:
        return (
            f"EnvKeyProvider(variable={self._variable!r}, version={self._version}, key=<redacted>)"
        )

    @property
    def kek_id(self) -> str:
        return "env"

    def current_version(self) -> int:
        return self._version

    def wrap(self, key: bytes, *, context: bytes) -> WrappedKey:
        blob = aesgcm_wrap(self._keys[self._version], key, context=context)
        return WrappedKey(self.kek_id, self._version, blob)

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        if wrapped.kek_id != self.kek_id or wrapped.kek_version not in self._keys:
            raise KeyProviderError(
                f"KEK {wrapped.kek_id!r} version {wrapped.kek_version} is not configured"
            )
        return aesgcm_unwrap(self._keys[wrapped.kek_version], wrapped.ciphertext, context=context)


__all__ = [
    "KEK_SIZE",
    "EnvKeyProvider",
    "KeyProvider",
    "WrappedKey",
    "aesgcm_unwrap",
    "aesgcm_wrap",
    "decode_master_key",
]
