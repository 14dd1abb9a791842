"""One noisy optimizer step, charged to its dataset's privacy budget.

:func:`charge_and_step` is the whole promise of a DP run's ``optim_step``, in one
transaction and in this order:

1. lock the dataset's budget row (racing runs on one dataset wait here);
2. check that one more (σ, q) step keeps the dataset's ε within its cap — if not,
   append a ``step_refused`` row, commit it and raise: no noise was drawn;
3. step the engine: noise on the clipped sum, scale by the expected batch size,
   optimizer, accountant (:meth:`~tensafe.engine.TrainingEngine.optim_step`);
4. charge the in-memory budget and append one ``dp_step`` ledger row: the run's
   exact ε as reported to the client (``epsilon_run_exact``, with its δ and
   accountant), the budget's conservative run and dataset ε, the model step;
5. move the run to its new step and complete the future with the result;
6. commit — the client sees the step only now, and it is charged.

A failure after step 3 leaves the engine ahead of the database: it surfaces as
:class:`~server.errors.EngineAheadError`, on which the worker discards the engine (the run is
rebuilt from its last checkpoint and the ledger, :mod:`server.worker.runtimes`),
and the cached budget is dropped. A crash at any point loses at most a step the
client never saw; a step the client saw is always charged.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.orm import Session
from tg_tinker.types import OptimStepResponse

from server.db.models import OperationRow, TrainingRunRow
from server.db.session import Database
from server.errors import EngineAheadError
from server.services.admission import refuse_by_policy
from server.services.budgets import BudgetService
from server.services.ledger import charge_fields
from server.services.operations import complete_operation
from server.services.wire import optim_output
from tensafe.audit import LedgerEvent, utc_timestamp
from tensafe.engine import AdamParams, OptimStepResult, TrainingEngine
from tensafe.errors import BudgetExceededError
from tensafe.privacy.budget import BudgetDecision, DatasetBudget, StepCharge

Sampling = Literal["server-poisson", "client-declared"]
PrivacyUnit = Literal["record", "unit"]


def charge_and_step(
    db: Database,
    budgets: BudgetService,
    *,
    op: OperationRow,
    engine: TrainingEngine,
    adam_params: AdamParams | None,
    dataset_id: str,
    sampling: Sampling = "client-declared",
    privacy_unit: PrivacyUnit = "record",
) -> OptimStepResponse:
    """Check the budget, step the engine, charge, record, complete and commit; return
    the step's result (see the module docstring for the order and why). ``sampling``
    and ``privacy_unit`` label the ledger row (who drew the batch; what one
    contribution is).

    Raises:
        ValueError: the engine is not a DP engine (a non-DP step has nothing to charge).
        BudgetExceededError: the step would exceed the dataset's cap; the refusal
            was committed to the ledger and the engine was not touched.
        ConflictError: the dataset has no budget and the server sets no default cap; the
            run declares its own sampling and the budget's policy is ``server-only``
            (nothing is recorded, the engine untouched).
        EngineAheadError: the engine stepped but recording failed (see above).
    """
    if engine.dp is None:
        raise ValueError("charge_and_step needs a DP engine")
    config = engine.dp.config
    tenant_id, run_id = op.tenant_id, op.run_id
    budgets.ensure_budget(tenant_id=tenant_id, dataset_id=dataset_id, delta=config.delta)
    budgets.key()  # derived before the transaction: the keyring uses its own connection
    refusal: BudgetExceededError | None = None
    response: OptimStepResponse | None = None
    stepped = False
    try:
        with db.transaction() as session:
            row, budget = budgets.lock(session, tenant_id=tenant_id, dataset_id=dataset_id)
            refuse_by_policy(
                row.sampling_policy,
                sampling="server" if sampling == "server-poisson" else "client",
                dataset_id=dataset_id,
                created=True,
            )
            decision = budget.check_step(
                run_id=run_id,
                noise_multiplier=config.noise_multiplier,
                sample_rate=config.sample_rate,
            )
            common = _step_fields(budgets, budget, op=op, dataset_id=dataset_id, engine=engine)
            common |= {"sampling": sampling, "privacy_unit": privacy_unit}
            if not decision.allowed:
                budgets.append(session, row, _refusal_fields(common, decision))
                refusal = BudgetExceededError(_refusal_message(decision, budget, run_id))
            else:
                # Noise is drawn only here, after the check. An error the engine raises
                # itself propagates as it is: the worker decides from its kind whether
                # the engine is still intact (leaves_engine_unchanged).
                result = engine.optim_step(adam_params)
                stepped = True  # the engine moved: from here on it must be recorded
                charge = budget.record_step(
                    run_id=run_id,
                    noise_multiplier=config.noise_multiplier,
                    sample_rate=config.sample_rate,
                )
                event = budgets.append(session, row, _charge_fields(common, charge, result))
                response = _response(result, charge, event)
                _advance_run(session, run_id=run_id, step=result.step)
                complete_operation(session, op, response)
    except BaseException as exc:
        budgets.discard(tenant_id=tenant_id, dataset_id=dataset_id)
        if stepped:
            raise EngineAheadError(
                f"optim_step of {run_id} was applied by the engine but could not be recorded"
            ) from exc
        raise
    budgets.settle(row, budget)
    if refusal is not None:
        raise refusal
    assert response is not None
    return response


def _step_fields(
    budgets: BudgetService,
    budget: DatasetBudget,
    *,
    op: OperationRow,
    dataset_id: str,
    engine: TrainingEngine,
) -> dict[str, object]:
    """The fields every step row of this run shares (taken or refused)."""
    assert engine.dp is not None
    config = engine.dp.config
    return {
        "tenant_id": op.tenant_id,
        "dataset_id": dataset_id,
        "run_id": op.run_id,
        "noise_multiplier": config.noise_multiplier,
        "sample_rate": config.sample_rate,
        "max_grad_norm": config.max_grad_norm,
        "dataset_size": config.dataset_size,
        "delta": budget.delta,
        "accountant": budget.accountant,
        "library_versions": budgets.step_versions(budget),
        "created_at": utc_timestamp(),
    }


def _refusal_fields(common: dict[str, object], decision: BudgetDecision) -> dict[str, object]:
    return {
        **common,
        "kind": "step_refused",
        "step": decision.step,
        "epsilon_step": decision.epsilon_step,
        "epsilon_run_total": decision.epsilon_run,
        "epsilon_dataset_total": decision.epsilon_before,
        "epsilon_requested": decision.epsilon_after,
        "cap": decision.cap,
    }


def _charge_fields(
    common: dict[str, object], charge: StepCharge, result: OptimStepResult
) -> dict[str, object]:
    assert result.dp_metrics is not None
    reported = result.dp_metrics
    return {
        **common,
        **charge_fields(charge),
        "model_step": result.step,
        "epsilon_run_exact": reported.epsilon_spent,
        "run_delta": reported.delta,
        "run_accountant": reported.accountant,
    }


def _refusal_message(decision: BudgetDecision, budget: DatasetBudget, run_id: str) -> str:
    return (
        f"privacy budget exceeded for dataset {budget.dataset_id!r}: step {decision.step} of "
        f"run {run_id} would raise the dataset's ε from {decision.epsilon_before:.6g} to "
        f"{decision.epsilon_after:.6g}, above its cap {decision.cap:.6g} "
        f"(δ={budget.delta:g}); nothing was applied and the refusal was recorded in the ledger"
    )


def _response(result: OptimStepResult, charge: StepCharge, event: LedgerEvent) -> OptimStepResponse:
    """The client's result: the engine's, plus the budget's figures and the ledger row."""
    response = optim_output(result)
    response.metrics.update(
        {
            "dp/epsilon_dataset": charge.epsilon_dataset_total,
            "dp/epsilon_run_ledger": charge.epsilon_run_total,
            "dp/epsilon_cap": charge.cap,
            "dp/ledger_seq": float(event.seq),
        }
    )
    return response


def _advance_run(session: Session, *, run_id: str, step: int) -> None:
    """The run's new step; its logical batch (and a server-drawn batch) is consumed."""
    run = session.get(TrainingRunRow, run_id)
    assert run is not None
    run.step = step
    run.pending_examples = 0
    run.pending_draw = None


__all__ = ["charge_and_step"]
