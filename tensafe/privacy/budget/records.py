"""What a budget decision returns: a step's verdict, a recorded charge, a cap change.

Frozen value objects; each carries the numbers its ledger row needs.
"""

from __future__ import annotations

from dataclasses import dataclass


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


__all__ = ["BudgetDecision", "CapChange", "StepCharge"]
