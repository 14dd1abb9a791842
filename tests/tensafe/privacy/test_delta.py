"""δ against the dataset size: the default, and what is refused."""

from __future__ import annotations

import pytest

from tensafe.errors import ConfigError
from tensafe.privacy import epsilon as epsilon_module
from tensafe.privacy.delta import (
    MAX_BUDGET_DELTA,
    check_budget_delta,
    check_delta,
    default_delta,
)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (10, 1e-5),
        (100_000, 10**-5.5),
        (1_000_000, 10**-6.6),
        (10**9, 10**-9.9),
    ],
)
def test_default_is_accepted_for_its_own_n(n: int, expected: float) -> None:
    assert default_delta(n) == pytest.approx(expected, rel=1e-12)
    assert check_delta(delta=default_delta(n), dataset_size=n) == default_delta(n)
    assert epsilon_module.default_delta is default_delta  # the old import path still works


@pytest.mark.parametrize(
    ("delta", "n"),
    [
        (1e-5, 100_000),  # = 1/N
        (1e-5, 200_000),  # > 1/N: the old fixed default at a large N
        (0.09, 1000),
        (0.5, 2),
    ],
)
def test_delta_at_or_above_one_over_n_is_refused_naming_the_field_and_n(
    delta: float, n: int
) -> None:
    with pytest.raises(ConfigError) as info:
        check_delta(delta=delta, dataset_size=n, field="target_delta")
    assert info.value.field == "target_delta"
    assert f"N = {n}" in info.value.message and repr(delta) in info.value.message
    assert f"{default_delta(n):.3g}" in info.value.message  # says what to use instead


def test_just_below_one_over_n_is_accepted() -> None:
    assert check_delta(delta=0.999e-5, dataset_size=100_000) == 0.999e-5
    assert check_delta(delta=0.09, dataset_size=11) == 0.09


@pytest.mark.parametrize("bad", [0.0, -1e-5, 1.0, float("nan"), float("inf"), "1e-5", None, True])
def test_malformed_delta_names_the_field(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        check_delta(delta=bad, dataset_size=10, field="delta")  # type: ignore[arg-type]
    assert info.value.field == "delta"
    with pytest.raises(ConfigError) as info:
        check_budget_delta(bad)  # type: ignore[arg-type]
    assert info.value.field == "delta"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_malformed_dataset_size_names_it(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        check_delta(delta=1e-6, dataset_size=bad)  # type: ignore[arg-type]
    assert info.value.field == "dataset_size"


def test_budget_delta_sanity_bound() -> None:
    assert check_budget_delta(1e-5) == 1e-5
    assert check_budget_delta(0.0099) == 0.0099
    for bad in (MAX_BUDGET_DELTA, 0.09):
        with pytest.raises(ConfigError) as info:
            check_budget_delta(bad)
        assert info.value.field == "delta" and "fewer than 100 examples" in info.value.message
