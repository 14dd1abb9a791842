"""Input checks shared by the budget's methods and its state loader.

Each returns the value normalised (floats) or raises :class:`~tensafe.errors.ConfigError`
naming the offending field.
"""

from __future__ import annotations

import math
from numbers import Real

from tensafe.errors import ConfigError
from tensafe.privacy.schedule import StepClass


def validate_cap(value: object, field: str) -> float:
    """``value`` as a cap: a real number (not a bool), finite and ≥ 0.

    Raises:
        ConfigError: (``field``) it is not.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(field, f"must be a real number, got {type(value).__name__}")
    cap = float(value)
    if not (math.isfinite(cap) and cap >= 0.0):
        raise ConfigError(field, f"must be finite and ≥ 0, got {cap!r}")
    return cap


def validate_step(
    run_id: object, noise_multiplier: object, sample_rate: object, *, field: str = ""
) -> tuple[str, StepClass]:
    """One step's inputs as ``(run_id, (σ, q))``: a non-empty run id, σ finite ≥ 0,
    q in (0, 1] (reals, not bools).

    Raises:
        ConfigError: one is invalid; the field is ``run_id``, ``noise_multiplier`` or
            ``sample_rate``, prefixed by ``field`` and a dot when ``field`` is given.
    """
    prefix = f"{field}." if field else ""
    if not isinstance(run_id, str) or not run_id:
        raise ConfigError(f"{prefix}run_id", "must be a non-empty string")
    for name, value in (("noise_multiplier", noise_multiplier), ("sample_rate", sample_rate)):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ConfigError(f"{prefix}{name}", f"must be a real number, got {value!r}")
    sigma, q = float(noise_multiplier), float(sample_rate)  # type: ignore[arg-type]
    if not (math.isfinite(sigma) and sigma >= 0.0):
        raise ConfigError(f"{prefix}noise_multiplier", f"must be finite and ≥ 0, got {sigma!r}")
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"{prefix}sample_rate", f"must be in (0, 1], got {q!r}")
    return run_id, (sigma, q)


__all__ = ["validate_cap", "validate_step"]
