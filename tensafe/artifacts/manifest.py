"""The artifact manifest: what a checkpoint is, how it was trained, what it hashes to.

The manifest travels inside the encrypted payload (after the safetensors bytes),
so it is both confidential and authenticated by the same chunk tags. It is plain
JSON with sorted keys; :meth:`Manifest.to_json` and :meth:`Manifest.from_json`
round-trip it exactly. Needs only the standard library.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, cast, get_args

from tensafe.errors import ConfigError

ArtifactKind = Literal["lora_adapter", "full_weights", "training_state", "dataset_shard"]
ARTIFACT_KINDS: tuple[str, ...] = get_args(ArtifactKind)
MANIFEST_VERSION = 1
MAX_METADATA_BYTES = 64 * 1024
DP_FIELDS: tuple[str, ...] = (
    "noise_multiplier",
    "sample_rate",
    "max_grad_norm",
    "dataset_size",
    "delta",
    "accountant",
    "epsilon",
)
#: Optional ``dp`` entries, and the values each may take: how the run's batches were
#: sampled and what one privacy unit is (a record, or e.g. a patient with all their
#: records).
DP_LABELS: dict[str, tuple[str, ...]] = {
    "sampling": ("server-poisson", "client-declared"),
    "privacy_unit": ("record", "unit"),
}
TRAINING_STATE_FIELDS: tuple[str, ...] = ("optimizer", "accountant_history")
VERSIONED_LIBRARIES: tuple[str, ...] = (
    "torch",
    "transformers",
    "peft",
    "opacus",
    "tensafe",
    "cryptography",
    "safetensors",
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a checkpoint, for those installed.

    Read from package metadata, so nothing is imported (no torch import here).
    """
    versions: dict[str, str] = {}
    for name in VERSIONED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def utc_now_iso() -> str:
    """The current UTC time as ISO-8601 with a ``Z`` suffix, to the microsecond."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_roundtrip(value: object, field_name: str) -> object:
    """Deep-copy ``value`` through JSON, so it is JSON-ready and detached."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            field_name, f"must be JSON-serializable without NaN/inf ({exc})"
        ) from None


def _check_number(
    dp: dict[str, object], name: str, *, low: float, high: float, low_open: bool
) -> None:
    value = dp[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"dp.{name}", "must be a finite number")
    if value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        raise ConfigError(f"dp.{name}", f"must be in {bracket}{low}, {high}]")


