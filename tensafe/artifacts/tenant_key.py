"""Tenant keys as the artifact core sees them, and the exported key file.

A :class:`TenantKey` is one version of one tenant's data key in the clear. It is
what seals artifacts and what a tenant exports to decrypt pulled artifacts on its
own machine. Like the rest of the core, this module needs only the standard
library; it never logs key material and every ``repr`` redacts it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from tensafe.artifacts.format import KEY_SIZE, validate_identifier, validate_tenant_id
from tensafe.errors import ConfigError, KeyProviderError

KEY_FILE_FORMAT = "tensafe-tenant-key/1"


@dataclass(frozen=True)
class TenantKey:
    """One version of a tenant's 256-bit data key.

    Example:
        >>> key = TenantKey.generate(tenant_id="acme", key_id="tk_demo", version=1)
        >>> "material" in repr(key) and key.material.hex() not in repr(key)
        True
    """

    tenant_id: str
    key_id: str
    version: int
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant_id)
        validate_identifier(self.key_id, field="key_id", max_length=64)
        if not isinstance(self.version, int) or not 1 <= self.version < 1 << 32:
            raise ConfigError("version", "must be an integer in 1..2**32-1")
        if not isinstance(self.material, bytes) or len(self.material) != KEY_SIZE:
            raise ConfigError("material", f"must be {KEY_SIZE} bytes")

    def __repr__(self) -> str:
        return (
            f"TenantKey(tenant_id={self.tenant_id!r}, key_id={self.key_id!r}, "
            f"version={self.version}, material=<redacted>)"
        )

    @classmethod
    def generate(cls, *, tenant_id: str, key_id: str, version: int) -> TenantKey:
        """A fresh random key from the OS CSPRNG."""
        return cls(tenant_id, key_id, version, os.urandom(KEY_SIZE))

    def resolve_key(self, *, tenant_id: str, key_id: str, version: int) -> TenantKey:
        """Return this key if it is the one asked for (see :class:`KeyResolver`).

        Raises:
            KeyProviderError: saying which key the artifact needs when this is not it.
        """
        if (tenant_id, key_id, version) != (self.tenant_id, self.key_id, self.version):
            raise KeyProviderError(
                f"the artifact needs key {key_id!r} version {version} of tenant "
                f"{tenant_id!r}; the key given is {self.key_id!r} version {self.version} "
                f"of tenant {self.tenant_id!r}"
            )
        return self

    def to_json(self) -> str:
        """The exported key file content (contains the secret key: handle with care)."""
        return json.dumps(
            {
                "format": KEY_FILE_FORMAT,
                "tenant_id": self.tenant_id,
                "key_id": self.key_id,
                "version": self.version,
                "key": base64.b64encode(self.material).decode("ascii"),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> TenantKey:
        """Parse an exported key file.

        Raises:
            ConfigError: naming the field that is missing or malformed.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise ConfigError("key_file", "is not valid JSON") from None
        if not isinstance(data, dict) or data.get("format") != KEY_FILE_FORMAT:
            raise ConfigError("format", f"key file format must be {KEY_FILE_FORMAT!r}")
        for name in ("tenant_id", "key_id", "version", "key"):
            if name not in data:
                raise ConfigError(name, "missing from key file")
        try:
            material = base64.b64decode(data["key"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ConfigError("key", "is not valid base64") from None
        return cls(data["tenant_id"], data["key_id"], data["version"], material)


@runtime_checkable
class KeyResolver(Protocol):
    """Anything that can hand out the tenant key an artifact header names.

    Implemented by :class:`TenantKey` (exactly one key), :class:`TenantKeySet`
    (exported key files) and :class:`tensafe.artifacts.tenant_keyring.TenantKeyring`
    (the server's wrapped keys).
    """

    def resolve_key(self, *, tenant_id: str, key_id: str, version: int) -> TenantKey:
        """Return the key, or raise :class:`KeyProviderError` (unknown or destroyed)."""
        ...


class TenantKeySet:
    """A small in-memory set of tenant keys, e.g. several exported key files.

    Example:
        >>> k1 = TenantKey.generate(tenant_id="acme", key_id="tk_demo", version=1)
        >>> TenantKeySet([k1]).resolve_key(tenant_id="acme", key_id="tk_demo", version=1) is k1
        True
    """

    def __init__(self, keys: Iterable[TenantKey]) -> None:
        self._keys = {(k.tenant_id, k.key_id, k.version): k for k in keys}

    def __repr__(self) -> str:
        return f"TenantKeySet({len(self._keys)} keys, material=<redacted>)"

    def resolve_key(self, *, tenant_id: str, key_id: str, version: int) -> TenantKey:
        """Return the matching key.

        Raises:
            KeyProviderError: naming the key and version the artifact needs.
        """
        try:
            return self._keys[(tenant_id, key_id, version)]
        except KeyError:
            raise KeyProviderError(
                f"no key {key_id!r} version {version} for tenant {tenant_id!r} among the "
                f"{len(self._keys)} key(s) given"
            ) from None


def write_key_file(
    path: str | os.PathLike[str], key: TenantKey, *, overwrite: bool = False
) -> Path:
    """Write ``key`` as an exported key file readable only by its owner (mode 0600).

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
    """
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(key.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    return target


def read_key_file(path: str | os.PathLike[str]) -> TenantKey:
    """Read an exported key file; warns if other users can read it.

    Raises:
        ConfigError: if the file is malformed.
        OSError: if it cannot be read.
    """
    target = Path(path)
    mode = target.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"key file {target} is accessible to other users (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {target}",
            UserWarning,
            stacklevel=2,
        )
    return TenantKey.from_json(target.read_bytes())


__all__ = [
    "KEY_FILE_FORMAT",
    "KeyResolver",
    "TenantKey",
    "TenantKeySet",
    "read_key_file",
    "write_key_file",
]
