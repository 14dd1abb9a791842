"""Encrypted, content-hashed checkpoint artifacts: format, keys, manifest.

The format is specified in ``docs/artifact-format.md``. Two layers:

* the core (:mod:`.format`, :mod:`.writer`, :mod:`.reader`, :mod:`.pipeline`,
  :mod:`.tenant_key`, :mod:`.manifest`, :mod:`.payload`) needs only the standard
  library and ``cryptography``; it seals and opens byte streams and decrypts an
  artifact to a directory;
* the torch layer (:mod:`.checkpoint`, :mod:`.safetensors_io`,
  :mod:`.training_state`) turns tensors into artifacts and back. It is imported
  lazily, so ``import tensafe.artifacts`` never imports torch.

Keys: :class:`KeyProvider` (KEK: :class:`LocalKeyring`, :class:`EnvKeyProvider`)
wraps per-tenant keys held by a :class:`TenantKeyStore`; :class:`TenantKeyring`
rotates, rewraps, shreds and exports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tensafe.artifacts.format import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    ArtifactHeader,
    new_artifact_id,
)
from tensafe.artifacts.kek import EnvKeyProvider, KeyProvider, WrappedKey
from tensafe.artifacts.keystore import FileTenantKeyStore, MemoryTenantKeyStore, TenantKeyStore
from tensafe.artifacts.local_kek import LocalKeyring
from tensafe.artifacts.manifest import ArtifactKind, Manifest, library_versions
from tensafe.artifacts.payload import DecryptedArtifact, decrypt_to_directory
from tensafe.artifacts.reader import (
    OpeningReader,
    VerificationReport,
    open_bytes,
    read_header,
    verify_ciphertext,
)
from tensafe.artifacts.tenant_key import (
    KeyResolver,
    TenantKey,
    TenantKeySet,
    read_key_file,
    write_key_file,
)
from tensafe.artifacts.tenant_keyring import KekRotation, ShredReport, TenantKeyring
from tensafe.artifacts.writer import SealingWriter, SealResult, seal_bytes

if TYPE_CHECKING:
    from tensafe.artifacts.checkpoint import (
        OpenedCheckpoint,
        SealedInfo,
        open_checkpoint,
        peft_config_dict,
        seal_checkpoint,
    )
    from tensafe.artifacts.training_state import (
        TrainingState,
        flatten_state,
        pack_training_state,
        unflatten_state,
        unpack_training_state,
    )

_LAZY = {
    "OpenedCheckpoint": "tensafe.artifacts.checkpoint",
    "SealedInfo": "tensafe.artifacts.checkpoint",
    "open_checkpoint": "tensafe.artifacts.checkpoint",
    "peft_config_dict": "tensafe.artifacts.checkpoint",
    "seal_checkpoint": "tensafe.artifacts.checkpoint",
    "TrainingState": "tensafe.artifacts.training_state",
    "flatten_state": "tensafe.artifacts.training_state",
    "pack_training_state": "tensafe.artifacts.training_state",
    "unflatten_state": "tensafe.artifacts.training_state",
    "unpack_training_state": "tensafe.artifacts.training_state",
}


def __getattr__(name: str) -> object:
    """Import the torch layer on first use of one of its names."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "ArtifactHeader",
    "ArtifactKind",
    "DecryptedArtifact",
    "EnvKeyProvider",
    "FileTenantKeyStore",
    "KekRotation",
    "KeyProvider",
    "KeyResolver",
    "LocalKeyring",
    "Manifest",
    "MemoryTenantKeyStore",
    "OpenedCheckpoint",
    "OpeningReader",
    "SealResult",
    "SealedInfo",
    "SealingWriter",
    "ShredReport",
    "TenantKey",
    "TenantKeySet",
    "TenantKeyStore",
    "TenantKeyring",
    "TrainingState",
    "VerificationReport",
    "WrappedKey",
    "decrypt_to_directory",
    "flatten_state",
    "library_versions",
    "new_artifact_id",
    "open_bytes",
    "open_checkpoint",
    "pack_training_state",
    "peft_config_dict",
    "read_header",
    "read_key_file",
    "seal_bytes",
    "seal_checkpoint",
    "unflatten_state",
    "unpack_training_state",
    "verify_ciphertext",
    "write_key_file",
]
