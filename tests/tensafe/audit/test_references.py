"""The audit's independent references: PLD refined until it converges, Opacus PRV's
interval on a capped grid."""

from __future__ import annotations

import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from tensafe.audit.references import (
    PLD_RELATIVE_DISCRETIZATION,
    converged_pld_epsilon,
    opacus_prv_interval,
    pld_epsilon,
)
from tensafe.errors import ConfigError

DELTA = 1e-5


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε of the Gaussian mechanism with sensitivity/σ = ``mu`` (Balle & Wang 2018):
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)."""

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return float(brentq(excess, 0.0, 100.0, xtol=1e-12))


def test_full_batch_known_answer() -> None:
    # q = 1: k steps of σ compose to one Gaussian mechanism with μ = √k / σ.
    history = [(2.0, 1.0, 5)]
    exact = gaussian_epsilon(math.sqrt(5) / 2.0, DELTA)
    pld = converged_pld_epsilon(history, delta=DELTA)
    assert pld.converged and pld.evaluations == 2  # a large ε stops at the coarse intervals
    assert exact <= pld.epsilon <= exact * (1 + 1e-3)
    prv = opacus_prv_interval(history, delta=DELTA, eps_error=1e-3)
    assert prv.lower <= exact <= prv.upper and prv.upper - prv.lower < 0.01 * exact


def test_small_sample_rate_is_refined_until_it_converges() -> None:
    history = [(5.0, 1e-4, 10_000)]
    coarse = pld_epsilon(history, delta=DELTA)  # dp-accounting's default interval, 1e-4
    pld = converged_pld_epsilon(history, delta=DELTA)
    assert pld.converged and pld.relative_change <= 1e-3
    assert pld.value_discretization_interval <= PLD_RELATIVE_DISCRETIZATION * pld.epsilon
    finer = pld_epsilon(
        history, delta=DELTA, value_discretization_interval=pld.value_discretization_interval / 4
    )
    assert finer <= pld.epsilon <= finer * (1 + 1e-3)  # pessimistic, and within 0.1 %
    assert coarse > 2.0 * pld.epsilon  # what a fixed 1e-4 gave: more than twice too high
    prv = opacus_prv_interval(history, delta=DELTA, eps_error=1e-4)
    assert prv.lower <= pld.epsilon <= prv.upper


def test_prv_grid_is_capped_and_its_interval_widened() -> None:
    history = [(1.0, 0.01, 1000)]
    reference = converged_pld_epsilon(history, delta=DELTA).epsilon
    small = opacus_prv_interval(history, delta=DELTA, eps_error=1e-3, max_domain_points=1 << 14)
    assert small.eps_error > 1e-3  # coarsened to fit 16,384 points
    assert small.lower <= reference <= small.upper
    assert small.upper - small.lower == pytest.approx(2 * small.eps_error, rel=0.05)


def test_invalid_inputs_name_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        converged_pld_epsilon([], delta=DELTA)
    assert info.value.field == "history"
    with pytest.raises(ConfigError) as info:
        converged_pld_epsilon([(1.0, 0.01, 10)], delta=DELTA, tolerance=0.5)
    assert info.value.field == "tolerance"
    with pytest.raises(ConfigError) as info:
        opacus_prv_interval([], delta=DELTA, eps_error=1e-3)
    assert info.value.field == "history"
