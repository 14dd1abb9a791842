"""Field rules of a ledger row, per kind (used by ``LedgerEvent.__post_init__``).

Kept apart from :mod:`tensafe.audit.ledger` so the chain module stays about the
chain. Every failure is a :class:`~tensafe.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from types import MappingProxyType
from typing import TYPE_CHECKING

from tensafe.errors import ConfigError

if TYPE_CHECKING:
    from tensafe.audit.ledger import LedgerEvent

HEX64 = re.compile(r"[0-9a-f]{64}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

#: Kinds whose rows are about one run's step.
STEP_KINDS = ("dp_step", "step_refused", "dp_step_carried")
#: Fields every own step row (taken or refused) carries.
OWN_STEP_FIELDS = (
    "run_id",
    "step",
    "noise_multiplier",
    "sample_rate",
    "max_grad_norm",
    "dataset_size",
    "epsilon_step",
    "epsilon_run_total",
)
#: Fields a carried row must carry.
CARRIED_REQUIRED = (
    "run_id",
    "origin_run_id",
    "origin_seq",
    "noise_multiplier",
    "sample_rate",
    "max_grad_norm",
    "dataset_size",
)
#: Fields a carried row must leave null (it is no step of this run on this dataset).
CARRIED_NULL = ("step", "epsilon_step", "epsilon_requested")
#: Run fields a step row may leave null (format 2).
OPTIONAL_RUN_FIELDS = (
    "model_step",
    "epsilon_run_exact",
    "run_delta",
    "run_accountant",
    "sampling",
    "privacy_unit",
)
#: A budget's sampling policies.
SAMPLING_POLICIES = ("server-only", "any")
#: Values of the step rows' labels.
LABELS = {
    "sampling": ("server-poisson", "client-declared"),
    "privacy_unit": ("record", "unit"),
}
#: Fields that qualify ``epsilon_run_exact`` and only exist beside it.
EXACT_QUALIFIERS = ("run_delta", "run_accountant")
#: Accountants an ε may come from.
ACCOUNTANTS = ("prv", "rdp")
#: Fields only carried rows have.
ORIGIN_FIELDS = ("origin_run_id", "origin_seq")
#: Fields only privacy-audit rows have (ledger format 3).
AUDIT_FIELDS = (
    "audit_method",
    "audit_canaries",
    "audit_guesses",
    "audit_correct",
    "audit_confidence",
    "epsilon_lower_bound",
    "audit_scores",
    "audit_test_fault",
)
#: Fields a privacy-audit row must carry: the audited run, its parameters and the outcome.
AUDIT_REQUIRED = (
    "run_id",
    "noise_multiplier",
    "sample_rate",
    "max_grad_norm",
    "dataset_size",
    "model_step",
    "epsilon_run_exact",
    *(name for name in AUDIT_FIELDS if name != "audit_test_fault"),
)
#: Fields a privacy-audit row must leave null (it is no step).
AUDIT_NULL = ("step", "epsilon_step", "epsilon_run_total", "epsilon_requested")
#: Values of the audit labels.
AUDIT_LABELS = {
    "audit_method": ("gradient-canaries",),
    "audit_test_fault": ("sigma/10", "no-clipping"),
}


def validate_event(event: LedgerEvent) -> None:
    """Check and normalize every field of ``event`` (kind already checked).

    Raises:
        ConfigError: a field is invalid for the kind (``field`` names it).
    """
    set_int(event, "seq", minimum=1)
    for name in ("tenant_id", "dataset_id", "accountant"):
        _require_string(event, name)
    kind = event.kind
    _check_presence(event, kind)
    if kind == "privacy_audit":
        _check_audit(event)
    if kind in (*STEP_KINDS, "privacy_audit"):
        _require_string(event, "run_id")
        set_int(event, "dataset_size", minimum=1)
        set_float(event, "noise_multiplier", low=0.0)
        set_float(event, "sample_rate", low=0.0, low_open=True, high=1.0)
        set_float(event, "max_grad_norm", low=0.0, low_open=True)
        if event_has(event, "step"):
            set_int(event, "step", minimum=1)
        if event_has(event, "model_step"):
            set_int(event, "model_step", minimum=1)
        if event_has(event, "epsilon_step"):
            set_float(event, "epsilon_step", low=0.0, infinite=True)
        if event_has(event, "epsilon_run_total"):
            set_float(event, "epsilon_run_total", low=0.0)
        if event_has(event, "epsilon_run_exact"):
            set_float(event, "epsilon_run_exact", low=0.0, infinite=True)
        _check_exact_qualifiers(event)
        for name, allowed in LABELS.items():
            value = getattr(event, name)
            if value is not None and value not in allowed:
                raise ConfigError(name, f"must be one of {allowed}, got {value!r}")
    if kind == "dp_step_carried":
        _require_string(event, "origin_run_id")
        set_int(event, "origin_seq", minimum=1)
    if kind == "step_refused":
        set_float(event, "epsilon_requested", low=0.0, infinite=True)
    policy = event.sampling_policy
    if policy is not None and policy not in SAMPLING_POLICIES:
        raise ConfigError("sampling_policy", f"must be one of {SAMPLING_POLICIES}, got {policy!r}")
    set_float(event, "delta", low=0.0, low_open=True, high=1.0, high_open=True)
    set_float(event, "epsilon_dataset_total", low=0.0)
    set_float(event, "cap", low=0.0)
    _check_text_fields(event)


def _check_presence(event: LedgerEvent, kind: str) -> None:
    """Which fields the kind requires, and which it forbids."""

    if kind in ("dp_step", "step_refused"):
        required, forbidden = OWN_STEP_FIELDS, ORIGIN_FIELDS + AUDIT_FIELDS
    elif kind == "dp_step_carried":
        required, forbidden = CARRIED_REQUIRED, CARRIED_NULL + AUDIT_FIELDS
    elif kind == "privacy_audit":
        required, forbidden = AUDIT_REQUIRED, AUDIT_NULL + ORIGIN_FIELDS
    else:  # budget rows have no run fields at all
        required = ()
        forbidden = OWN_STEP_FIELDS + OPTIONAL_RUN_FIELDS + ORIGIN_FIELDS + AUDIT_FIELDS
    if kind in (*STEP_KINDS, "privacy_audit") and event_has(event, "sampling_policy"):
        raise ConfigError("sampling_policy", "only budget rows carry it; must be null")
    for name in required:
        if not event_has(event, name):
            raise ConfigError(name, f"required for kind {kind!r}")
    for name in forbidden:
        if event_has(event, name):
            if name in ORIGIN_FIELDS:
                raise ConfigError(name, "only carried rows (dp_step_carried) have it; must be null")
            if name in AUDIT_FIELDS:
                raise ConfigError(name, "only privacy_audit rows have it; must be null")
            raise ConfigError(name, f"must be null for kind {kind!r}")
    refusal = kind == "step_refused"
    if refusal and not event_has(event, "epsilon_requested"):
        raise ConfigError("epsilon_requested", "required for kind 'step_refused'")
    if not refusal and event_has(event, "epsilon_requested"):
        raise ConfigError("epsilon_requested", "only refusals carry it; must be null")


def _check_audit(event: LedgerEvent) -> None:
    """A privacy-audit row: consistent counts, bounds in range, one score per canary."""
    for name, allowed in AUDIT_LABELS.items():
        value = getattr(event, name)
        if value is not None and value not in allowed:
            raise ConfigError(name, f"must be one of {allowed}, got {value!r}")
    set_int(event, "audit_canaries", minimum=1)
    set_int(event, "audit_guesses", minimum=0)
    set_int(event, "audit_correct", minimum=0)
    if event.audit_guesses > event.audit_canaries:  # type: ignore[operator]
        raise ConfigError("audit_guesses", "must not exceed audit_canaries")
    if event.audit_correct > event.audit_guesses:  # type: ignore[operator]
        raise ConfigError("audit_correct", "must not exceed audit_guesses")
    set_float(event, "audit_confidence", low=0.0, low_open=True, high=1.0, high_open=True)
    set_float(event, "epsilon_lower_bound", low=0.0)
    scores = event.audit_scores
    if not isinstance(scores, Mapping) or set(scores) != {"included", "excluded"}:
        raise ConfigError("audit_scores", 'must map exactly "included" and "excluded" to lists')
    normalized: dict[str, tuple[float, ...]] = {}
    for side in ("excluded", "included"):
        values = scores[side]
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise ConfigError("audit_scores", f"{side}: must be a list of numbers")
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
            raise ConfigError("audit_scores", f"{side}: must hold numbers only")
        floats = tuple(float(v) for v in values)
        if not all(math.isfinite(v) for v in floats):
            raise ConfigError("audit_scores", f"{side}: must be finite")
        normalized[side] = floats
    if sum(map(len, normalized.values())) != event.audit_canaries:
        raise ConfigError("audit_scores", "must hold one score per canary (audit_canaries)")
    object.__setattr__(event, "audit_scores", MappingProxyType(normalized))


def _check_exact_qualifiers(event: LedgerEvent) -> None:
    """``run_delta`` / ``run_accountant`` say what ``epsilon_run_exact`` is; they never
    stand alone."""
    for name in EXACT_QUALIFIERS:
        if event_has(event, name) and not event_has(event, "epsilon_run_exact"):
            raise ConfigError(name, "only rows that record epsilon_run_exact carry it")
    if event_has(event, "run_delta"):
        set_float(event, "run_delta", low=0.0, low_open=True, high=1.0, high_open=True)
    if event_has(event, "run_accountant") and event.run_accountant not in ACCOUNTANTS:
        raise ConfigError(
            "run_accountant", f"must be one of {ACCOUNTANTS}, got {event.run_accountant!r}"
        )


def _check_text_fields(event: LedgerEvent) -> None:
    for name in ("actor", "reason"):
        value = getattr(event, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(name, "must be a string or null")
    versions = event.library_versions
    if not isinstance(versions, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
    ):
        raise ConfigError("library_versions", "must map names to version strings")
    object.__setattr__(event, "library_versions", MappingProxyType(dict(versions)))
    created_at = event.created_at
    if not isinstance(created_at, str) or not TIMESTAMP.fullmatch(created_at):
        raise ConfigError(
            "created_at", f"must look like 2026-01-31T12:00:00.000000Z, got {created_at!r}"
        )
    for name in ("prev_link", "link"):
        value = getattr(event, name)
        if not isinstance(value, str) or not HEX64.fullmatch(value):
            raise ConfigError(name, "must be 64 lowercase hex digits")


def _require_string(event: LedgerEvent, name: str) -> None:
    value = getattr(event, name)
    if not isinstance(value, str) or not value:
        raise ConfigError(name, "must be a non-empty string")


def event_has(event: LedgerEvent, name: str) -> bool:
    """``event.name`` is set (not null)."""
    return getattr(event, name) is not None


def check_key(key: object, *, minimum: int) -> None:
    """Raises ConfigError (``key``) unless ``key`` is bytes of at least ``minimum``."""
    if not isinstance(key, (bytes, bytearray)):
        raise ConfigError("key", f"must be bytes, got {type(key).__name__}")
    if len(key) < minimum:
        raise ConfigError("key", f"must be at least {minimum} bytes, got {len(key)}")


def set_int(event: LedgerEvent, name: str, *, minimum: int) -> None:
    """Check ``event.name`` is an integer ≥ ``minimum`` (not a bool) and store it as ``int``."""
    value = getattr(event, name)
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ConfigError(name, f"must be an integer ≥ {minimum}, got {value!r}")
    object.__setattr__(event, name, int(value))


def set_float(
    event: LedgerEvent,
    name: str,
    *,
    low: float,
    low_open: bool = False,
    high: float = math.inf,
    high_open: bool = False,
    infinite: bool = False,
) -> None:
    """Check ``event.name`` is a real in the interval (``+inf`` only if ``infinite``); store
    it as ``float``."""
    value = getattr(event, name)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(name, f"must be a real number, got {value!r}")
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not (infinite and number > 0)):
        raise ConfigError(name, f"must be finite, got {number!r}")
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if too_low or too_high:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(name, f"must be in {lo}{low:g}, {high:g}{hi}, got {number!r}")
    object.__setattr__(event, name, number)
