"""The conservative ε schedule: the grid, the upper-bound property, caching, threads."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensafe.errors import ConfigError
from tensafe.privacy import schedule as schedule_module
from tensafe.privacy.epsilon import compute_epsilon
from tensafe.privacy.schedule import DEFAULT_RELATIVE_SPACING, EpsilonSchedule

SPACINGS = [0.0025, 0.01, 0.05, 1e-4]


# ----------------------------------------------------------------------- grid


@given(n=st.integers(min_value=0, max_value=10**8), spacing=st.sampled_from(SPACINGS))
def test_grid_point_rounds_up_by_less_than_the_spacing(n: int, spacing: float) -> None:
    sched = EpsilonSchedule(delta=1e-5, accountant="rdp", relative_spacing=spacing)
    g = sched.grid_point(n)
    assert n <= g < n * (1.0 + spacing) or g == n
    assert sched.grid_point(g) == g  # grid points are fixed points
    assert sched.grid_point(n + 1) >= g  # monotone


@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_count_is_a_grid_point_below_one_over_spacing(spacing: float) -> None:
    sched = EpsilonSchedule(delta=1e-5, accountant="rdp", relative_spacing=spacing)
    dense = math.ceil(1 / spacing)
    assert [sched.grid_point(n) for n in range(min(dense, 500) + 1)] == list(
        range(min(dense, 500) + 1)
    )


def test_grid_known_values_and_density() -> None:
    sched = EpsilonSchedule(delta=1e-5, accountant="prv")
    assert sched.relative_spacing == DEFAULT_RELATIVE_SPACING["prv"] == 0.0025
    assert [sched.grid_point(n) for n in (0, 1, 400, 401, 1000, 10_000, 40_000)] == [
        0, 1, 400, 401, 1000, 10021, 40063,
    ]  # fmt: skip
    # 1,690 distinct values up to 10,000 steps: one evaluation per ~25 steps there.
    points = {sched.grid_point(n) for n in range(1, 10_001)}
    assert len(points) == 1690
    assert EpsilonSchedule(delta=1e-5, accountant="rdp").grid_point(12345) == 12345


# --------------------------------------------------------- upper-bound property


@settings(max_examples=60, deadline=None)
@given(
    classes=st.lists(
        st.tuples(
            # Few distinct (σ, q): Opacus' RDP series costs up to 0.5 s per new pair.
            st.sampled_from([0.5, 0.8, 1.0, 1.3, 2.0, 4.0, 8.0]),
            st.sampled_from([1e-4, 0.003, 0.01, 0.1, 0.5, 1.0]),
            st.integers(min_value=1, max_value=200_000),
        ),
        min_size=1,
        max_size=4,
    ),
    delta=st.sampled_from([1e-8, 1e-6, 1e-5, 1e-4]),
    spacing=st.sampled_from([0.0025, 0.01, 0.05]),
)
def test_rdp_schedule_never_underestimates_and_is_tight(
    classes: list[tuple[float, float, int]], delta: float, spacing: float
) -> None:
    # RDP is linear in the counts, so rounding the counts up by < s raises ε by < s.
    sched = EpsilonSchedule(delta=delta, accountant="rdp", relative_spacing=spacing)
    counts: dict[tuple[float, float], int] = {}
    for sigma, q, n in classes:
        counts[(sigma, q)] = counts.get((sigma, q), 0) + n
    exact = compute_epsilon(history=[(s, q, n) for (s, q), n in counts.items()], delta=delta,
                            accountant="rdp")  # fmt: skip
    conservative = sched.epsilon(counts)
    assert conservative >= exact
    assert conservative <= exact * (1 + spacing) + 1e-12


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    runs=st.lists(
        st.tuples(
            st.sampled_from([0.8, 1.0, 1.3, 2.0]),
            st.sampled_from([0.002, 0.01, 0.03]),
            st.integers(min_value=1, max_value=3000),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_prv_schedule_never_underestimates_and_stays_within_the_spacing(
    runs: list[tuple[float, float, int]],
) -> None:
    sched = EpsilonSchedule(delta=1e-5, accountant="prv")
    counts: dict[tuple[float, float], int] = {}
    for sigma, q, n in runs:  # several runs with the same (σ, q) pool their steps
        counts[(sigma, q)] = counts.get((sigma, q), 0) + n
    exact = sched.exact_epsilon(counts)
    conservative = sched.epsilon(counts)
    assert exact == compute_epsilon(history=sched.exact_history(counts), delta=1e-5,
                                    accountant="prv")  # fmt: skip
    assert conservative >= exact
    assert conservative <= exact * (1 + sched.relative_spacing)


def test_conservative_equals_exact_on_grid_points() -> None:
    sched = EpsilonSchedule(delta=1e-5, accountant="prv")
    assert sched.epsilon({(1.0, 0.02): 57}) == sched.exact_epsilon({(1.0, 0.02): 57})
    assert sched.rounded({(1.0, 0.02): 1001, (2.0, 0.01): 0}) == ((1.0, 0.02, 1002),)
    assert sched.epsilon({}) == 0.0


# -------------------------------------------------------------- caching, threads


@pytest.fixture
def slow_counter(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Replace the evaluation with a slow, counting fake (ε = total steps / 1000)."""
    calls: list[tuple[object, ...]] = []

    def fake(
        *, history: tuple[tuple[float, float, int], ...], delta: float, accountant: str
    ) -> float:
        calls.append(history)
        time.sleep(0.05)
        return sum(n for _, _, n in history) / 1000

    monkeypatch.setattr(schedule_module, "compute_epsilon", fake)
    return calls


