"""Signed evidence bundles: what a checkpoint is, and how it was made, verifiable offline.

A bundle is an in-toto Statement (v1) in a DSSE envelope signed with Ed25519 — the
format of OpenSSF model signing. Its subjects are the artifact's content hash (the
SHA-256 of the encrypted file) and its plaintext hash; its predicate records the base
model, dataset commitment, privacy unit, sampling, DP parameters, ε (PRV and PLD),
the audit's ε_lb where there is one, the ledger head at save time, library and code
versions, and the tenant-key and KEK ids (never key material).

* :mod:`~tensafe.evidence.dsse` — the envelope: PAE, signing, key ids.
* :mod:`~tensafe.evidence.statement` — the statement and its predicate.

The verifier is the SDK's (:mod:`tg_tinker.evidence`), written from the format alone;
``tensafe evidence verify BUNDLE --artifact FILE --public-key KEY`` (``server.evidence_cli``)
runs it.
"""

from __future__ import annotations

from tensafe.evidence.dsse import (
    PAYLOAD_TYPE,
    key_id,
    pae,
    public_key_pem,
    sign_statement,
)
from tensafe.evidence.statement import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    CheckpointEvidence,
    statement_for,
)

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "CheckpointEvidence",
    "key_id",
    "pae",
    "public_key_pem",
    "sign_statement",
    "statement_for",
]
