"""The outcome of a one-run canary audit: guesses from scores, ε_lb beside ε_upper.

Plain data and NumPy (no torch): the audit report and the ledger read it.

Guessing (fixed before the scores are seen): sort the canaries by score; for each
fraction ``f`` of :data:`GUESS_FRACTIONS`, guess "included" for the ``⌊f·m/2⌋``
highest scores and "excluded" for as many lowest, abstaining on the rest. Each of
these guess sets is tested at significance ``(1 − confidence) / len(GUESS_FRACTIONS)``
(Bonferroni), so the largest of their ε lower bounds holds at ``confidence`` overall.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from tensafe.audit.ledger import LedgerEvent
from tensafe.audit.one_run_bound import epsilon_lower_bound
from tensafe.errors import ConfigError

#: Fractions of the canaries guessed on (half "included", half "excluded").
GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)

#: What an audit measured with (the ledger's ``audit_method``).
AUDIT_METHODS = ("gradient-canaries",)


@dataclass(frozen=True, kw_only=True)
class GuessOutcome:
    """The best guess set of an audit.

    Attributes:
        guesses: r, guesses made (the others abstained).
        correct: v, of them right.
        epsilon_lower_bound: the ε lower bound they give (Bonferroni-corrected).
    """

    guesses: int
    correct: int
    epsilon_lower_bound: float


def best_guess(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
) -> GuessOutcome:
    """The guess set of :data:`GUESS_FRACTIONS` with the largest ε lower bound
    (the module docstring's rule); ties keep the fewest guesses.

    Raises:
        ConfigError: (``scores``) not one finite score per canary, or no canary;
            as :func:`~tensafe.audit.one_run_bound.epsilon_lower_bound`.
    """
    values = np.asarray(scores, dtype=np.float64)
    member = np.asarray(included, dtype=bool)
    if values.ndim != 1 or values.shape != member.shape or values.size == 0:
        raise ConfigError("scores", "must hold one score per canary (at least one)")
    if not np.isfinite(values).all():
        raise ConfigError("scores", "must be finite")
    m = int(values.size)
    order = np.argsort(values, kind="stable")
    per_test = 1.0 - (1.0 - confidence) / len(GUESS_FRACTIONS)
    best = GuessOutcome(guesses=0, correct=0, epsilon_lower_bound=0.0)
    for fraction in GUESS_FRACTIONS:
        side = int(fraction * m / 2)
        if side == 0:
            continue
        high, low = order[-side:], order[:side]
        correct = int(member[high].sum() + (~member[low]).sum())
        bound = epsilon_lower_bound(
            canaries=m, guesses=2 * side, correct=correct, delta=delta, confidence=per_test
        )
        if bound > best.epsilon_lower_bound:
            best = GuessOutcome(guesses=2 * side, correct=correct, epsilon_lower_bound=bound)
    return best


@dataclass(frozen=True, kw_only=True)
class CanaryAuditResult:
    """One one-run audit: what was audited, the guesses, ε_lb beside ε_upper.

    Attributes:
        method: ``"gradient-canaries"`` (white-box Dirac gradient canaries).
        run_id: the audited run (the audit's own run for ``tensafe audit canaries``).
        model: the model trained (``None`` when read back from the ledger).
        canaries: m.
        steps: noisy steps taken.
        noise_multiplier: σ the accountant was told.
        sample_rate: q.
        max_grad_norm: C.
        dataset_size: N, the real records besides the canaries.
        delta: δ of both ε.
        accountant: what computed ``epsilon_upper``.
        canary_norm: each canary gradient's norm before clipping, in units of C
            (``None`` when read back from the ledger).
        confidence: of the lower bound (e.g. 0.95).
        guesses: r of the best guess set.
        correct: v of them right.
        epsilon_lower_bound: ε_lb, from the guesses (Steinke et al. 2023).
        epsilon_upper: the run's ε from its accountant (the claim audited).
        included_scores: the scores of the included canaries.
        excluded_scores: the scores of the excluded canaries.
        seeded: the audit's own randomness came from a test seed (not the CSPRNG).
        test_fault: a deliberate break of the engine (test-only), or ``None``.
        seconds: wall time of the audit run.
        created_at: when it finished (UTC, the ledger's format).
    """

    method: str = "gradient-canaries"
    run_id: str
    model: str | None
    canaries: int
    steps: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    dataset_size: int
    delta: float
    accountant: str
    canary_norm: float | None
    confidence: float
    guesses: int
    correct: int
    epsilon_lower_bound: float
    epsilon_upper: float
    included_scores: tuple[float, ...] = field(default=())
    excluded_scores: tuple[float, ...] = field(default=())
    seeded: bool = False
    test_fault: str | None = None
    seconds: float = 0.0
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.method not in AUDIT_METHODS:
            raise ConfigError("method", f"must be one of {AUDIT_METHODS}, got {self.method!r}")
        object.__setattr__(self, "included_scores", tuple(map(float, self.included_scores)))
        object.__setattr__(self, "excluded_scores", tuple(map(float, self.excluded_scores)))

    @property
    def passed(self) -> bool:
        """The implementation is consistent with its claim: ε_lb ≤ ε_upper."""
        return self.epsilon_lower_bound <= self.epsilon_upper

    def verdict(self) -> str:
        """The outcome in words."""
        lb, up = _fmt(self.epsilon_lower_bound), _fmt(self.epsilon_upper)
        if self.passed:
            return (
                f"passed: the measured lower bound ε_lb = {lb} does not exceed the claimed "
                f"ε = {up} ({self.correct} of {self.guesses} guesses right, "
                f"{self.canaries} canaries, {self.confidence:.0%} confidence)"
            )
        return (
            f"FAILED: the measured lower bound ε_lb = {lb} exceeds the claimed ε = {up} "
            f"({self.correct} of {self.guesses} guesses right, {self.canaries} canaries): "
            f"with {self.confidence:.0%} confidence the training step is less private "
            "than its accountant says"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (score tuples become lists), with ``passed``."""
        data = asdict(self)
        data["included_scores"] = list(self.included_scores)
        data["excluded_scores"] = list(self.excluded_scores)
        data["passed"] = self.passed
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        """The result as JSON."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CanaryAuditResult:
        """Inverse of :meth:`to_dict` (``passed`` is recomputed, not read).

        Raises:
            ConfigError: (``audit``) malformed.
        """
        names = {f.name for f in fields(cls)}
        try:
            items = {k: v for k, v in data.items() if k in names}
            return cls(**items)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ConfigError("audit", f"malformed canary audit result: {exc}") from None


def privacy_audit_fields(result: CanaryAuditResult) -> dict[str, object]:
    """The fields of the ``privacy_audit`` ledger row recording ``result``: kind, the
    audited run and its parameters, ε_upper (``epsilon_run_exact`` at ``run_delta`` by
    ``run_accountant``), the guesses, ε_lb and every score. The caller adds the chain's
    fields (tenant, dataset, the budget's δ and accountant, the dataset's unchanged ε
    and cap, library versions, time)."""
    return {
        "kind": "privacy_audit",
        "run_id": result.run_id,
        "noise_multiplier": result.noise_multiplier,
        "sample_rate": result.sample_rate,
        "max_grad_norm": result.max_grad_norm,
        "dataset_size": result.dataset_size,
        "model_step": result.steps,
        "epsilon_run_exact": result.epsilon_upper,
        "run_delta": result.delta,
        "run_accountant": result.accountant,
        "audit_method": result.method,
        "audit_canaries": result.canaries,
        "audit_guesses": result.guesses,
        "audit_correct": result.correct,
        "audit_confidence": result.confidence,
        "epsilon_lower_bound": result.epsilon_lower_bound,
        "audit_scores": {
            "included": list(result.included_scores),
            "excluded": list(result.excluded_scores),
        },
        "audit_test_fault": result.test_fault,
    }


def result_from_event(event: LedgerEvent) -> CanaryAuditResult:
    """The audit a ``privacy_audit`` ledger row records (the model, canary norm and
    wall time are not in the ledger: ``None``, ``None`` and 0).

    Raises:
        ConfigError: (``kind``) not a ``privacy_audit`` row.
    """
    if event.kind != "privacy_audit":
        raise ConfigError("kind", f"not a privacy_audit row: {event.kind!r}")
    scores = event.audit_scores or {}
    return CanaryAuditResult(
        method=event.audit_method,  # type: ignore[arg-type]
        run_id=event.run_id,  # type: ignore[arg-type]
        model=None,
        canaries=event.audit_canaries,  # type: ignore[arg-type]
        steps=event.model_step,  # type: ignore[arg-type]
        noise_multiplier=event.noise_multiplier,  # type: ignore[arg-type]
        sample_rate=event.sample_rate,  # type: ignore[arg-type]
        max_grad_norm=event.max_grad_norm,  # type: ignore[arg-type]
        dataset_size=event.dataset_size,  # type: ignore[arg-type]
        delta=event.run_delta if event.run_delta is not None else event.delta,
        accountant=event.run_accountant or event.accountant,
        canary_norm=None,
        confidence=event.audit_confidence,  # type: ignore[arg-type]
        guesses=event.audit_guesses,  # type: ignore[arg-type]
        correct=event.audit_correct,  # type: ignore[arg-type]
        epsilon_lower_bound=event.epsilon_lower_bound,  # type: ignore[arg-type]
        epsilon_upper=event.epsilon_run_exact,  # type: ignore[arg-type]
        included_scores=tuple(scores.get("included", ())),
        excluded_scores=tuple(scores.get("excluded", ())),
        test_fault=event.audit_test_fault,
        created_at=event.created_at,
    )


def _fmt(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3g}"


__all__ = [
    "AUDIT_METHODS",
    "GUESS_FRACTIONS",
    "CanaryAuditResult",
    "GuessOutcome",
    "best_guess",
    "privacy_audit_fields",
    "result_from_event",
]
