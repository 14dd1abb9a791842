"""The ε budget of one dataset: cap checks and step charges, composed over all its runs.

See :mod:`tensafe.privacy.budget` for which composition is used and why it is an upper
bound. This module holds the stateful part: a lock, the cap, the tally of steps
(:mod:`~tensafe.privacy.budget.tally`) and the ε schedule that prices them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from types import MappingProxyType
from typing import TypeVar

from tensafe.errors import BudgetExceededError, ConfigError
from tensafe.privacy.budget.checks import validate_cap, validate_step
from tensafe.privacy.budget.prefetch import prefetch_next_crossings
from tensafe.privacy.budget.records import BudgetDecision, CapChange, StepCharge
from tensafe.privacy.budget.state import (
    check_state_layout,
    encode_state,
    schedule_for_state,
    state_segments,
)
from tensafe.privacy.budget.tally import StepTally, plus_one
from tensafe.privacy.epsilon import AccountantName, Segment, get_accountant_math
from tensafe.privacy.schedule import EpsilonSchedule, StepClass, StepCounts

_T = TypeVar("_T")


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
        cap = validate_cap(epsilon_cap, "epsilon_cap")
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
        self._tally = StepTally()

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
            return MappingProxyType(self._tally.histories())

    def steps(self, run_id: str | None = None) -> int:
        """Steps recorded by ``run_id`` (0 for an unknown run), or by all runs."""
        with self._lock:
            if run_id is None:
                return self._tally.total_steps()
            return self._tally.run_steps(run_id)

    def epsilon(self) -> float:
        """The dataset's conservative ε: composed over all steps of all runs.

        ``0.0`` before any step. Never below :meth:`exact_epsilon`.
        """
        with self._lock:
            counts = dict(self._tally.counts)
        return self._schedule.epsilon(counts)

    def exact_epsilon(self) -> float:
        """The dataset's ε without rounding (for reports; slow the first time)."""
        with self._lock:
            counts = dict(self._tally.counts)
        return self._schedule.exact_epsilon(counts)

    def run_epsilon(self, run_id: str) -> float:
        """The conservative ε of ``run_id``'s own steps (0.0 for an unknown run)."""
        with self._lock:
            counts = dict(self._tally.run_counts(run_id))
        return self._schedule.epsilon(counts)

    def exact_run_epsilon(self, run_id: str) -> float:
        """The ε of ``run_id``'s own steps without rounding (0.0 for an unknown run)."""
        with self._lock:
            counts = dict(self._tally.run_counts(run_id))
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
        run_id, cls = validate_step(run_id, noise_multiplier, sample_rate)
        with self._lock:
            counts = dict(self._tally.counts)
            run_counts = dict(self._tally.run_counts(run_id))
            cap = self._cap
        before = self._schedule.epsilon(counts)
        after = self._schedule.epsilon(plus_one(counts, cls))
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
        run_id, cls = validate_step(run_id, noise_multiplier, sample_rate)

        def inputs() -> tuple[StepCounts, ...]:
            return (
                plus_one(self._tally.counts, cls),
                plus_one(self._tally.run_counts(run_id), cls),
                {cls: 1},
                self._tally.counts,
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
            self._tally.add(run_id, cls)
            return StepCharge(
                run_id=run_id,
                step=self._tally.run_steps(run_id),
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
            segment = self._tally.latest_segment(charge.run_id)
            latest = self._tally.run_steps(charge.run_id)
            if segment is None or latest != charge.step or segment[:2] != cls:
                raise ConfigError(
                    "charge",
                    f"step {charge.step} of run {charge.run_id!r} is not that run's latest "
                    f"recorded step (latest: {latest})",
                )
            self._tally.remove_latest(charge.run_id)

    def raise_cap(self, new_cap: float) -> CapChange:
        """Raise the cap to ``new_cap`` (caps only go up here).

        Raises:
            ConfigError: (``cap``) ``new_cap`` is not finite, or not above the
                current cap (use :meth:`lower_cap` to lower it).
        """
        new = validate_cap(new_cap, "cap")

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

        return self._evaluate_then(lambda: (self._tally.counts,), commit)

    def lower_cap(self, new_cap: float) -> CapChange:
        """Lower the cap to ``new_cap``; refused if more than that is already spent.

        Raises:
            ConfigError: (``cap``) ``new_cap`` is not finite ≥ 0, not below the
                current cap, or below the (conservative) ε already spent.
        """
        new = validate_cap(new_cap, "cap")

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

        return self._evaluate_then(lambda: (self._tally.counts,), commit)

    # -------------------------------------------------------------- persistence

    def export_state(self) -> dict[str, object]:
        """A JSON-able snapshot: format, dataset, cap, δ, accountant, schedule rule,
        and every run's history as ``[[σ, q, num_steps], ...]`` (floats exact); the
        layout is described in :mod:`~tensafe.privacy.budget.state`."""
        with self._lock:
            return encode_state(
                dataset_id=self._dataset_id,
                epsilon_cap=self._cap,
                delta=self.delta,
                accountant=self._accountant,
                schedule_spec=self._schedule.spec,
                histories=self._tally.histories(),
            )

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
        check_state_layout(state)
        budget = cls(
            dataset_id=state["dataset_id"],  # type: ignore[arg-type]
            epsilon_cap=state["epsilon_cap"],  # type: ignore[arg-type]
            delta=state["delta"],  # type: ignore[arg-type]
            accountant=state["accountant"],  # type: ignore[arg-type]
            schedule=schedule_for_state(state, schedule=schedule, executor=executor),
        )
        for run_id, step_cls, steps in state_segments(state["histories"]):
            budget._tally.add(run_id, step_cls, steps)
        return budget

    def __repr__(self) -> str:
        return (
            f"DatasetBudget(dataset_id={self._dataset_id!r}, epsilon_cap={self._cap!r}, "
            f"delta={self.delta!r}, accountant={self._accountant!r}, runs={self._tally.runs()})"
        )

    # ---------------------------------------------------------------- internals

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
        """Queue the ε values the next grid crossings of the dataset and of ``run_id``
        will need (see :func:`~tensafe.privacy.budget.prefetch.prefetch_next_crossings`)."""
        if not self._schedule.prefetching:
            return
        with self._lock:
            counts = dict(self._tally.counts)
            run_counts = dict(self._tally.run_counts(run_id))
        prefetch_next_crossings(self._schedule, counts=counts, run_counts=run_counts, stepped=cls)


__all__ = ["DatasetBudget"]
