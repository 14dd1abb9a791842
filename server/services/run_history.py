"""A run's privacy history, read from the ledger alone, and carrying it across runs.

A run's history is its noisy rows in its dataset's chain (``dp_step`` rows it took,
``dp_step_carried`` rows a ``load_state`` brought in), in ``seq`` order:

* restart recovery rebuilds the run's accountant from it (:func:`accountant_history`),
  never from a checkpoint's copy — the ledger is never rolled back, so loading an
  older checkpoint or restarting cannot lower ε;
* a checkpoint records how much of it the weights had seen
  (:func:`history_length`, stored as ``artifacts.dp_seq``);
* loading another run's checkpoint carries that run's history up to the checkpoint
  into this run (:func:`steps_to_carry`, :func:`record_load`): one
  ``dp_step_carried`` row per original step, named by its origin (run, ledger seq),
  once — loading the same lineage twice does not count it twice. Carried rows charge
  no budget (the data they touched was charged where the step was taken).

Privacy composition does not depend on the order of steps, so a history is a
multiset of (σ, q) steps; rows are read in ``seq`` order anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel
from sqlalchemy.orm import Session

from server.db.models import OperationRow, TrainingRunRow
from server.db.session import Database
from server.errors import EngineAheadError
from server.services.budgets import BudgetService
from server.services.ledger import event_of, run_noisy_rows
from server.services.operations import complete_operation
from tensafe.audit import CarriedStep, utc_timestamp
from tensafe.audit import carried_origins as held_origins
from tensafe.audit import steps_to_carry as carried_from
from tensafe.engine import TrainingEngine


def accountant_history(session: Session, run_id: str) -> list[tuple[float, float]]:
    """The (σ, q) of every noisy step in the run's history, own and carried."""
    return [(r.noise_multiplier, r.sample_rate) for r in run_noisy_rows(session, run_id)]  # type: ignore[misc]


def history_length(session: Session, run_id: str) -> int:
    """How many noisy steps the run's history holds now (a checkpoint's ``dp_seq``)."""
    return len(run_noisy_rows(session, run_id))


def accountant_state(
    history: Sequence[tuple[float, float]], *, accountant: str
) -> dict[str, object]:
    """A :meth:`tensafe.privacy.PrivacyAccountant.load_state_dict` state for ``history``."""
    return {
        "format": 1,
        "accountant": accountant,
        "history": [[sigma, q, 1] for sigma, q in history],
    }


def steps_to_carry(
    session: Session, *, source_run_id: str, upto: int, target_run_id: str
) -> list[CarriedStep]:
    """The steps a ``load_state`` of ``source_run_id``'s checkpoint carries into the
    target: the first ``upto`` steps of the source's history (its ``dp_seq`` at save
    time) that the target does not hold yet (see
    :func:`tensafe.audit.history.steps_to_carry`)."""
    if upto <= 0 or source_run_id == target_run_id:
        return []
    source = [event_of(r) for r in run_noisy_rows(session, source_run_id)]
    if not source:
        return []
    target = [event_of(r) for r in run_noisy_rows(session, target_run_id)]
    return carried_from(
        source,
        source_run_id=source_run_id,
        upto_seq=source[min(upto, len(source)) - 1].seq,
        target_run_id=target_run_id,
        held=held_origins(target, run_id=target_run_id),
    )


def record_load(
    db: Database,
    budgets: BudgetService,
    *,
    op: OperationRow,
    engine: TrainingEngine,
    dataset_id: str | None,
    carried: Sequence[CarriedStep],
    artifact_id: str,
    result: BaseModel,
) -> None:
    """Commit a ``load_state`` the engine has already applied: the carried rows (in
    the run's dataset chain, under its budget lock; the last one records the run's
    exact ε over its whole history), the run's step and checkpoint, and the completed
    future — one transaction.

    Raises:
        EngineAheadError: the commit failed; the engine must be discarded.
    """
    row = budget = None
    try:
        if carried and dataset_id is not None:
            budgets.ensure_budget(
                tenant_id=op.tenant_id, dataset_id=dataset_id, delta=_run_delta(engine)
            )
            budgets.key()  # before the transaction: the keyring uses its own connection
        with db.transaction() as session:
            if carried and dataset_id is not None:
                row, budget = budgets.lock(session, tenant_id=op.tenant_id, dataset_id=dataset_id)
                for i, step in enumerate(carried):
                    fields = step.ledger_fields(run_id=op.run_id) | {
                        "tenant_id": op.tenant_id,
                        "dataset_id": dataset_id,
                        "delta": budget.delta,
                        "accountant": budget.accountant,
                        "epsilon_dataset_total": budget.epsilon(),
                        "cap": budget.epsilon_cap,
                        "library_versions": budgets.step_versions(budget),
                        "created_at": utc_timestamp(),
                    }
                    if i == len(carried) - 1:
                        fields |= _exact_fields(engine)
                    budgets.append(session, row, fields)
            run = session.get(TrainingRunRow, op.run_id)
            assert run is not None
            run.step = engine.step
            run.pending_examples = 0
            run.last_checkpoint_artifact_id = artifact_id
            complete_operation(session, op, result)
    except BaseException as exc:
        if dataset_id is not None:
            budgets.discard(tenant_id=op.tenant_id, dataset_id=dataset_id)
        raise EngineAheadError(f"load_state of {op.run_id} could not be recorded") from exc
    if row is not None and budget is not None:
        budgets.settle(row, budget)


def _run_delta(engine: TrainingEngine) -> float:
    assert engine.dp is not None
    return engine.dp.config.delta


def _exact_fields(engine: TrainingEngine) -> dict[str, object]:
    """The run's exact ε now (its accountant over own and carried steps), as reported."""
    assert engine.dp is not None
    config = engine.dp.config
    fields: dict[str, object] = {
        "epsilon_run_exact": engine.epsilon(),
        "run_delta": config.delta,
        "run_accountant": config.accountant,
    }
    if engine.step >= 1:
        fields["model_step"] = engine.step
    return fields


__all__ = [
    "accountant_history",
    "accountant_state",
    "history_length",
    "record_load",
    "steps_to_carry",
]
