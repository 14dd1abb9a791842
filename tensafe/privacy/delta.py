"""δ, and what it must be for a dataset of N examples.

An (ε, δ) guarantee may fail outright with probability about δ. With δ ≥ 1/N, the
mechanism that publishes one randomly chosen example verbatim satisfies (ε, δ)-DP for
any ε, so such a guarantee protects no one: δ must be strictly below 1/N, and in
practice well below it. The default is ``min(1e-5, N^-1.1)`` (always < 1/N).

A privacy budget fixes its δ before any dataset size is known; it is checked against
each run's N when the run is admitted (:func:`check_delta`), and refused up front only
when no reasonable dataset could use it (:func:`check_budget_delta`).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from tensafe.errors import ConfigError

#: Largest default δ (datasets of up to about 35,000 examples get exactly this).
DEFAULT_DELTA_CEILING = 1e-5

#: A budget's δ must be below this: a δ of 1 % or more could only serve datasets of
#: fewer than 100 examples, and lets the guarantee fail outright with probability ≥ 1 %.
MAX_BUDGET_DELTA = 0.01


def default_delta(dataset_size: int) -> float:
    """The default δ for a dataset of ``dataset_size`` examples: ``min(1e-5, N^-1.1)``.

    Always strictly below ``1/N``. Examples: ``default_delta(1000) == 1e-5``,
    ``default_delta(10**6) == 10**-6.6``.

    Raises:
        ConfigError: (``dataset_size``) not an integer ≥ 1.
    """
    n = _dataset_size(dataset_size, "dataset_size")
    return min(DEFAULT_DELTA_CEILING, float(n) ** -1.1)


def check_delta(*, delta: float, dataset_size: int, field: str = "delta") -> float:
    """``delta`` as a float, if it is a usable δ for ``dataset_size`` examples:
    ``0 < δ < 1/N``.

    Example:
        >>> check_delta(delta=1e-6, dataset_size=100_000)
        1e-06
        >>> try:
        ...     check_delta(delta=1e-5, dataset_size=100_000, field="target_delta")
        ... except ConfigError as exc:
        ...     exc.field
        'target_delta'

    Raises:
        ConfigError: (``field``) not a finite real in (0, 1/N); the message names δ, N,
            1/N and the default for N. (``dataset_size``) not an integer ≥ 1.
    """
    n = _dataset_size(dataset_size, "dataset_size")
    value = _delta_value(delta, field)
    if value >= 1.0 / n:
        raise ConfigError(
            field,
            f"must be < 1/N = {1.0 / n:.3g} (N = {n}), got {value!r}: with δ ≥ 1/N, "
            "publishing one randomly chosen example verbatim satisfies (ε, δ)-DP, so the "
            f"guarantee protects no one; the default for N = {n} is min(1e-5, N^-1.1) = "
            f"{default_delta(n):.3g}",
        )
    return value


def check_budget_delta(delta: float, *, field: str = "delta") -> float:
    """``delta`` as a float, if a privacy budget may use it: ``0 < δ < 0.01``
    (:data:`MAX_BUDGET_DELTA`). Each run is still checked against its own N
    (:func:`check_delta`) when it is admitted.

    Raises:
        ConfigError: (``field``) not a finite real in (0, 0.01).
    """
    value = _delta_value(delta, field)
    if value >= MAX_BUDGET_DELTA:
        raise ConfigError(
            field,
            f"must be < {MAX_BUDGET_DELTA:g}, got {value!r}: δ must be below 1/N for every "
            f"dataset the budget serves, so δ ≥ {MAX_BUDGET_DELTA:g} could only serve "
            "datasets of fewer than 100 examples (and lets the guarantee fail outright "
            "with probability ≥ 1 %); typical values are 1e-5 to 1e-7, below 1/N",
        )
    return value


def _delta_value(delta: object, field: str) -> float:
    if isinstance(delta, bool) or not isinstance(delta, Real):
        raise ConfigError(field, f"must be a real number, got {type(delta).__name__}")
    value = float(delta)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ConfigError(field, f"must be in (0, 1/N), got {value!r}")
    return value


def _dataset_size(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(field, f"must be an integer, got {type(value).__name__}")
    if int(value) < 1:
        raise ConfigError(field, f"must be ≥ 1, got {int(value)}")
    return int(value)


__all__ = [
    "DEFAULT_DELTA_CEILING",
    "MAX_BUDGET_DELTA",
    "check_budget_delta",
    "check_delta",
    "default_delta",
]
