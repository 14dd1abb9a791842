"""The ε lower bound of a one-run privacy audit (Steinke, Nasr & Jagielski, 2023).

The audit's game: m canaries, each independently included in training with
probability ½; after training an auditor guesses, from the canaries' scores, which
were included — ``r`` guesses (abstaining on the others), ``v`` of them correct.
If the training algorithm is (ε, δ)-DP, the number of correct guesses ``W`` is
stochastically dominated (up to a δ term) by a binomial: their Theorem 5.2 gives,
for every ``v``,

    P[W ≥ v] ≤ β + 2·m·δ·α,    p = e^ε / (1 + e^ε)
    β = P[Binomial(r, p) ≥ v]
    α = max over i = 1 … v of  P[v − i ≤ Binomial(r, p) < v] / i

(``p`` is the accuracy of ε-DP randomized response; with δ = 0 the bound is β
alone.) The right-hand side is the *p-value* of the claim "the algorithm is
(ε, δ)-DP" given ``v`` correct out of ``r``. The ε lower bound at confidence
``1 − s`` is the largest ε whose claim is rejected at significance ``s``: for any
smaller ε, seeing ``v`` or more correct guesses would have had probability ≤ s.
If even ε = 0 is not rejected, the bound is 0.

Pure: binomial tails from SciPy in log space; no state. Known-answer tests and an
independent high-precision recomputation live in ``tests/tensafe/audit/``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from scipy import stats

from tensafe.errors import ConfigError

#: Precision of the bisection for ε (absolute).
EPSILON_TOLERANCE = 1e-7

#: Largest ε searched: beyond it randomized response is exact to double precision.
EPSILON_SEARCH_LIMIT = 60.0


def audit_p_value(
    *, canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """The p-value of the claim "(ε, δ)-DP" after ``correct`` right out of ``guesses``.

    An upper bound on the probability that an (ε, δ)-DP algorithm lets an auditor of
    ``canaries`` canaries get ``correct`` or more of ``guesses`` guesses right (the
    module docstring's formula), capped at 1.

    Raises:
        ConfigError: not ``0 ≤ correct ≤ guesses ≤ canaries`` with ``canaries ≥ 1``
            (fields ``canaries``/``guesses``/``correct``), ``epsilon`` negative or not
            finite, ``delta`` not in [0, 1].
    """
    m, r, v = _check_counts(canaries, guesses, correct)
    eps = _check_real(epsilon, "epsilon", low=0.0)
    d = _check_real(delta, "delta", low=0.0, high=1.0)
    p = 1.0 / (1.0 + math.exp(-eps))
    beta = float(stats.binom.sf(v - 1, r, p))  # P[B ≥ v]
    if d == 0.0 or v == 0:
        return min(1.0, beta)
    # P[v − i ≤ B < v] = P[B ≥ v − i] − P[B ≥ v], for i = 1 … v
    below = stats.binom.sf(v - 1 - np.arange(1, v + 1), r, p) - beta
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, beta + 2.0 * m * d * max(alpha, 0.0))


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest ε whose (ε, δ)-DP claim ``correct`` of ``guesses`` right rejects at
    ``confidence`` (0 when none does).

    Found by bisection on ε ∈ [0, :data:`EPSILON_SEARCH_LIMIT`] to
    :data:`EPSILON_TOLERANCE`, rounding down (the returned ε is always rejected, or 0).
    The p-value increases with ε, so the rejected ε form an interval from 0.

    Raises:
        ConfigError: as :func:`audit_p_value`; ``confidence`` not in (0, 1).
    """
    confidence = _check_real(confidence, "confidence", low=0.0, high=1.0)
    if confidence in (0.0, 1.0):
        raise ConfigError("confidence", f"must be in (0, 1), got {confidence!r}")
    significance = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return (
            audit_p_value(
                canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta
            )
            <= significance
        )

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, EPSILON_SEARCH_LIMIT
    if rejected(high):
        return high
    while high - low > EPSILON_TOLERANCE:
        mid = 0.5 * (low + high)
        if rejected(mid):
            low = mid
        else:
            high = mid
    return low


def _check_counts(canaries: object, guesses: object, correct: object) -> tuple[int, int, int]:
    values = {"canaries": canaries, "guesses": guesses, "correct": correct}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ConfigError(name, f"must be an integer, got {value!r}")
    m, r, v = int(canaries), int(guesses), int(correct)  # type: ignore[call-overload]
    if m < 1:
        raise ConfigError("canaries", f"must be ≥ 1, got {m}")
    if not 0 <= r <= m:
        raise ConfigError("guesses", f"must be in [0, canaries={m}], got {r}")
    if not 0 <= v <= r:
        raise ConfigError("correct", f"must be in [0, guesses={r}], got {v}")
    return m, r, v


def _check_real(value: object, name: str, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(name, f"must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ConfigError(name, f"must be finite and in [{low:g}, {high:g}], got {number!r}")
    return number


__all__ = [
    "EPSILON_SEARCH_LIMIT",
    "EPSILON_TOLERANCE",
    "audit_p_value",
    "epsilon_lower_bound",
]
