"""The two independent ε references of the audit, evaluated to a stated accuracy.

Neither shares code with TenSafe's accountant (:mod:`tensafe.privacy.epsilon`):

* **Google dp-accounting PLD** (:func:`converged_pld_epsilon`). Its pessimistic estimate
  is an upper bound on the true ε at *every* discretization interval, and tends to it as
  the interval shrinks; how fine it must be depends on the privacy losses being
  resolved. A fixed interval of 1e-4 is fine at q ≥ 0.01, but at q = 1e-4 one step's
  privacy loss is itself of the order of 1e-4 (σ = 1) or 2e-5 (σ = 5), and the estimate
  is 5 % (σ = 1) to 118 % (σ = 5) above the true ε at 10,000 steps. So the interval is
  chosen from the ε being resolved and refined until two successive estimates agree:
  start at :data:`PLD_START_DISCRETIZATION`; each next interval is
  ``min(previous / 2, PLD_RELATIVE_DISCRETIZATION × ε of the previous estimate)``;
  stop when two successive estimates differ by at most ``tolerance`` (0.1 %) and the
  interval is at most ``PLD_RELATIVE_DISCRETIZATION × ε``. The convergence is
  quadratic in the interval (measured: halving it divides the change by about 4), so
  the last estimate is within about a third of ``tolerance`` of the limit. A large ε
  (a demo run, ε ≈ 3.7) stops after two coarse evaluations; a small one (ε ≈ 0.004)
  goes down to an interval near 1e-6.
* **Opacus PRV** (:func:`opacus_prv_interval`): Opacus' ``PRVAccountant`` discretization
  and composition, returning its whole error interval ``(lower, estimate, upper)``. Its
  grid grows as ``1 / eps_error``: at σ = 1, q = 1e-4, 10,000 steps and ``eps_error`` =
  1e-4 Opacus asks for 28 million points (measured: 43 s and 5 GB). The grid is
  therefore capped at :data:`PRV_MAX_DOMAIN_POINTS` (the same cap as TenSafe's own PRV)
  and rounded down to an FFT-friendly length, with a coarser mesh and a proportionally
  larger ``eps_error``: the interval stays valid, only wider.

Because the PLD estimate is pessimistic, stopping early can only make it too high: a
recorded ε that is too low is never missed, at worst a correct one is questioned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
import numpy as np
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.prv import Domain
from scipy.fft import next_fast_len

from tensafe.errors import ConfigError
from tensafe.privacy.epsilon import Segment

#: Default interval of a single :func:`pld_epsilon` evaluation (dp-accounting's own).
DEFAULT_PLD_DISCRETIZATION = 1e-4

#: First interval of :func:`converged_pld_epsilon` (coarse: large ε stop here).
PLD_START_DISCRETIZATION = 1e-3

#: The interval is refined to at most this fraction of the ε it resolves.
PLD_RELATIVE_DISCRETIZATION = 3e-4

#: Two successive PLD estimates must agree within this relative change (0.1 %).
PLD_CONVERGENCE_TOLERANCE = 1e-3

#: Refinement gives up (``converged=False``) below this interval or after this many
#: evaluations; the last estimate is still an upper bound.
PLD_MIN_DISCRETIZATION = 1e-8
PLD_MAX_EVALUATIONS = 16

#: Largest Opacus PRV grid evaluated; a finer requested ``eps_error`` is coarsened.
PRV_MAX_DOMAIN_POINTS = 1 << 22


@dataclass(frozen=True, kw_only=True)
class PLDReference:
    """ε by dp-accounting PLD (pessimistic) at the last of a sequence of intervals.

    Attributes:
        epsilon: the estimate at ``value_discretization_interval``; an upper bound on ε.
        value_discretization_interval: the last (finest) interval evaluated.
        relative_change: ``|previous − epsilon| / epsilon`` against the previous, coarser
            interval (``inf`` after a single evaluation).
        evaluations: how many intervals were evaluated.
        converged: the stopping rule was met (see the module docstring).
    """

    epsilon: float
    value_discretization_interval: float
    relative_change: float
    evaluations: int
    converged: bool


@dataclass(frozen=True, kw_only=True)
class PRVReference:
    """Opacus PRV's error interval for ε: ``lower ≤ true ε ≤ upper``.

    Attributes:
        lower: ``ε(δ + δ_err) − eps_error``.
        estimate: Opacus' point estimate ``ε(δ)``.
        upper: ``ε(δ − δ_err) + eps_error`` (what ``PRVAccountant.get_epsilon`` returns).
        eps_error: the ε error used (the requested one, coarsened to fit the grid cap).
    """

    lower: float
    estimate: float
    upper: float
    eps_error: float


def pld_epsilon(
    history: Sequence[Segment],
    *,
    delta: float,
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """ε of ``history`` at ``delta`` by Google ``dp_accounting`` PLD (pessimistic), at
    one fixed ``value_discretization_interval``; an upper bound on ε, whose excess
    depends on the interval (see :func:`converged_pld_epsilon`).

    Raises:
        ConfigError: (``history``) empty.
    """
    if not history:
        raise ConfigError("history", "must not be empty")
    accountant = dp_accounting.pld.PLDAccountant(
        value_discretization_interval=value_discretization_interval
    )
    for sigma, q, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def converged_pld_epsilon(
    history: Sequence[Segment],
    *,
    delta: float,
    tolerance: float = PLD_CONVERGENCE_TOLERANCE,
) -> PLDReference:
    """ε of ``history`` at ``delta`` by PLD, refining the discretization interval until
    two successive estimates agree within ``tolerance`` (rule in the module docstring).

    Example:
        >>> ref = converged_pld_epsilon([(5.0, 1e-4, 10_000)], delta=1e-5)
        >>> ref.converged, round(ref.epsilon, 5), ref.value_discretization_interval < 2e-6
        (True, 0.00445, True)

    Raises:
        ConfigError: (``history``) empty; (``tolerance``) not in (0, 0.01].
    """
    if not history:
        raise ConfigError("history", "must not be empty")
    if not 0.0 < tolerance <= 0.01:
        raise ConfigError("tolerance", f"must be in (0, 0.01], got {tolerance!r}")
    interval = PLD_START_DISCRETIZATION
    epsilon = pld_epsilon(history, delta=delta, value_discretization_interval=interval)
    change, evaluations = math.inf, 1
    while epsilon > 0.0 and evaluations < PLD_MAX_EVALUATIONS:
        finer = interval / 2.0
        if math.isfinite(epsilon):
            finer = min(finer, PLD_RELATIVE_DISCRETIZATION * epsilon)
        if finer < PLD_MIN_DISCRETIZATION:
            break
        refined = pld_epsilon(history, delta=delta, value_discretization_interval=finer)
        evaluations += 1
        change = abs(epsilon - refined) / refined if refined > 0.0 else 0.0
        if not math.isfinite(refined):
            change = math.inf
        interval, epsilon = finer, refined
        if change <= tolerance and interval <= PLD_RELATIVE_DISCRETIZATION * epsilon:
            break
    converged = epsilon == 0.0 or (
        change <= tolerance and interval <= PLD_RELATIVE_DISCRETIZATION * epsilon
    )
    return PLDReference(
        epsilon=epsilon,
        value_discretization_interval=interval,
        relative_change=change,
        evaluations=evaluations,
        converged=converged,
    )


class _GridCappedPRVAccountant(PRVAccountant):
    """Opacus' ``PRVAccountant`` with its grid shortened, where needed, to at most
    ``max_points`` and to an even FFT-friendly (2·3·5-smooth) length.

    The grid keeps Opacus' half-width and layout (``t_min = −(n/2 − 1)·dt``,
    ``t_max = (n/2)·dt``); only the mesh ``dt`` grows, and with it the ε error, by
    :attr:`mesh_scale` (Opacus' mesh is proportional to ``eps_error``). Opacus' own
    lengths are arbitrary, and pocketfft on such lengths is several times slower.
    """

    def __init__(self, history: Sequence[Segment], *, max_points: int) -> None:
        super().__init__()
        self.history = [(sigma, q, steps) for sigma, q, steps in history]
        self.max_points = max_points
        self.mesh_scale = 1.0

    def _get_domain(self, prvs, num_self_compositions, eps_error, delta_error):  # type: ignore[no-untyped-def]
        domain = super()._get_domain(
            prvs=prvs,
            num_self_compositions=num_self_compositions,
            eps_error=eps_error,
            delta_error=delta_error,
        )
        size = _fast_even_length_at_most(min(domain.size, self.max_points))
        if size == domain.size:
            return domain
        half = size // 2
        mesh = -domain.t_min / (half - 1)  # still covers [t_min, t_max]
        self.mesh_scale = mesh / domain.dt
        return Domain(t_min=-(half - 1) * mesh, t_max=half * mesh, size=size)


def _fast_even_length_at_most(n: int) -> int:
    """Largest even length ≤ ``n`` whose real FFT is fast (``n`` ≥ 2)."""
    size = n - n % 2
    while size > 2 and next_fast_len(size, real=True) != size:
        size -= 2
    return size


def opacus_prv_interval(
    history: Sequence[Segment],
    *,
    delta: float,
    eps_error: float,
    max_domain_points: int = PRV_MAX_DOMAIN_POINTS,
) -> PRVReference:
    """Opacus ``PRVAccountant``'s error interval for ε of ``history`` at ``delta``
    (``delta_error`` = δ/1000, Opacus' default). Where the grid for ``eps_error`` would
    exceed ``max_domain_points`` or have a slow FFT length, the mesh is made coarser
    and ``eps_error`` with it (see :class:`PRVReference`).

    Raises:
        ConfigError: (``history``) empty.
        RuntimeError, ValueError, FloatingPointError: Opacus' numerics failed.
    """
    if not history:
        raise ConfigError("history", "must not be empty")
    accountant = _GridCappedPRVAccountant(history, max_points=max_domain_points)
    delta_error = delta / 1000.0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        dprv = accountant._get_dprv(eps_error=eps_error, delta_error=delta_error)
        eps_error *= accountant.mesh_scale
        lower, estimate, upper = dprv.compute_epsilon(delta, delta_error, eps_error)
    return PRVReference(
        lower=float(lower), estimate=float(estimate), upper=float(upper), eps_error=eps_error
    )


def opacus_prv_epsilon(history: Sequence[Segment], *, delta: float, eps_error: float) -> float:
    """ε of ``history`` at ``delta`` by Opacus' ``PRVAccountant``: the upper end of
    :func:`opacus_prv_interval` (an upper bound on ε).

    Raises:
        ConfigError: (``history``) empty.
    """
    return opacus_prv_interval(history, delta=delta, eps_error=eps_error).upper


__all__ = [
    "DEFAULT_PLD_DISCRETIZATION",
    "PLD_CONVERGENCE_TOLERANCE",
    "PLD_MAX_EVALUATIONS",
    "PLD_MIN_DISCRETIZATION",
    "PLD_RELATIVE_DISCRETIZATION",
    "PLD_START_DISCRETIZATION",
    "PRV_MAX_DOMAIN_POINTS",
    "PLDReference",
    "PRVReference",
    "converged_pld_epsilon",
    "opacus_prv_epsilon",
    "opacus_prv_interval",
    "pld_epsilon",
]
