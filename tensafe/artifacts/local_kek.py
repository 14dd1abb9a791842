"""The default KEK provider: a versioned keyring file readable only by its owner.

The file is created (mode 0600, directory 0700) on first use. A keyring file or
directory that group or others can access is refused with a message that says how
to fix it. File format (JSON)::

    {"format": "tensafe-keyring/1", "kek_id": "kek_<hex>", "active_version": 2,
     "versions": {"1": "<base64 32 bytes>", "2": "<base64 32 bytes>"}}
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

from tensafe.artifacts.kek import (
    KEK_SIZE,
    KeyProvider,
    WrappedKey,
    aesgcm_unwrap,
    aesgcm_wrap,
    decode_master_key,
)
from tensafe.artifacts.secure_files import (
    atomic_write_private,
    check_private,
    create_private,
    ensure_private_dir,
    locked,
)
from tensafe.errors import KeyProviderError

KEYRING_FORMAT = "tensafe-keyring/1"


class LocalKeyring(KeyProvider):
    """KEKs kept in a local file; versioned, rotatable, retire-able.

    Example:
        >>> import tempfile, pathlib
        >>> ring = LocalKeyring(pathlib.Path(tempfile.mkdtemp()) / "keyring.json")
        >>> ring.current_version()
        1
        >>> ring.rotate()
        2

    Raises (constructor):
        KeyProviderError: the file or its directory is group/world accessible or
            not ours, or the file is malformed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        ensure_private_dir(self._path.parent, what="keyring directory")
        if not self._path.exists():
            with locked(self._lock_path):
                create_private(
                    self._path,
                    self._serialize(f"kek_{secrets.token_hex(8)}", 1, {1: os.urandom(KEK_SIZE)}),
                )
        self._load()

    def __repr__(self) -> str:
        return f"LocalKeyring(path={str(self._path)!r}, versions=<redacted>)"

    @staticmethod
    def _serialize(kek_id: str, active: int, versions: dict[int, bytes]) -> bytes:
        data = {
            "format": KEYRING_FORMAT,
            "kek_id": kek_id,
            "active_version": active,
            "versions": {
                str(v): base64.b64encode(k).decode("ascii") for v, k in sorted(versions.items())
            },
        }
        return (json.dumps(data, indent=2) + "\n").encode("utf-8")

    def _load(self) -> None:
        check_private(self._path, what="keyring file")
        try:
            data = json.loads(self._path.read_bytes())
            if data["format"] != KEYRING_FORMAT:
                raise ValueError("format")
            kek_id, active = str(data["kek_id"]), int(data["active_version"])
            raw = dict(data["versions"])
        except (ValueError, KeyError, TypeError):
            raise KeyProviderError(f"keyring file {self._path} is malformed") from None
        versions = {
            int(v): decode_master_key(k, source=f"keyring {self._path} version {v}")
            for v, k in raw.items()
        }
        if active not in versions:
            raise KeyProviderError(f"keyring file {self._path} has no active version {active}")
        self._kek_id, self._active, self._versions = kek_id, active, versions

    @property
    def path(self) -> Path:
        """Where the keyring lives."""
        return self._path

    @property
    def kek_id(self) -> str:
        return self._kek_id

    def current_version(self) -> int:
        return self._active

    def versions(self) -> tuple[int, ...]:
        """KEK versions still held (retired ones are gone)."""
        return tuple(sorted(self._versions))

    def wrap(self, key: bytes, *, context: bytes) -> WrappedKey:
        blob = aesgcm_wrap(self._versions[self._active], key, context=context)
        return WrappedKey(self._kek_id, self._active, blob)

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        if wrapped.kek_id != self._kek_id:
            raise KeyProviderError(
                f"wrapped key is for KEK {wrapped.kek_id!r}, not {self._kek_id!r}"
            )
        if wrapped.kek_version not in self._versions:
            self._load()  # another process may have rotated
        if wrapped.kek_version not in self._versions:
            raise KeyProviderError(
                f"KEK version {wrapped.kek_version} is not in keyring {self._path} (retired?)"
            )
        kek = self._versions[wrapped.kek_version]
        return aesgcm_unwrap(kek, wrapped.ciphertext, context=context)

    def rotate(self) -> int:
        """Add a new KEK version and make it active; old versions still unwrap."""
        with locked(self._lock_path):
            self._load()
            version = max(self._versions) + 1
            versions = {**self._versions, version: os.urandom(KEK_SIZE)}
            atomic_write_private(self._path, self._serialize(self._kek_id, version, versions))
            self._load()
        return version

    def retire(self, version: int) -> None:
        """Delete an old KEK version (after every tenant key was rewrapped off it).

        Raises:
            KeyProviderError: if ``version`` is active or unknown.
        """
        with locked(self._lock_path):
            self._load()
            if version == self._active or version not in self._versions:
                raise KeyProviderError(f"cannot retire KEK version {version}")
            versions = {v: k for v, k in self._versions.items() if v != version}
            atomic_write_private(self._path, self._serialize(self._kek_id, self._active, versions))
            self._load()


__all__ = ["KEYRING_FORMAT", "LocalKeyring"]
