"""The privacy budget of one dataset: every run's steps, composed, against a cap.

Pure and in memory: no database, no clock. The server keeps one
:class:`DatasetBudget` per (tenant, dataset), rebuilds it from the ledger after a
restart (:meth:`DatasetBudget.from_state`), and asks it, before the noise of a step
is drawn, whether the step fits (:meth:`DatasetBudget.check_step`).

Which composition, and why it is an upper bound
-----------------------------------------------
Every DP-SGD step of every run on the dataset is one application of the
Poisson-subsampled Gaussian mechanism to that dataset: each example is included
with probability ``q`` and the clipped sum receives N(0, σ²C²). Later steps (of the
same run or of another run started after looking at earlier models) may depend on
the outputs of earlier ones, so the steps form an *adaptive sequential
composition*. The adaptive composition theorem (for privacy loss distributions /
PRVs as for RDP) bounds the privacy loss of any individual by the composition of
**all** steps ever taken on the dataset, whatever run took them. The dataset's ε is
therefore ε of the concatenated history of all its runs — and since a composition
does not depend on the order of its parts (its privacy loss distribution is the
convolution of theirs), ε of the multiset of ``(σ, q)`` step counts.

Runs that train on disjoint subsets, or on a subset at rate q, are bounded too: an
individual outside a run's data is never sampled by it (its steps cost that person
nothing), one inside is sampled with probability ``q``; counting every step for
every individual can only over-count. Parallel composition would be tighter for
disjoint subsets; we do not rely on knowing which rows a run used.

Conservative ε
--------------
Budget decisions use :meth:`EpsilonSchedule.epsilon`, which rounds each step count
up to a geometric grid before evaluating (see :mod:`tensafe.privacy.schedule`): an
upper bound on the exact ε, at most ``s = 0.25 %`` above it with PRV, and cached, so
a check costs microseconds except when a count crosses a grid point.
:meth:`DatasetBudget.exact_epsilon` gives the un-rounded value for reports.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from numbers import Real
from types import MappingProxyType
from typing import TypeVar

from tensafe.errors import BudgetExceededError, ConfigError
from tensafe.privacy.epsilon import AccountantName, Segment, get_accountant_math
from tensafe.privacy.schedule import EpsilonSchedule, StepClass, StepCounts

#: Version of the :meth:`DatasetBudget.export_state` layout.
BUDGET_STATE_FORMAT = 1

#: Libraries whose versions shape a recorded ε (read from package metadata).
ACCOUNTING_LIBRARIES: tuple[str, ...] = ("tensafe", "opacus", "numpy", "scipy")

_T = TypeVar("_T")


def accounting_versions(schedule: EpsilonSchedule) -> dict[str, str]:
    """What computed a recorded ε: library versions, Python, and the schedule's rule.

    Keys: the installed :data:`ACCOUNTING_LIBRARIES`, ``"python"``, and
    ``"epsilon_schedule"`` (:attr:`EpsilonSchedule.spec`), which a replay needs to
    reproduce conservative values exactly. Meant for the ledger's
    ``library_versions``.
    """
    versions: dict[str, str] = {}
    for name in ACCOUNTING_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    versions["epsilon_schedule"] = schedule.spec
    return versions


@dataclass(frozen=True, kw_only=True)
class BudgetDecision:
    """Whether one more step fits the dataset's budget (``epsilon_after ≤ cap``).

    All ε are conservative (see :meth:`EpsilonSchedule.epsilon`) and at the budget's δ.

    Attributes:
        allowed: the step keeps the dataset's ε within the cap.
        run_id: the run asking.
        step: the run's step number this step would get (1-based).
        noise_multiplier: σ of the step.
        sample_rate: q of the step.
        epsilon_before: the dataset's ε now.
        epsilon_after: the dataset's ε if the step were taken.
        epsilon_step: ε of this one step alone.
        epsilon_run: the run's own ε now (unchanged by a refusal).
        cap: the cap in force.
    """

    allowed: bool
    run_id: str
    step: int
    noise_multiplier: float
    sample_rate: float
    epsilon_before: float
    epsilon_after: float
    epsilon_step: float
    epsilon_run: float
    cap: float


@dataclass(frozen=True, kw_only=True)
class StepCharge:
    """A step recorded against the budget; the numbers its ledger row carries.

    Attributes:
        run_id: the run that took the step.
        step: the run's step number (1-based).
        noise_multiplier: σ of the step.
        sample_rate: q of the step.
        epsilon_step: ε of this one step alone.
        epsilon_run_total: the run's ε after the step (conservative).
        epsilon_dataset_total: the dataset's ε after the step (conservative, ≤ cap).
        cap: the cap in force.
    """

    run_id: str
    step: int
    noise_multiplier: float
    sample_rate: float
    epsilon_step: float
    epsilon_run_total: float
    epsilon_dataset_total: float
    cap: float


@dataclass(frozen=True, kw_only=True)
class CapChange:
    """A change of the cap, for the ``budget_changed`` ledger row.

    Attributes:
        previous_cap: the cap before.
        new_cap: the cap after.
        epsilon_spent: the dataset's (conservative) ε when the change was made.
    """

    previous_cap: float
    new_cap: float
    epsilon_spent: float


class DatasetBudget:
    """The ε budget of one dataset, shared by all runs that train on it.

    Thread-safe: state changes happen under one lock; ε evaluations (the slow part)
    run outside it, and a change whose inputs moved meanwhile is re-evaluated, so a
    step is recorded only if ε *including every step recorded before it* fits.

    Example:
        >>> budget = DatasetBudget(dataset_id="ds", epsilon_cap=1.0, delta=1e-5, accountant="rdp")
        >>> decision = budget.check_step(run_id="r1", noise_multiplier=1.0, sample_rate=0.01)
        >>> decision.allowed
        True
        >>> charge = budget.record_step(run_id="r1", noise_multiplier=1.0, sample_rate=0.01)
        >>> charge.step, charge.epsilon_dataset_total == budget.epsilon()
        (1, True)
        >>> restored = DatasetBudget.from_state(budget.export_state())
        >>> restored.histories == budget.histories
        True

    Args:
        dataset_id: the dataset (non-empty string).
        epsilon_cap: the cap on the dataset's ε; finite, ≥ 0.
        delta: δ of every ε of this budget, in (0, 1). Fixed for the budget's life.
        accountant: ``"prv"`` (default) or ``"rdp"``.
        schedule: the ε schedule to use (may be shared by budgets with the same δ
            and accountant); ``None`` creates one with default spacing.
        executor: background evaluations for a schedule created here (ignored when
            ``schedule`` is given); ``None``: no prefetching.

    Raises:
        ConfigError: an argument is invalid (``field`` names it), or ``schedule``
            has another δ or accountant (field ``"schedule"``).
    """

    def __init__(
        self,
        *,
        dataset_id: str,
        epsilon_cap: float,
        delta: float,
        accountant: AccountantName = "prv",
        schedule: EpsilonSchedule | None = None,
        executor: Executor | None = None,
    ) -> None:
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ConfigError("dataset_id", "must be a non-empty string")
        get_accountant_math(accountant)
        cap = _check_cap(epsilon_cap, "epsilon_cap")
        if schedule is None:
            schedule = EpsilonSchedule(delta=delta, accountant=accountant, executor=executor)
        elif schedule.accountant != accountant or schedule.delta != delta:
            raise ConfigError(
                "schedule",
                f"has delta={schedule.delta!r}, accountant={schedule.accountant!r}; "
                f"the budget has delta={delta!r}, accountant={accountant!r}",
            )
        self._dataset_id = dataset_id
        self._accountant: AccountantName = accountant
        self._schedule = schedule
        self._cap = cap
        self._lock = threading.Lock()
        self._histories: dict[str, list[Segment]] = {}
        self._run_counts: dict[str, dict[StepClass, int]] = {}
        self._counts: dict[StepClass, int] = {}

    # ------------------------------------------------------------------ reading

    @property
    def dataset_id(self) -> str:
        """The dataset this budget belongs to."""
        return self._dataset_id

    @property
    def epsilon_cap(self) -> float:
        """The cap in force."""
        return self._cap

    @property
    def delta(self) -> float:
        """δ of every ε of this budget."""
        return self._schedule.delta

    @property
    def accountant(self) -> AccountantName:
        """The accountant evaluating ε."""
        return self._accountant

    @property
    def schedule(self) -> EpsilonSchedule:
        """The conservative ε schedule used for decisions."""
        return self._schedule

    @property
    def histories(self) -> Mapping[str, tuple[Segment, ...]]:
        """Each run's steps in order, as ``(σ, q, num_steps)`` segments (a snapshot)."""
        with self._lock:
            return MappingProxyType({run: tuple(h) for run, h in self._histories.items()})

    def steps(self, run_id: str | None = None) -> int:
        """Steps recorded by ``run_id`` (0 for an unknown run), or by all runs."""
        with self._lock:
            if run_id is None:
                return sum(self._counts.values())
            return sum(self._run_counts.get(run_id, {}).values())

    def epsilon(self) -> float:
        """The dataset's conservative ε: composed over all steps of all runs.

        ``0.0`` before any step. Never below :meth:`exact_epsilon`.
        """
        with self._lock:
            counts = dict(self._counts)
        return self._schedule.epsilon(counts)

    def exact_epsilon(self) -> float:
        """The dataset's ε without rounding (for reports; slow the first time)."""
        with self._lock:
            counts = dict(self._counts)
        return self._schedule.exact_epsilon(counts)

    def run_epsilon(self, run_id: str) -> float:
        """The conservative ε of ``run_id``'s own steps (0.0 for an unknown run)."""
        with self._lock:
            counts = dict(self._run_counts.get(run_id, {}))
        return self._schedule.epsilon(counts)

    def exact_run_epsilon(self, run_id: str) -> float:
        """The ε of ``run_id``'s own steps without rounding (0.0 for an unknown run)."""
        with self._lock:
            counts = dict(self._run_counts.get(run_id, {}))
        return self._schedule.exact_epsilon(counts)

    def remaining(self) -> float:
        """``max(0, cap − epsilon())``: the ε still available to new steps."""
        return max(0.0, self._cap - self.epsilon())

    def epsilon_if_step(self, *, run_id: str, noise_multiplier: float, sample_rate: float) -> float:
        """The dataset's conservative ε if ``run_id`` took one (σ, q) step; records nothing.

        Raises:
            ConfigError: ``run_id`` empty, σ not finite ≥ 0, q not in (0, 1].
        """
        return self.check_step(
            run_id=run_id, noise_multiplier=noise_multiplier, sample_rate=sample_rate
        ).epsilon_after

    def check_step(
        self, *, run_id: str, noise_multiplier: float, sample_rate: float
    ) -> BudgetDecision:
        """Whether ``run_id`` may take one (σ, q) step: ``epsilon_after ≤ cap``.

        Never raises for "over budget": the caller refuses the step (and records
        the refusal). Records nothing. Meant to run before the noise is drawn; the
        authoritative check is repeated atomically by :meth:`record_step`.

        Raises:
            ConfigError: ``run_id`` empty, σ not finite ≥ 0, q not in (0, 1].
        """
        run_id, cls = _check_step(run_id, noise_multiplier, sample_rate)
        with self._lock:
            counts = dict(self._counts)
            run_counts = dict(self._run_counts.get(run_id, {}))
            cap = self._cap
        before = self._schedule.epsilon(counts)
        after = self._schedule.epsilon(_plus_one(counts, cls))
        return BudgetDecision(
            allowed=after <= cap,
            run_id=run_id,
            step=sum(run_counts.values()) + 1,
            noise_multiplier=cls[0],
            sample_rate=cls[1],
            epsilon_before=before,
            epsilon_after=after,
            epsilon_step=self._schedule.epsilon({cls: 1}),
            epsilon_run=self._schedule.epsilon(run_counts),
            cap=cap,
        )

    # ------------------------------------------------------------------ writing

    def record_step(
        self, *, run_id: str, noise_multiplier: float, sample_rate: float
    ) -> StepCharge:
        """Charge one (σ, q) step of ``run_id`` to the budget, if it fits.

        Atomic: the step is recorded only if the dataset's conservative ε after it,
        including every step recorded before, is ≤ the cap. Then, with an
        executor, the next grid point is evaluated in the background.

        Raises:
            BudgetExceededError: the step does not fit; nothing was recorded.
            ConfigError: ``run_id`` empty, σ not finite ≥ 0, q not in (0, 1].
        """
        run_id, cls = _check_step(run_id, noise_multiplier, sample_rate)

        def inputs() -> tuple[StepCounts, ...]:
            return (
                _plus_one(self._counts, cls),
                _plus_one(self._run_counts.get(run_id, {}), cls),
                {cls: 1},
                self._counts,
            )

        def commit(values: tuple[float, ...]) -> StepCharge:
            eps_after, eps_run, eps_step, eps_before = values
            if not eps_after <= self._cap:
                raise BudgetExceededError(
                    f"dataset {self._dataset_id!r}: a step of run {run_id!r} "
                    f"(noise_multiplier={cls[0]:g}, sample_rate={cls[1]:g}) would raise ε "
                    f"from {eps_before:.6g} to {eps_after:.6g}, "
                    f"above the cap {self._cap:.6g} (δ={self.delta:g}); nothing was recorded"
                )
            self._apply(run_id, cls, +1)
            return StepCharge(
                run_id=run_id,
                step=sum(self._run_counts[run_id].values()),
                noise_multiplier=cls[0],
                sample_rate=cls[1],
                epsilon_step=eps_step,
                epsilon_run_total=eps_run,
                epsilon_dataset_total=eps_after,
                cap=self._cap,
            )

        charge = self._evaluate_then(inputs, commit)
        self._prefetch_next(run_id, cls)
        return charge

    def revert_step(self, charge: StepCharge) -> None:
        """Undo :meth:`record_step` whose durable write (ledger row) failed.

        Only the run's latest step can be reverted; other runs' steps recorded
        since do not matter (ε does not depend on the order of steps).

        Raises:
            ConfigError: (``charge``) it is not the latest step of its run.
        """
        cls = (charge.noise_multiplier, charge.sample_rate)
        with self._lock:
            history = self._histories.get(charge.run_id)
            latest = sum(self._run_counts.get(charge.run_id, {}).values())
            if not history or latest != charge.step or history[-1][:2] != cls:
                raise ConfigError(
                    "charge",
                    f"step {charge.step} of run {charge.run_id!r} is not that run's latest "
                    f"recorded step (latest: {latest})",
                )
            self._apply(charge.run_id, cls, -1)

    def raise_cap(self, new_cap: float) -> CapChange:
        """Raise the cap to ``new_cap`` (caps only go up here).

        Raises:
            ConfigError: (``cap``) ``new_cap`` is not finite, or not above the
                current cap (use :meth:`lower_cap` to lower it).
        """
        new = _check_cap(new_cap, "cap")

        def commit(values: tuple[float, ...]) -> CapChange:
            if not new > self._cap:
                raise ConfigError(
                    "cap",
                    f"must be above the current cap {self._cap!r}, got {new!r}; "
                    "lowering a cap is a separate, explicit operation (lower_cap)",
                )
            change = CapChange(previous_cap=self._cap, new_cap=new, epsilon_spent=values[0])
            self._cap = new
            return change

        return self._evaluate_then(lambda: (self._counts,), commit)

    def lower_cap(self, new_cap: float) -> CapChange:
        """Lower the cap to ``new_cap``; refused if more than that is already spent.

        Raises:
            ConfigError: (``cap``) ``new_cap`` is not finite ≥ 0, not below the
                current cap, or below the (conservative) ε already spent.
        """
        new = _check_cap(new_cap, "cap")

        def commit(values: tuple[float, ...]) -> CapChange:
            spent = values[0]
            if not new < self._cap:
                raise ConfigError(
                    "cap", f"must be below the current cap {self._cap!r}, got {new!r}"
                )
            if new < spent:
                raise ConfigError(
                    "cap",
                    f"cannot lower the cap to {new!r}: ε = {spent:.6g} has already been "
                    f"spent on dataset {self._dataset_id!r}",
                )
            change = CapChange(previous_cap=self._cap, new_cap=new, epsilon_spent=spent)
            self._cap = new
            return change

        return self._evaluate_then(lambda: (self._counts,), commit)

    # -------------------------------------------------------------- persistence

    def export_state(self) -> dict[str, object]:
        """A JSON-able snapshot: format, dataset, cap, δ, accountant, schedule rule,
        and every run's history as ``[[σ, q, num_steps], ...]`` (floats exact)."""
        with self._lock:
            return {
                "format": BUDGET_STATE_FORMAT,
                "dataset_id": self._dataset_id,
                "epsilon_cap": self._cap,
                "delta": self.delta,
                "accountant": self._accountant,
                "epsilon_schedule": self._schedule.spec,
                "histories": {
                    run: [[sigma, q, n] for sigma, q, n in history]
                    for run, history in self._histories.items()
                },
            }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, object],
        *,
        schedule: EpsilonSchedule | None = None,
        executor: Executor | None = None,
    ) -> DatasetBudget:
        """Rebuild a budget from :meth:`export_state` output (or from ledger rows).

        The cap is not enforced on the restored steps: the ledger is the truth, and
        a budget restored above its cap simply refuses every further step.

        Raises:
            ConfigError: a key is missing or unknown (field = the key), the format
                is not :data:`BUDGET_STATE_FORMAT`, a value is invalid, or
                ``schedule`` does not match the state's δ, accountant and rule
                (field ``"schedule"``).
        """
        if not isinstance(state, Mapping):
            raise ConfigError("state", "must be a mapping")
        expected = {
            "format",
            "dataset_id",
            "epsilon_cap",
            "delta",
            "accountant",
            "epsilon_schedule",
            "histories",
        }
        for key in state:
            if key not in expected:
                raise ConfigError(str(key), f"unknown key; allowed: {sorted(expected)}")
        for key in sorted(expected):
            if key not in state:
                raise ConfigError(key, "missing")
        if state["format"] != BUDGET_STATE_FORMAT or isinstance(state["format"], bool):
            raise ConfigError("format", f"must be {BUDGET_STATE_FORMAT}, got {state['format']!r}")
        accountant = state["accountant"]
        get_accountant_math(accountant)  # type: ignore[arg-type]
        delta = state["delta"]
        spec = state["epsilon_schedule"]
        if schedule is None:
            schedule = EpsilonSchedule.from_spec(
                spec,  # type: ignore[arg-type]
                delta=delta,  # type: ignore[arg-type]
                accountant=accountant,  # type: ignore[arg-type]
                executor=executor,
            )
        elif schedule.spec != spec:
            raise ConfigError(
                "schedule", f"rule {schedule.spec!r} differs from the state's {spec!r}"
            )
        budget = cls(
            dataset_id=state["dataset_id"],  # type: ignore[arg-type]
            epsilon_cap=state["epsilon_cap"],  # type: ignore[arg-type]
            delta=delta,  # type: ignore[arg-type]
            accountant=accountant,  # type: ignore[arg-type]
            schedule=schedule,
        )
        histories = state["histories"]
        if not isinstance(histories, Mapping):
            raise ConfigError("histories", "must map run ids to histories")
        for run, raw in histories.items():
            where = f"histories[{run!r}]"
            if not isinstance(raw, (list, tuple)):
                raise ConfigError(where, "must be a list of [noise_multiplier, sample_rate, n]")
            for i, segment in enumerate(raw):
                if not isinstance(segment, (list, tuple)) or len(segment) != 3:
                    raise ConfigError(f"{where}[{i}]", "must be [noise_multiplier, sample_rate, n]")
                run_id, step_cls = _check_step(run, segment[0], segment[1], field=f"{where}[{i}]")
                n = segment[2]
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise ConfigError(f"{where}[{i}].num_steps", f"must be an integer ≥ 1: {n!r}")
                budget._apply(run_id, step_cls, n)
        return budget

    def __repr__(self) -> str:
        return (
            f"DatasetBudget(dataset_id={self._dataset_id!r}, epsilon_cap={self._cap!r}, "
            f"delta={self.delta!r}, accountant={self._accountant!r}, runs={len(self._histories)})"
        )

    # ---------------------------------------------------------------- internals

    def _apply(self, run_id: str, cls: StepClass, steps: int) -> None:
        """Add (``steps`` > 0) or remove (``steps`` = -1, latest step only) steps.
        Caller holds the lock, or owns the budget exclusively (construction)."""
        history = self._histories.setdefault(run_id, [])
        run_counts = self._run_counts.setdefault(run_id, {})
        if steps > 0:
            if history and history[-1][:2] == cls:
                history[-1] = (cls[0], cls[1], history[-1][2] + steps)
            else:
                history.append((cls[0], cls[1], steps))
        else:
            sigma, q, n = history[-1]
            if n > 1:
                history[-1] = (sigma, q, n - 1)
            else:
                history.pop()
        for counts in (run_counts, self._counts):
            counts[cls] = counts.get(cls, 0) + steps
            if counts[cls] == 0:
                del counts[cls]
        if not history:
            del self._histories[run_id]
            del self._run_counts[run_id]

    def _evaluate_then(
        self,
        inputs: Callable[[], tuple[StepCounts, ...]],
        commit: Callable[[tuple[float, ...]], _T],
    ) -> _T:
        """Run ``commit(ε of inputs())`` under the lock, with the ε evaluated outside it.

        Under the lock, the inputs are read from the current state; if all their ε
        are cached, ``commit`` runs at once (still under the lock). Otherwise the
        lock is released, the missing values are evaluated, and the attempt is
        repeated on the then-current state — so ``commit`` always sees values that
        match the state it changes.
        """
        while True:
            with self._lock:
                wanted = [dict(c) for c in inputs()]
                values = [self._schedule.cached_epsilon(c) for c in wanted]
                if all(v is not None for v in values):
                    return commit(tuple(v for v in values if v is not None))
            for counts, value in zip(wanted, values, strict=True):
                if value is None:
                    self._schedule.epsilon(counts)

    def _prefetch_next(self, run_id: str, cls: StepClass) -> None:
        """Queue the ε values the next grid crossings will need.

        For the run: its count of ``cls`` one past its grid point. For the dataset:
        the keys of the coming crossings, in the order the classes are expected to
        cross — fewest steps to their grid point, scaled by their share of the steps
        so far (a proxy for their rate); ties put the class that just stepped last —
        each key bumping one more class, up to the next crossing of the first. A key
        that assumes another order is wasted work, never a wrong answer.
        """
        if not self._schedule.prefetching:
            return
        with self._lock:
            counts = dict(self._counts)
            run_counts = dict(self._run_counts.get(run_id, {}))
        if not counts:
            return
        grid = self._schedule.grid_point
        total = sum(counts.values())

        def eta(c: StepClass) -> float:  # dataset steps until class c crosses
            return (grid(counts[c]) + 1 - counts[c]) * total / counts[c]

        order = sorted(counts, key=lambda c: (eta(c), c == cls, c))
        first = order[0]
        first_next = grid(grid(counts[first]) + 1)
        horizon = eta(first) + (first_next - grid(counts[first])) * total / counts[first]
        bumped = dict(counts)
        for c in order:
            if eta(c) > horizon:
                break
            bumped[c] = grid(counts[c]) + 1
            self._schedule.prefetch(bumped)
        run_counts[cls] = grid(run_counts.get(cls, 0)) + 1
        self._schedule.prefetch(run_counts)


def _plus_one(counts: Mapping[StepClass, int], cls: StepClass) -> dict[StepClass, int]:
    out = dict(counts)
    out[cls] = out.get(cls, 0) + 1
    return out


def _check_cap(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(field, f"must be a real number, got {type(value).__name__}")
    cap = float(value)
    if not (math.isfinite(cap) and cap >= 0.0):
        raise ConfigError(field, f"must be finite and ≥ 0, got {cap!r}")
    return cap


def _check_step(
    run_id: object, noise_multiplier: object, sample_rate: object, *, field: str = ""
) -> tuple[str, StepClass]:
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


__all__ = [
    "ACCOUNTING_LIBRARIES",
    "BUDGET_STATE_FORMAT",
    "BudgetDecision",
    "CapChange",
    "DatasetBudget",
    "StepCharge",
    "accounting_versions",
]
