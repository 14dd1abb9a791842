"""Noise calibration: round trip, minimality, refusals."""

from __future__ import annotations

import pytest

from tensafe.errors import ConfigError
from tensafe.privacy.calibration import SIGMA_RELATIVE_TOLERANCE, calibrate_noise_multiplier
from tensafe.privacy.epsilon import compute_epsilon

CASES = [
    # (target ε, δ, q, steps, accountant)
    (1.0, 1e-5, 0.01, 1000, "prv"),
    (3.0, 1e-6, 0.05, 100, "prv"),
    (8.0, 1e-5, 0.004, 10000, "rdp"),
    (0.5, 1e-5, 0.001, 5000, "rdp"),
]


@pytest.mark.parametrize(("target", "delta", "q", "steps", "name"), CASES)
def test_calibrated_sigma_meets_target_and_is_smallest(
    target: float, delta: float, q: float, steps: int, name: str
) -> None:
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps, accountant=name
    )
    eps = compute_epsilon(history=[(sigma, q, steps)], delta=delta, accountant=name)
    assert 0.97 * target <= eps <= target
    # Minimality: a σ just below the tolerance band overspends.
    smaller = sigma * (1.0 - 2.0 * SIGMA_RELATIVE_TOLERANCE)
    assert compute_epsilon(history=[(smaller, q, steps)], delta=delta, accountant=name) > target


def test_prv_needs_less_noise_than_rdp() -> None:
    kwargs = {"target_epsilon": 1.0, "target_delta": 1e-5, "sample_rate": 0.01, "steps": 1000}
    prv = calibrate_noise_multiplier(**kwargs, accountant="prv")  # type: ignore[arg-type]
    rdp = calibrate_noise_multiplier(**kwargs, accountant="rdp")  # type: ignore[arg-type]
    assert prv < rdp


def test_unreachable_target_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        calibrate_noise_multiplier(
            target_epsilon=1e-9, target_delta=1e-5, sample_rate=1.0, steps=1000, accountant="rdp"
        )
    assert info.value.field == "target_epsilon"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": float("inf")}, "target_epsilon"),
        ({"target_delta": 1.0}, "target_delta"),
        ({"target_delta": -1e-5}, "target_delta"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"steps": 10.0}, "steps"),
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_bad_inputs_name_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "target_epsilon": 1.0,
        "target_delta": 1e-5,
        "sample_rate": 0.01,
        "steps": 100,
        "accountant": "rdp",
    }
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        calibrate_noise_multiplier(**args)  # type: ignore[arg-type]
    assert info.value.field == field