def _validate_dp(dp: dict[str, object]) -> None:
    missing = [name for name in DP_FIELDS if name not in dp]
    unknown = sorted(set(dp) - set(DP_FIELDS) - set(DP_LABELS))
    for name, allowed in DP_LABELS.items():
        if name in dp and dp[name] not in allowed:
            raise ConfigError(f"dp.{name}", f"must be one of {', '.join(allowed)}")
    if missing:
        raise ConfigError(f"dp.{missing[0]}", f"is required; dp needs {', '.join(DP_FIELDS)}")
    if unknown:
        raise ConfigError(f"dp.{unknown[0]}", f"is not a DP field; allowed: {', '.join(DP_FIELDS)}")
    _check_number(dp, "noise_multiplier", low=0.0, high=math.inf, low_open=False)
    _check_number(dp, "sample_rate", low=0.0, high=1.0, low_open=True)
    _check_number(dp, "max_grad_norm", low=0.0, high=math.inf, low_open=True)
    _check_number(dp, "delta", low=0.0, high=1.0, low_open=True)
    _check_number(dp, "epsilon", low=0.0, high=math.inf, low_open=False)
    size = dp["dataset_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError("dp.dataset_size", "must be a positive integer")
    if not isinstance(dp["accountant"], str) or not dp["accountant"]:
        raise ConfigError("dp.accountant", "must be a non-empty string such as 'prv' or 'rdp'")


@dataclass(frozen=True)
class Manifest:
    """Metadata sealed with every checkpoint. Frozen; dict fields are detached
    JSON copies and must be treated as read-only.

    Fields:
        kind: ``"lora_adapter"``, ``"full_weights"`` or ``"training_state"``
            (weights + optimizer state + accountant history); ``"dataset_shard"``: a
            run of records of a server-held dataset (:mod:`tensafe.datasets.shards`),
            never pulled by clients.
        base_model: the base model id or path the weights belong to (empty for a
            dataset shard, which belongs to no model).
        step: optimizer steps taken when saved (>= 0).
        lora_config: the peft ``LoraConfig`` as a JSON dict; required for
            ``lora_adapter``, forbidden for ``full_weights``.
        dp: DP-SGD parameters and epsilon at save time (keys :data:`DP_FIELDS`,
            optionally :data:`DP_LABELS`), or ``None`` for a non-private run.
        metadata: user metadata, any JSON object up to 64 KiB.
        training_state: for ``training_state`` only: ``{"optimizer": <structure
            from flatten_state>, "accountant_history": [...]}``.
        library_versions: versions of :data:`VERSIONED_LIBRARIES` that are installed.
        plaintext_sha256: hex SHA-256 of the safetensors bytes; set when sealed.
        created_at: UTC ISO-8601 timestamp.

    Example:
        >>> m = Manifest(kind="full_weights", base_model="gpt2", step=3)
        >>> Manifest.from_json(m.to_json()) == m
        True
    """

    kind: ArtifactKind
    base_model: str
    step: int = 0
    lora_config: dict[str, object] | None = None
    dp: dict[str, object] | None = None
    metadata: dict[str, object] = field(default_factory=dict)
    training_state: dict[str, object] | None = None
    library_versions: dict[str, str] = field(default_factory=library_versions)
    plaintext_sha256: str | None = None
    created_at: str = field(default_factory=utc_now_iso)

    def __post_init__(self) -> None:
        if self.kind not in ARTIFACT_KINDS:
            raise ConfigError("kind", f"must be one of {', '.join(ARTIFACT_KINDS)}")
        if not isinstance(self.base_model, str) or (
            bool(self.base_model) == (self.kind == "dataset_shard")
        ):
            raise ConfigError(
                "base_model",
                "must be a non-empty string (empty for, and only for, a dataset shard)",
            )
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ConfigError("step", "must be a non-negative integer")
        self._validate_optional_dicts()
        if not isinstance(self.metadata, dict):
            raise ConfigError("metadata", "must be a JSON object (dict)")
        metadata = _json_roundtrip(self.metadata, "metadata")
        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise ConfigError("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        object.__setattr__(self, "metadata", metadata)
        versions = self.library_versions
        if not isinstance(versions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
        ):
            raise ConfigError("library_versions", "must map library names to version strings")
        object.__setattr__(self, "library_versions", dict(versions))
        digest = self.plaintext_sha256
        if digest is not None and (
            not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest)
        ):
            raise ConfigError("plaintext_sha256", "must be 64 lowercase hex digits or None")
        try:
            parsed = datetime.fromisoformat(self.created_at)
        except (TypeError, ValueError):
            raise ConfigError("created_at", "must be an ISO-8601 timestamp") from None
        if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:
            raise ConfigError("created_at", "must be in UTC (suffix 'Z' or '+00:00')")

    def _validate_optional_dicts(self) -> None:
        for name in ("lora_config", "dp", "training_state"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, dict):
                    raise ConfigError(name, "must be a dict or None")
                object.__setattr__(self, name, _json_roundtrip(value, name))
        if self.kind == "lora_adapter" and self.lora_config is None:
            raise ConfigError("lora_config", "is required for kind 'lora_adapter'")
        if self.kind == "full_weights" and self.lora_config is not None:
            raise ConfigError("lora_config", "must be None for kind 'full_weights'")
        if self.dp is not None:
            _validate_dp(self.dp)
        if (self.kind == "training_state") != (self.training_state is not None):
            raise ConfigError("training_state", "is required for, and only for, 'training_state'")
        if self.training_state is not None:
            keys = set(self.training_state)
            if keys != set(TRAINING_STATE_FIELDS):
                raise ConfigError(
                    "training_state",
                    f"must have exactly the keys {', '.join(TRAINING_STATE_FIELDS)}",
                )
            if not isinstance(self.training_state["accountant_history"], list):
                raise ConfigError("training_state.accountant_history", "must be a list")

    def with_plaintext_sha256(self, digest: str) -> Manifest:
        """A copy stamped with the plaintext hash (what sealing does)."""
        return replace(self, plaintext_sha256=digest)

    def to_dict(self) -> dict[str, object]:
        """The manifest as a JSON-ready dict (including ``manifest_version``)."""
        return {
            "manifest_version": MANIFEST_VERSION,
            "kind": self.kind,
            "base_model": self.base_model,
            "step": self.step,
            "lora_config": self.lora_config,
            "dp": self.dp,
            "metadata": self.metadata,
            "training_state": self.training_state,
            "library_versions": self.library_versions,
            "plaintext_sha256": self.plaintext_sha256,
            "created_at": self.created_at,
        }

    def to_json(self, *, indent: int | None = None) -> str:
        """Deterministic JSON (sorted keys, no NaN)."""
        separators = (",", ":") if indent is None else (",", ": ")
        return json.dumps(
            self.to_dict(), sort_keys=True, allow_nan=False, indent=indent, separators=separators
        )

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Manifest:
        """Build a manifest from :meth:`to_dict` output.

        Raises:
            ConfigError: unknown manifest version, missing/unknown or invalid fields.
        """
        if not isinstance(data, dict):
            raise ConfigError("manifest", "must be a JSON object")
        version = data.get("manifest_version")
        if version != MANIFEST_VERSION:
            raise ConfigError("manifest_version", f"unsupported manifest version {version!r}")
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names - {"manifest_version"})
        if unknown:
            raise ConfigError(unknown[0], "is not a manifest field")
        for required in ("kind", "base_model", "library_versions", "created_at"):
            if required not in data:
                raise ConfigError(required, "missing from manifest")
        kwargs = {name: data[name] for name in names if name in data}
        return cls(**cast(dict, kwargs))

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse :meth:`to_json` output.

        Raises:
            ConfigError: if the text is not valid manifest JSON.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise ConfigError("manifest", "is not valid JSON") from None
        return cls.from_dict(data)


__all__ = [
    "ARTIFACT_KINDS",
    "DP_FIELDS",
    "MANIFEST_VERSION",
    "ArtifactKind",
    "Manifest",
    "library_versions",
    "utc_now_iso",
]
