"""Noise calibration: the smallest σ that keeps a planned run within a target ε.

Pure and stateless, built only on :func:`~tensafe.privacy.epsilon.compute_epsilon`.

Why not Opacus' ``get_noise_multiplier``: it bisects with an *absolute* ε
tolerance (0.01 by default, a 10 % slack at ε = 0.1), starts its bracket at
σ = 20 and halves down, and with the PRV accountant its low-σ probes ask for
enormous discretization grids (Opacus issue #602). Here the bisection runs on σ
with a relative tolerance, in log space, and the PRV search starts from the
(cheap) RDP calibration, which is a guaranteed upper end because our PRV ε never
exceeds the RDP ε for the same σ.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tensafe.errors import ConfigError
from tensafe.privacy.epsilon import (
    AccountantName,
    compute_epsilon,
    get_accountant_math,
)

#: Bisection stops when ``σ_high / σ_low − 1`` is at most this.
SIGMA_RELATIVE_TOLERANCE = 1e-3
#: Largest σ tried; a target that needs more is refused.
MAX_NOISE_MULTIPLIER = 1e4
#: Smallest σ tried; targets met even at this σ get it (more noise than needed).
MIN_NOISE_MULTIPLIER = 1e-3


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "prv",
) -> float:
    """Smallest σ (to a relative tolerance of 1e-3, rounded up) whose ε fits the target.

    Promise: the returned σ was evaluated with
    ``compute_epsilon(history=[(σ, sample_rate, steps)], delta=target_delta,
    accountant=accountant)`` and that ε is ``≤ target_epsilon``. A σ about
    0.1 % smaller would exceed the target, so ε at the returned σ is within a
    fraction of a percent of ``target_epsilon`` (unless σ hit
    :data:`MIN_NOISE_MULTIPLIER`).

    Raises:
        ConfigError: ``target_epsilon`` not finite > 0; ``target_delta`` not in
            (0, 1); ``sample_rate`` not in (0, 1]; ``steps`` not an integer ≥ 1;
            ``accountant`` unknown; or the target needs σ > :data:`MAX_NOISE_MULTIPLIER`
            (field ``"target_epsilon"``).
    """
    get_accountant_math(accountant)
    eps_target = _positive_finite(target_epsilon, "target_epsilon")
    delta = _positive_finite(target_delta, "target_delta")
    if delta >= 1.0:
        raise ConfigError("target_delta", f"must be in (0, 1), got {delta!r}")
    q = _positive_finite(sample_rate, "sample_rate")
    if q > 1.0:
        raise ConfigError("sample_rate", f"must be in (0, 1], got {q!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", f"must be an integer ≥ 1, got {steps!r}")

    def fits_with(name: AccountantName) -> Callable[[float], bool]:
        def fits(sigma: float) -> bool:
            eps = compute_epsilon(history=[(sigma, q, steps)], delta=delta, accountant=name)
            return eps <= eps_target

        return fits

    # RDP is cheap and (for PRV, by construction) never below the requested
    # accountant's ε, so its σ is a fitting upper end; it is checked anyway.
    fits_rdp = fits_with("rdp")
    sigma_rdp = _bisect_down(fits_at=fits_rdp, high=_upper_end(fits_at=fits_rdp, start=1.0))
    fits = fits_with(accountant)
    return _bisect_down(fits_at=fits, high=_upper_end(fits_at=fits, start=sigma_rdp))


def _upper_end(*, fits_at: Callable[[float], bool], start: float) -> float:
    """A σ that fits, found by doubling from ``start``."""
    sigma = start
    while not fits_at(sigma):
        sigma *= 2.0
        if sigma > MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                "target_epsilon",
                f"unreachable: needs noise_multiplier > {MAX_NOISE_MULTIPLIER:g}; "
                "raise target_epsilon or lower planned_steps / sample_rate",
            )
    return sigma


def _bisect_down(*, fits_at: Callable[[float], bool], high: float) -> float:
    """Smallest fitting σ ≤ ``high`` (``high`` fits) to the relative tolerance.

    Brackets by shrinking 20 % at a time, then bisects geometrically; always
    returns the fitting (upper) end of the bracket.
    """
    low = high
    while True:  # find a σ that does not fit
        low = max(low * 0.8, MIN_NOISE_MULTIPLIER)
        if not fits_at(low):
            break
        high = low
        if low <= MIN_NOISE_MULTIPLIER:
            return high
    while high / low - 1.0 > SIGMA_RELATIVE_TOLERANCE:
        mid = math.sqrt(low * high)
        if fits_at(mid):
            high = mid
        else:
            low = mid
    return high


def _positive_finite(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"must be a real number, got {type(value).__name__}")
    result = float(value)
    if not (math.isfinite(result) and result > 0.0):
        raise ConfigError(field, f"must be finite and > 0, got {result!r}")
    return result


__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "MIN_NOISE_MULTIPLIER",
    "SIGMA_RELATIVE_TOLERANCE",
    "calibrate_noise_multiplier",
]
