"""Admission of a new DP run to its dataset's budget, and the sampling policy rule.

Advisory checks at run creation (the authoritative ones run before every step's noise,
in :func:`server.services.dp_step.charge_and_step`): the budget exists (or a default cap
creates it on first use), its δ is below 1/N, one step fits, and the budget's sampling
policy admits how the run samples.
"""

from __future__ import annotations

from server.errors import ConflictError
from server.services.budgets import BudgetService, SamplingPolicy, no_budget
from server.settings import Settings
from tensafe.errors import BudgetExceededError, ConfigError
from tensafe.privacy.delta import check_delta


def admit_run(
    budgets: BudgetService,
    *,
    tenant_id: str,
    dataset_id: str,
    noise_multiplier: float | None,
    sample_rate: float | None,
    dataset_size: int,
    sampling: str = "client",
) -> None:
    """Refuse a new DP run up front if its dataset's budget cannot take its first step,
    or if the budget's δ is not below ``1/dataset_size`` (the run's N).

    Advisory: the authoritative check is in
    :func:`~server.services.dp_step.charge_and_step`, under the lock, before
    every step's noise. With ``noise_multiplier`` unknown (σ calibrated later from
    a target ε) only an exhausted budget is refused. Records nothing; reads in a
    short session of its own and evaluates ε after closing it, so call it outside
    any transaction (on SQLite every transaction holds the write lock).

    Raises:
        ConflictError: (``dp_config.dataset_id``) the dataset has no budget and no
            ``default_epsilon_cap`` is set, or its budget's δ ≥ 1/N (the message
            names the budget's δ and N); (``dp_config.sampling``) the run declares its
            own sampling and the budget's policy is ``server-only``.
        BudgetExceededError: the budget is spent, or one (σ, q) step would exceed it.
    """
    with budgets.db.sessions() as session:
        row = budgets.find_row(session, tenant_id=tenant_id, dataset_id=dataset_id)
        if row is None:
            if budgets.default_epsilon_cap is None:
                raise no_budget(dataset_id, field="dp_config.dataset_id")
            return
        budget = budgets.budget_of(session, row)
        policy = row.sampling_policy
    refuse_by_policy(policy, sampling=sampling, dataset_id=dataset_id, created=False)
    try:
        check_delta(delta=budget.delta, dataset_size=dataset_size, field="delta")
    except ConfigError as exc:
        raise ConflictError(
            f"the privacy budget of dataset {dataset_id!r} cannot protect this run's "
            f"dataset_size: the budget's delta (δ) {exc.message}. A budget's δ is fixed "
            "when it is created: an admin must create a budget with a smaller δ for this "
            "data (tensafe admin create-budget ... --delta D); the run was not created",
            field="dp_config.dataset_id",
        ) from None
    cap = budget.epsilon_cap
    if noise_multiplier is None or sample_rate is None:
        spent = budget.epsilon()
        if spent >= cap:
            raise BudgetExceededError(
                f"privacy budget exhausted for dataset {dataset_id!r}: ε spent "
                f"{spent:.6g} of cap {cap:.6g} (δ={budget.delta:g}); the run was not created"
            )
        return
    decision = budget.check_step(
        run_id="run (not created)", noise_multiplier=noise_multiplier, sample_rate=sample_rate
    )
    if not decision.allowed:
        raise BudgetExceededError(
            f"privacy budget exceeded for dataset {dataset_id!r}: one step of this run "
            f"(σ={noise_multiplier:g}, q={sample_rate:g}) would raise the dataset's ε from "
            f"{decision.epsilon_before:.6g} to {decision.epsilon_after:.6g}, above its cap "
            f"{cap:.6g} (δ={budget.delta:g}); the run was not created"
        )


def default_policy(settings: Settings) -> SamplingPolicy:
    """New budgets' sampling policy: ``server-only`` in production (the ε then holds
    whatever the training script does), ``any`` in development."""
    return "server-only" if settings.environment == "production" else "any"


def refuse_by_policy(policy: str, *, sampling: str, dataset_id: str, created: bool) -> None:
    """Raise unless a run that samples as ``sampling`` may train under ``policy``.

    Raises:
        ConflictError: (``dp_config.sampling``) a client-declared run on a
            ``server-only`` budget.
    """
    if policy == "server-only" and sampling != "server":
        what = "this step was not taken" if created else "the run was not created"
        raise ConflictError(
            f"the privacy budget of dataset {dataset_id!r} allows only runs whose batches the "
            "server draws (sampling policy server-only); register the data with "
            "create_dataset and name that dataset, or ask a privacy officer to change the "
            f"policy; {what}",
            field="dp_config.sampling",
        )


__all__ = ["admit_run", "default_policy", "refuse_by_policy"]
