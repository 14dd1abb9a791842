"""The one-run ε lower bound: known answers and an independent high-precision recomputation.

The reference below is written from the paper's statement (Steinke, Nasr & Jagielski
2023, Theorem 5.2) with exact integer binomial coefficients and 60-digit mpmath
arithmetic, a bisection of its own and none of SciPy: agreement with the production
code (SciPy's binomial tails in double precision) is a cross-check of both.
"""

from __future__ import annotations

import math

import mpmath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensafe.audit.one_run_bound import audit_p_value, epsilon_lower_bound
from tensafe.errors import ConfigError

mpmath.mp.dps = 40


def reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> mpmath.mpf:
    """P[B ≥ v] + 2mδ · max_i P[v−i ≤ B < v] / i, B ~ Binomial(r, e^ε/(1+e^ε)), exactly."""
    p = mpmath.e ** mpmath.mpf(eps) / (1 + mpmath.e ** mpmath.mpf(eps))
    pmf = [math.comb(r, k) * p**k * (1 - p) ** (r - k) for k in range(r + 1)]
    beta = mpmath.fsum(pmf[v:])
    alpha = max((mpmath.fsum(pmf[v - i : v]) / i for i in range(1, v + 1)), default=0)
    return min(mpmath.mpf(1), beta + 2 * m * mpmath.mpf(delta) * alpha)


def reference_lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    if reference_p_value(m, r, v, 0.0, delta) > significance:
        return 0.0
    lo, hi = mpmath.mpf(0), mpmath.mpf(60)
    for _ in range(48):
        mid = (lo + hi) / 2
        if reference_p_value(m, r, v, float(mid), delta) <= significance:
            lo = mid
        else:
            hi = mid
    return float(lo)


CASES = [  # (m, r, v, δ)
    (1000, 100, 90, 1e-5),
    (1000, 500, 500, 1e-5),
    (1000, 200, 140, 0.0),
    (200, 50, 40, 1e-3),
    (5000, 400, 280, 1e-6),
    (100, 10, 10, 0.0),
]


@pytest.mark.parametrize(("m", "r", "v", "delta"), CASES)
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 4.0])
def test_p_value_matches_an_exact_recomputation(m, r, v, delta, eps) -> None:
    ours = audit_p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    ref = float(reference_p_value(m, r, v, eps, delta))
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("m", "r", "v", "delta"), CASES)
def test_lower_bound_matches_an_independent_bisection(m, r, v, delta) -> None:
    ours = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, confidence=0.95)
    ref = reference_lower_bound(m, r, v, delta, 0.05)
    assert ours == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("r", [1, 10, 100, 500])
def test_all_correct_without_delta_is_randomized_response(r: int) -> None:
    # δ = 0, v = r: p^r ≤ s  ⇔  ε ≤ logit(s^(1/r)) — a closed form.
    s = 0.05
    expected = max(0.0, math.log(s ** (1 / r) / (1 - s ** (1 / r))))
    got = epsilon_lower_bound(canaries=1000, guesses=r, correct=r, delta=0.0)
    assert got == pytest.approx(expected, abs=1e-6)


def logit_root(s: float, r: int) -> float:
    return math.log(s ** (1 / r) / (1 - s ** (1 / r)))


def test_delta_term_stays_within_its_bounds() -> None:
    # α ≤ 1, so the p-value is at most β + 2mδ: rejecting at β ≤ 0.05 − 2mδ suffices,
    # and δ > 0 can only weaken the bound.
    m, r, d = 1000, 500, 1e-5
    got = epsilon_lower_bound(canaries=m, guesses=r, correct=r, delta=d)
    assert logit_root(0.05 - 2 * m * d, r) <= got < logit_root(0.05, r)
    assert logit_root(0.05, r) == pytest.approx(5.114, abs=1e-3)


def test_chance_level_proves_nothing() -> None:
    # chance-level guessing proves nothing
    assert epsilon_lower_bound(canaries=1000, guesses=500, correct=250, delta=1e-5) == 0.0
    assert epsilon_lower_bound(canaries=1000, guesses=0, correct=0, delta=1e-5) == 0.0


def test_bound_is_tight_at_its_edge() -> None:
    m, r, v, d = 1000, 300, 260, 1e-5
    eps = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=d)
    assert eps > 0
    assert audit_p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=d) <= 0.05
    assert audit_p_value(canaries=m, guesses=r, correct=v, epsilon=eps + 1e-5, delta=d) > 0.05


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(1, 300),
    data=st.data(),
    delta=st.sampled_from([0.0, 1e-6, 1e-5, 1e-3]),
)
def test_more_correct_guesses_never_lower_the_bound(r: int, data, delta: float) -> None:
    v = data.draw(st.integers(0, r - 1))
    low = epsilon_lower_bound(canaries=1000, guesses=r, correct=v, delta=delta)
    high = epsilon_lower_bound(canaries=1000, guesses=r, correct=v + 1, delta=delta)
    assert high >= low - 1e-6


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"canaries": 0, "guesses": 0, "correct": 0}, "canaries"),
        ({"canaries": 10, "guesses": 11, "correct": 0}, "guesses"),
        ({"canaries": 10, "guesses": 5, "correct": 6}, "correct"),
        ({"canaries": 10, "guesses": 5, "correct": -1}, "correct"),
        ({"canaries": 10.0, "guesses": 5, "correct": 1}, "canaries"),
        ({"canaries": True, "guesses": 1, "correct": 1}, "canaries"),
    ],
)
def test_counts_are_checked(kwargs, field) -> None:
    with pytest.raises(ConfigError) as err:
        epsilon_lower_bound(**kwargs, delta=1e-5)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delta": -1e-5}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"delta": float("nan")}, "delta"),
        ({"delta": 1e-5, "confidence": 1.0}, "confidence"),
        ({"delta": 1e-5, "confidence": 0.0}, "confidence"),
    ],
)
def test_parameters_are_checked(kwargs, field) -> None:
    with pytest.raises(ConfigError) as err:
        epsilon_lower_bound(canaries=10, guesses=5, correct=5, **kwargs)
    assert err.value.field == field
