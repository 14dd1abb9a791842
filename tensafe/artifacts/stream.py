"""The streaming chunked AEAD core in one import (what the client SDK shares).

Needs only the standard library and pyca ``cryptography``:
:mod:`~tensafe.artifacts.format` (header, key schedule, framing),
:mod:`~tensafe.artifacts.writer` (sealing), :mod:`~tensafe.artifacts.reader`
(opening, keyless verification), :mod:`~tensafe.artifacts.pipeline` (hashing
thread) and :mod:`~tensafe.artifacts.tenant_key` (keys and key files).
"""

from tensafe.artifacts.pipeline import Hasher, HashingPipe
from tensafe.artifacts.reader import (
    OpeningReader,
    VerificationReport,
    open_bytes,
    read_header,
    verify_ciphertext,
)
from tensafe.artifacts.writer import SealingWriter, SealResult, seal_bytes

__all__ = [
    "Hasher",
    "HashingPipe",
    "OpeningReader",
    "SealResult",
    "SealingWriter",
    "VerificationReport",
    "open_bytes",
    "read_header",
    "seal_bytes",
    "verify_ciphertext",
]
