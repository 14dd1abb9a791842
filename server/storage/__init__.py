"""Artifact storage: sealed (ciphertext-only) artifacts by id, published atomically.

* :class:`LocalArtifactStore` — a local directory (embedded default): temp dir,
  fsync, one atomic rename.
* :class:`S3ArtifactStore` — any S3-compatible object store (boto3).

Both implement :class:`ArtifactStore`: ``create`` (streaming upload, invisible until
``commit``), ``put``, ``get`` (streaming read), ``stat``, ``list_artifacts``,
``delete``, ``purge_expired`` (TTL). Stores never see keys or plaintext.
"""

from server.storage.base import ArtifactStore, ArtifactUpload, StoredArtifact
from server.storage.local import LocalArtifactStore
from server.storage.s3 import S3ArtifactStore

__all__ = [
    "ArtifactStore",
    "ArtifactUpload",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "StoredArtifact",
]
