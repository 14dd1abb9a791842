"""A cached, conservative ε schedule: fast upper bounds for budget checks.

One PRV evaluation costs tens to hundreds of milliseconds (more for long or
heterogeneous histories), far too slow to run before every training step. This
module answers "what is ε after these steps?" from a cache, with a value that may
only **over**-estimate the ε that :func:`~tensafe.privacy.epsilon.compute_epsilon`
would give.

How
---
A dataset's steps are described by their *step counts*: how many steps were taken
with each distinct ``(noise_multiplier σ, sample_rate q)``. The ε of a composition
of Poisson-subsampled Gaussian steps does not depend on their order (the privacy
loss distribution of a composition is the convolution of the individual ones,
which commutes), so these counts determine ε.

1. **Round up.** Every count ``n`` is replaced by the next point ``G(n) ≥ n`` of a
   fixed grid (:meth:`EpsilonSchedule.grid_point`): every integer up to
   ``dense_until = ceil(1/s)``, then ``floor(dense_until · (1 + s)^k)`` for
   ``k = 1, 2, …``, where ``s`` is the relative spacing. Hence ``n ≤ G(n) < n(1 + s)``.
2. **Evaluate exactly at the rounded counts** with the registered accountant
   (``compute_epsilon``), and cache the result by the rounded counts.

*Soundness.* ε is non-decreasing in every step count: composing one more mechanism
cannot make the composition more private (the shorter composition is a
post-processing of the longer one). So ε(rounded counts) ≥ ε(true counts), and the
accountant's value at the rounded counts is a valid upper bound (it is itself an
upper bound of the true ε at the rounded counts).

*Tightness.* ``G(n)/n < 1 + s`` for every count. Where ε grows at most linearly in
the step counts (``ε(λ·n) ≤ λ·ε(n)`` for λ ≥ 1), the over-estimate is below ``s``.
That holds exactly for the RDP bound (``ε = min_α Σ n_c·r_c(α) + c(α)`` with
``c(α) ≥ 0`` at the optimum) and for Gaussian DP, the central-limit form of DP-SGD
(``ε(μ)`` with ``μ² ∝ n`` grows like ``n/2σ² + z·√n/σ``); where it could fail (the
first steps of a small-q run, where ε can rise from 0), every count is a grid point
(``n ≤ dense_until``) and there is no rounding. Measured with PRV on σ ∈ [0.5, 10],
q ∈ [0.001, 1], n ≤ 10⁴: the over-estimate is at most 0.9·s and typically s/2
(see ``bench/epsilon_schedule.py``).

*Cost.* A count's rounded value changes ``dense_until + ln(n/dense_until)/ln(1+s)``
times up to ``n`` (about 1,700 times up to 10,000 steps at the default
``s = 0.25 %``), so a long run needs one evaluation every ~25 steps near 10,000
steps, and a cache lookup (microseconds) otherwise. With an ``executor``, the next
grid point is computed in the background (:meth:`EpsilonSchedule.prefetch`) while
the training step runs.

The RDP accountant is cheap (microseconds) and linear, so its default spacing is 0:
no rounding, exact values.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from numbers import Real
from types import MappingProxyType

from tensafe.errors import ConfigError
from tensafe.privacy.epsilon import (
    AccountantName,
    Segment,
    compute_epsilon,
    get_accountant_math,
)

StepClass = tuple[float, float]
"""A kind of step: ``(noise_multiplier σ, sample_rate q)``."""

StepCounts = Mapping[StepClass, int]
"""How many steps were taken with each ``(σ, q)``; the order of steps is irrelevant."""

#: Default relative grid spacing ``s`` per accountant. PRV: at most +0.25 % on ε,
#: far inside the 1 % the audit allows. RDP: exact (it is cheap).
DEFAULT_RELATIVE_SPACING: Mapping[str, float] = MappingProxyType({"prv": 2.5e-3, "rdp": 0.0})

#: Largest spacing accepted: beyond it the over-estimate would be noticeable.
MAX_RELATIVE_SPACING = 0.05

_SPEC_PREFIX = "geometric:"


@dataclass(frozen=True)
class ScheduleStats:
    """Counters of an :class:`EpsilonSchedule` (for benchmarks and monitoring).

    Attributes:
        hits: lookups answered from the cache.
        evaluations: ε evaluations run (foreground or background).
        waits: lookups that waited for an evaluation already running in another thread.
        evaluation_seconds: total wall time spent in evaluations.
    """

    hits: int
    evaluations: int
    waits: int
    evaluation_seconds: float


class EpsilonSchedule:
    """Conservative, cached ε of step counts at one δ with one accountant.

    Thread-safe: the cache is guarded by a lock that is never held during an ε
    evaluation; concurrent requests for the same value wait for one evaluation.

    Example:
        >>> sched = EpsilonSchedule(delta=1e-5, accountant="prv")
        >>> sched.grid_point(100), sched.grid_point(10_000)
        (100, 10021)
        >>> counts = {(1.0, 0.01): 1000}
        >>> sched.epsilon(counts) >= sched.exact_epsilon(counts)
        True

    Args:
        delta: δ of every ε, in (0, 1).
        accountant: registered accountant name (``"prv"`` or ``"rdp"``).
        relative_spacing: grid spacing ``s`` in [0, :data:`MAX_RELATIVE_SPACING`];
            ``None`` takes :data:`DEFAULT_RELATIVE_SPACING` for the accountant.
            ``0`` disables rounding (every value exact).
        executor: where :meth:`prefetch` runs evaluations; ``None`` disables
            prefetching (it becomes a no-op). The schedule never shuts it down.
        cache_size: most cached values kept (least recently used dropped).

    Raises:
        ConfigError: an argument is out of range (``field`` names it).
    """

    def __init__(
        self,
        *,
        delta: float,
        accountant: AccountantName = "prv",
        relative_spacing: float | None = None,
        executor: Executor | None = None,
        cache_size: int = 4096,
    ) -> None:
        get_accountant_math(accountant)
        if isinstance(delta, bool) or not isinstance(delta, Real) or not 0.0 < delta < 1.0:
            raise ConfigError("delta", f"must be a real number in (0, 1), got {delta!r}")
        if relative_spacing is None:
            relative_spacing = DEFAULT_RELATIVE_SPACING[accountant]
        if (
            isinstance(relative_spacing, bool)
            or not isinstance(relative_spacing, Real)
            or not 0.0 <= relative_spacing <= MAX_RELATIVE_SPACING
        ):
            raise ConfigError(
                "relative_spacing",
                f"must be a real number in [0, {MAX_RELATIVE_SPACING}], got {relative_spacing!r}",
            )
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 16:
            raise ConfigError("cache_size", f"must be an integer ≥ 16, got {cache_size!r}")
        self._delta = float(delta)
        self._accountant: AccountantName = accountant
        self._spacing = float(relative_spacing)
        self._dense_until = math.ceil(1.0 / self._spacing) if self._spacing > 0 else 0
        self._executor = executor
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Segment, ...], float] = OrderedDict()
        self._inflight: dict[tuple[Segment, ...], Future[float]] = {}
        self._hits = 0
        self._evaluations = 0
        self._waits = 0
        self._seconds = 0.0

    # ------------------------------------------------------------------ identity

    @property
    def delta(self) -> float:
        """δ of every ε this schedule returns."""
        return self._delta

    @property
    def accountant(self) -> AccountantName:
        """The accountant that evaluates ε."""
        return self._accountant

    @property
    def relative_spacing(self) -> float:
        """The grid spacing ``s``; 0 means no rounding."""
        return self._spacing

    @property
    def prefetching(self) -> bool:
        """Whether :meth:`prefetch` has an executor to run on."""
        return self._executor is not None

    @property
    def spec(self) -> str:
        """The rounding rule as a short string, e.g. ``"geometric:0.0025"``.

        Stored with every ledger row (among the library versions), so a replay can
        rebuild the same schedule with :meth:`from_spec`.
        """
        return f"{_SPEC_PREFIX}{self._spacing!r}"

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        delta: float,
        accountant: AccountantName,
        executor: Executor | None = None,
    ) -> EpsilonSchedule:
        """The schedule described by :attr:`spec`.

        Raises:
            ConfigError: (``spec``) not of the form ``"geometric:<spacing>"``; or as
                the constructor.
        """
        if not isinstance(spec, str) or not spec.startswith(_SPEC_PREFIX):
            raise ConfigError("spec", f"must look like 'geometric:0.0025', got {spec!r}")
        try:
            spacing = float(spec[len(_SPEC_PREFIX) :])
        except ValueError:
            raise ConfigError("spec", f"bad spacing in {spec!r}") from None
        return cls(delta=delta, accountant=accountant, relative_spacing=spacing, executor=executor)

    # ------------------------------------------------------------------ the grid

    def grid_point(self, steps: int) -> int:
        """The smallest grid point ``G ≥ steps``; ``steps ≤ G < steps·(1 + s)``.

        Every integer up to ``ceil(1/s)`` is a grid point, then
        ``floor(ceil(1/s)·(1 + s)^k)``. With ``s = 0`` every integer is one.

        Raises:
            ConfigError: (``steps``) not an integer ≥ 0.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError("steps", f"must be an integer ≥ 0, got {steps!r}")
        if steps <= self._dense_until or self._spacing == 0.0:
            return steps
        ratio = math.log1p(self._spacing)
        k = max(1, math.ceil(math.log(steps / self._dense_until) / ratio))
        # Fix the float estimate of k with the exact comparisons that define G.
        while self._grid(k) < steps:
            k += 1
        while k > 1 and self._grid(k - 1) >= steps:
            k -= 1
        return self._grid(k)

    def _grid(self, k: int) -> int:
        return math.floor(self._dense_until * (1.0 + self._spacing) ** k)

    def rounded(self, counts: StepCounts) -> tuple[Segment, ...]:
        """The history actually evaluated for ``counts``: each count rounded up to its
        grid point, classes sorted by ``(σ, q)``, empty classes dropped.

        Raises:
            ConfigError: a class or count is malformed (see :meth:`exact_history`).
        """
        return tuple(
            (sigma, q, self.grid_point(steps)) for sigma, q, steps in self.exact_history(counts)
        )

    @staticmethod
    def exact_history(counts: StepCounts) -> tuple[Segment, ...]:
        """``counts`` as a canonical history: sorted by ``(σ, q)``, zero counts dropped.

        Raises:
            ConfigError: (``counts``) not a mapping of ``(σ, q)`` to integers ≥ 0.
        """
        if not isinstance(counts, Mapping):
            raise ConfigError("counts", "must be a mapping of (noise_multiplier, sample_rate)")
        out: list[Segment] = []
        for cls, steps in counts.items():
            if not (isinstance(cls, tuple) and len(cls) == 2):
                raise ConfigError("counts", f"keys must be (σ, q) pairs, got {cls!r}")
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ConfigError("counts", f"counts must be integers ≥ 0, got {steps!r}")
            if steps:
                out.append((float(cls[0]), float(cls[1]), steps))
        out.sort()
        return tuple(out)

    # ------------------------------------------------------------------ values

    def epsilon(self, counts: StepCounts) -> float:
        """Conservative ε of ``counts``: the accountant's ε at the rounded counts.

        Never below ``exact_epsilon(counts)`` (ε is monotone in every count) and
        below ``(1 + s)·exact_epsilon(counts)`` in the regimes described in the
        module docstring. Cached; blocks while evaluating (or while another thread
        evaluates the same value).

        Raises:
            ConfigError: malformed counts (σ must be ≥ 0 and finite, q in [0, 1]).
        """
        return self._value(self.rounded(counts))

    def exact_epsilon(self, counts: StepCounts) -> float:
        """The accountant's ε of ``counts`` without rounding (cached, can be slow).

        Raises:
            ConfigError: as :meth:`epsilon`.
        """
        return self._value(self.exact_history(counts))

    def cached_epsilon(self, counts: StepCounts) -> float | None:
        """:meth:`epsilon` if it is already cached, else ``None``; never evaluates.

        Raises:
            ConfigError: as :meth:`epsilon`.
        """
        key = self.rounded(counts)
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
                self._hits += 1
            return value

    def prefetch(self, counts: StepCounts) -> bool:
        """Start evaluating :meth:`epsilon` of ``counts`` on the executor, if needed.

        Returns ``True`` if an evaluation was submitted, ``False`` if the value is
        cached, already being evaluated, or there is no executor. Errors of the
        background evaluation are not raised here; a later :meth:`epsilon` call for
        the same counts evaluates again and raises them.

        Raises:
            ConfigError: as :meth:`epsilon` (checked before submitting).
        """
        if self._executor is None:
            return False
        key = self.rounded(counts)
        with self._lock:
            if key in self._cache or key in self._inflight:
                return False
        self._executor.submit(self._background, key)
        return True

    def stats(self) -> ScheduleStats:
        """A snapshot of the counters."""
        with self._lock:
            return ScheduleStats(
                hits=self._hits,
                evaluations=self._evaluations,
                waits=self._waits,
                evaluation_seconds=self._seconds,
            )

    def __repr__(self) -> str:
        return (
            f"EpsilonSchedule(delta={self._delta!r}, accountant={self._accountant!r}, "
            f"relative_spacing={self._spacing!r})"
        )

    # ------------------------------------------------------------------ internals

    def _background(self, key: tuple[Segment, ...]) -> None:
        # An error is not lost: the next foreground lookup evaluates again and raises it.
        with contextlib.suppress(Exception):
            self._value(key)

    def _value(self, key: tuple[Segment, ...]) -> float:
        """ε of an (already canonical) history, from the cache or evaluated once."""
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                return value
            pending = self._inflight.get(key)
            if pending is None:
                pending = Future()
                self._inflight[key] = pending
                owner = True
            else:
                self._waits += 1
                owner = False
        if not owner:
            return pending.result()
        started = time.perf_counter()
        try:
            value = compute_epsilon(history=key, delta=self._delta, accountant=self._accountant)
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            pending.set_exception(exc)
            raise
        elapsed = time.perf_counter() - started
        with self._lock:
            self._cache[key] = value
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            del self._inflight[key]
            self._evaluations += 1
            self._seconds += elapsed
        pending.set_result(value)
        return value


__all__ = [
    "DEFAULT_RELATIVE_SPACING",
    "MAX_RELATIVE_SPACING",
    "EpsilonSchedule",
    "ScheduleStats",
    "StepClass",
    "StepCounts",
]
