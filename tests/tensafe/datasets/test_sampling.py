"""Server-side Poisson sampling: batch sizes follow Binomial(N, q), records are drawn
independently and uniformly, units contribute at most k records."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tensafe.datasets import SecureUniforms, SeededUniforms, draw_units, poisson_sample
from tensafe.errors import ConfigError

ALARM = 1e-6  # false-alarm rate of each statistical check on the CSPRNG


def test_batch_sizes_follow_the_binomial() -> None:
    n, q, draws = 1000, 0.02, 3000
    sizes = np.array([len(poisson_sample(n, q, source=SecureUniforms())) for _ in range(draws)])
    binom = stats.binom(n, q)
    # chi-square over bins of the binomial's central mass
    edges = np.arange(5, 36)
    observed = np.histogram(sizes, bins=np.r_[-0.5, edges + 0.5, n + 0.5])[0]
    cdf = binom.cdf(np.r_[edges, n])
    expected = draws * np.diff(np.r_[0.0, cdf])
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert stats.chi2(len(expected) - 1).sf(statistic) > ALARM
    assert abs(sizes.mean() - n * q) < 6 * np.sqrt(n * q * (1 - q) / draws)


def test_each_record_is_drawn_with_probability_q_independently() -> None:
    n, q, draws = 200, 0.1, 4000
    counts = np.zeros(n)
    pair = 0  # records 3 and 4 drawn together
    for _ in range(draws):
        drawn = poisson_sample(n, q, source=SecureUniforms())
        assert np.all(np.diff(drawn) > 0) and drawn.min(initial=0) >= 0 and drawn.max(initial=0) < n
        counts[drawn] += 1
        pair += int(3 in drawn and 4 in drawn)
    # every record's count ~ Binomial(draws, q): a two-sided z bound at the alarm rate
    z = stats.norm.isf(ALARM / (2 * n))
    sd = np.sqrt(draws * q * (1 - q))
    assert np.all(np.abs(counts - draws * q) < z * sd)
    assert abs(pair - draws * q * q) < stats.norm.isf(ALARM / 2) * np.sqrt(draws * q * q)


def test_a_seeded_source_is_reproducible_and_the_edges_hold() -> None:
    first = poisson_sample(50, 0.3, source=SeededUniforms(7))
    assert np.array_equal(first, poisson_sample(50, 0.3, source=SeededUniforms(7)))
    assert np.array_equal(poisson_sample(9, 1.0, source=SecureUniforms()), np.arange(9))
    assert len(poisson_sample(10**6, 1e-6, source=SeededUniforms(1))) < 20
    for population, rate, field in ((0, 0.1, "population"), (5, 0.0, "rate"), (5, 1.5, "rate")):
        with pytest.raises(ConfigError) as info:
            poisson_sample(population, rate, source=SecureUniforms())
        assert info.value.field == field


def test_units_contribute_at_most_k_distinct_records() -> None:
    unit_records = [np.arange(10 * u, 10 * u + (1 + u % 7), dtype=np.int64) for u in range(60)]
    drawn = draw_units(unit_records, 0.5, max_records_per_unit=3, source=SecureUniforms())
    assert drawn
    for unit, records in drawn:
        mine = set(unit_records[unit].tolist())
        assert 1 <= len(records) <= 3 and set(records.tolist()) <= mine
        assert len(set(records.tolist())) == len(records)
        if len(mine) <= 3:
            assert set(records.tolist()) == mine