def test_values_in_one_grid_cell_are_evaluated_once(slow_counter: list[object]) -> None:
    sched = EpsilonSchedule(delta=1e-5, accountant="prv")
    values = {sched.epsilon({(1.0, 0.01): n}) for n in range(9990, 10_022)}
    assert len(slow_counter) == 2  # cells ending at 10,021 and 9,996
    assert values == {9.996, 10.021}
    assert sched.stats().evaluations == 2
    assert sched.cached_epsilon({(1.0, 0.01): 10_000}) == 10.021
    assert sched.cached_epsilon({(1.0, 0.01): 20_000}) is None


def test_concurrent_requests_share_one_evaluation(slow_counter: list[object]) -> None:
    sched = EpsilonSchedule(delta=1e-5, accountant="prv")
    results: list[float] = []
    threads = [
        threading.Thread(target=lambda: results.append(sched.epsilon({(1.0, 0.01): 500})))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(slow_counter) == 1
    assert results == [0.5] * 6
    assert sched.stats().waits == 5


def test_prefetch_computes_in_the_background(slow_counter: list[object]) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        sched = EpsilonSchedule(delta=1e-5, accountant="prv", executor=pool)
        assert sched.prefetching
        assert sched.prefetch({(1.0, 0.01): 1000}) is True
        assert sched.prefetch({(1.0, 0.01): 1000}) is False  # already running or cached
        value = sched.epsilon({(1.0, 0.01): 1000})  # waits for the background result
    assert value == 1.0
    assert len(slow_counter) == 1
    assert EpsilonSchedule(delta=1e-5).prefetch({(1.0, 0.01): 1}) is False  # no executor


def test_background_errors_reach_the_foreground(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(**kwargs: object) -> float:
        raise FloatingPointError("boom")

    monkeypatch.setattr(schedule_module, "compute_epsilon", failing)
    with ThreadPoolExecutor(max_workers=1) as pool:
        sched = EpsilonSchedule(delta=1e-5, accountant="prv", executor=pool)
        sched.prefetch({(1.0, 0.01): 3})
    with pytest.raises(FloatingPointError):
        sched.epsilon({(1.0, 0.01): 3})
    assert sched.cached_epsilon({(1.0, 0.01): 3}) is None  # failures are not cached


# ----------------------------------------------------------------- validation


def test_spec_round_trip() -> None:
    sched = EpsilonSchedule(delta=1e-6, accountant="prv", relative_spacing=0.01)
    assert sched.spec == "geometric:0.01"
    again = EpsilonSchedule.from_spec(sched.spec, delta=1e-6, accountant="prv")
    assert again.relative_spacing == 0.01 and again.delta == 1e-6
    with pytest.raises(ConfigError) as info:
        EpsilonSchedule.from_spec("linear:3", delta=1e-6, accountant="prv")
    assert info.value.field == "spec"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1e-5, "accountant": "gdp"}, "accountant"),
        ({"delta": 1e-5, "relative_spacing": 0.2}, "relative_spacing"),
        ({"delta": 1e-5, "relative_spacing": -0.1}, "relative_spacing"),
        ({"delta": 1e-5, "cache_size": 1}, "cache_size"),
    ],
)
def test_bad_arguments_name_their_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        EpsilonSchedule(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_bad_counts_are_refused() -> None:
    sched = EpsilonSchedule(delta=1e-5, accountant="rdp")
    for counts in ({(1.0, 0.1): -1}, {(1.0,): 3}, [(1.0, 0.1, 3)]):
        with pytest.raises(ConfigError):
            sched.epsilon(counts)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        sched.grid_point(-1)
