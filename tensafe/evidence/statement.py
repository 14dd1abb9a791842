"""The in-toto Statement of one checkpoint: subjects and the TenSafe predicate.

Layout (in-toto Statement v1)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<artifact id>",           "digest": {"sha256": <content hash>}},
                 {"name": "<artifact id>#plaintext", "digest": {"sha256": <plaintext hash>}}],
     "predicateType": "https://tensafe.dev/evidence/checkpoint/v1",
     "predicate": {"artifact": {"id", "kind", "created_at"},
                   "base_model": {"name", "sha256"},
                   "dataset": {"id", "version", "commitment"},
                   "privacy_unit", "sampling",
                   "dp": {"history": [[σ, q, steps], ...], "steps", "max_grad_norm",
                          "dataset_size", "delta", "accountant"},
                   "epsilon": {"reported", "prv", "pld"},
                   "epsilon_lower_bound",
                   "ledger_head": {"seq", "link"},
                   "versions": {"code", "libraries": {...}},
                   "keys": {"tenant_id", "tenant_key_version", "kek_id"}}}

The content hash is the SHA-256 of the encrypted artifact as pulled (verifiable without
any key); the plaintext hash is the SHA-256 of its safetensors payload (checked after
decrypting with the tenant key). Key *ids* only: no key material is ever in a bundle.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tensafe.errors import ConfigError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://tensafe.dev/evidence/checkpoint/v1"

_HEX64 = re.compile(r"[0-9a-f]{64}")

Segment = tuple[float, float, int]


@dataclass(frozen=True, kw_only=True)
class CheckpointEvidence:
    """What a bundle says about one checkpoint. Validated on construction.

    Attributes:
        artifact_id: the artifact.
        artifact_kind: ``lora_adapter``, ``training_state``, ….
        created_at: when the checkpoint was saved (UTC, ISO 8601).
        content_sha256: SHA-256 of the encrypted artifact (64 lowercase hex digits).
        plaintext_sha256: SHA-256 of its plaintext payload.
        base_model: the base model's name.
        base_model_sha256: a hash of the base weights, when known.
        dataset_id: the server-held dataset, if any.
        dataset_version: its version.
        dataset_commitment: its commitment (binds the records without revealing them).
        privacy_unit: ``record`` or ``unit``.
        sampling: ``server-poisson`` or ``client-declared``.
        history: ``(σ, q, steps)`` segments of the run's noisy steps, in order.
        max_grad_norm: C.
        dataset_size: N.
        delta: δ of every ε.
        accountant: what computed ``epsilon_reported`` (``prv``, ``rdp``).
        epsilon_reported: the run's ε as reported to the client.
        epsilon_prv: ε by the PRV accountant, when computed.
        epsilon_pld: ε by Google dp-accounting PLD, when computed.
        epsilon_lower_bound: an empirical audit's ε_lb, where audited.
        ledger_seq: the ledger head's ``seq`` at save time.
        ledger_link: the ledger head's ``link`` at save time.
        code_version: TenSafe's version.
        library_versions: versions of what trained and accounted.
        tenant_id: the owning tenant.
        tenant_key_version: the tenant key version the artifact is encrypted under.
        kek_id: the key-encryption key's id at the key provider.

    Raises:
        ConfigError: naming the field.
    """

    artifact_id: str
    artifact_kind: str
    created_at: str
    content_sha256: str
    plaintext_sha256: str
    base_model: str
    base_model_sha256: str | None = None
    dataset_id: str | None = None
    dataset_version: int | None = None
    dataset_commitment: str | None = None
    privacy_unit: str | None = None
    sampling: str | None = None
    history: tuple[Segment, ...] = ()
    max_grad_norm: float | None = None
    dataset_size: int | None = None
    delta: float | None = None
    accountant: str | None = None
    epsilon_reported: float | None = None
    epsilon_prv: float | None = None
    epsilon_pld: float | None = None
    epsilon_lower_bound: float | None = None
    ledger_seq: int | None = None
    ledger_link: str | None = None
    code_version: str = ""
    library_versions: Mapping[str, str] = field(default_factory=dict)
    tenant_id: str = ""
    tenant_key_version: int | None = None
    kek_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("artifact_id", "artifact_kind", "created_at", "base_model"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(name, "must be a non-empty string")
        for name in ("content_sha256", "plaintext_sha256"):
            if not isinstance(getattr(self, name), str) or not _HEX64.fullmatch(
                getattr(self, name)
            ):
                raise ConfigError(name, "must be 64 lowercase hex digits")
        if self.ledger_link is not None and not _HEX64.fullmatch(self.ledger_link):
            raise ConfigError("ledger_link", "must be 64 lowercase hex digits")
        segments = []
        for segment in self.history:
            sigma, q, steps = segment
            if not (math.isfinite(sigma) and sigma >= 0 and 0 < q <= 1 and int(steps) >= 0):
                raise ConfigError("history", f"malformed segment {segment!r}")
            segments.append((float(sigma), float(q), int(steps)))
        object.__setattr__(self, "history", tuple(segments))
        for name in ("epsilon_reported", "epsilon_prv", "epsilon_pld", "epsilon_lower_bound"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or math.isnan(value)):
                raise ConfigError(name, "must be a number (not NaN) or None")
        object.__setattr__(self, "library_versions", MappingProxyType(dict(self.library_versions)))

    @property
    def steps(self) -> int:
        """Noisy steps behind the checkpoint."""
        return sum(n for _, _, n in self.history)

    def predicate(self) -> dict[str, object]:
        """The predicate (see the module docstring); infinite ε as ``null``."""
        return {
            "artifact": {
                "id": self.artifact_id,
                "kind": self.artifact_kind,
                "created_at": self.created_at,
            },
            "base_model": {"name": self.base_model, "sha256": self.base_model_sha256},
            "dataset": {
                "id": self.dataset_id,
                "version": self.dataset_version,
                "commitment": self.dataset_commitment,
            },
            "privacy_unit": self.privacy_unit,
            "sampling": self.sampling,
            "dp": {
                "history": [list(s) for s in self.history],
                "steps": self.steps,
                "max_grad_norm": self.max_grad_norm,
                "dataset_size": self.dataset_size,
                "delta": self.delta,
                "accountant": self.accountant,
            },
            "epsilon": {
                "reported": _finite(self.epsilon_reported),
                "prv": _finite(self.epsilon_prv),
                "pld": _finite(self.epsilon_pld),
            },
            "epsilon_lower_bound": _finite(self.epsilon_lower_bound),
            "ledger_head": None
            if self.ledger_seq is None
            else {"seq": self.ledger_seq, "link": self.ledger_link},
            "versions": {"code": self.code_version, "libraries": dict(self.library_versions)},
            "keys": {
                "tenant_id": self.tenant_id,
                "tenant_key_version": self.tenant_key_version,
                "kek_id": self.kek_id,
            },
        }


def statement_for(evidence: CheckpointEvidence) -> dict[str, object]:
    """The in-toto Statement of ``evidence`` (a JSON-ready dict)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": evidence.artifact_id, "digest": {"sha256": evidence.content_sha256}},
            {
                "name": f"{evidence.artifact_id}#plaintext",
                "digest": {"sha256": evidence.plaintext_sha256},
            },
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": evidence.predicate(),
    }


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else float(value)


__all__ = ["PREDICATE_TYPE", "STATEMENT_TYPE", "CheckpointEvidence", "statement_for"]
