"""The DP record of each run: one ``dp_steps`` row per noisy optimizer step.

Rules this module serves (see ``docs/operations.md``):

* :func:`record_dp_step` is called inside the transaction that marks the
  ``optim_step`` future completed, so a step the client can see is always accounted.
* A run's accountant history is **all** its rows (:func:`accountant_history`), never
  the history inside a checkpoint: the rows are never rolled back, so loading an
  older checkpoint or restarting the server cannot lower ε.
* Loading another run's checkpoint carries that run's history up to the checkpoint
  into this run (:func:`carry_over_rows`): the rows are copied with their origin
  (run, seq), once — loading the same lineage twice does not count it twice.

Privacy composition does not depend on the order of steps, so the history is a
multiset of (σ, q) steps; rows are kept in ``seq`` order anyway for the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db.models import DPStepRow, TrainingRunRow, utcnow
from tensafe.artifacts import library_versions
from tensafe.engine import DPMetrics


@dataclass(frozen=True)
class CarriedStep:
    """A step to copy from another run, with its original (run, seq)."""

    origin_run_id: str
    origin_seq: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    dataset_size: int
    expected_batch_size: float
    delta: float
    accountant: str
    dataset_id: str | None
    library_versions: dict[str, str]


def last_seq(session: Session, run_id: str) -> int:
    """The highest ``seq`` of the run's rows (0 when it has none)."""
    return int(
        session.scalar(select(func.max(DPStepRow.seq)).where(DPStepRow.run_id == run_id)) or 0
    )


def record_dp_step(
    session: Session,
    *,
    run: TrainingRunRow,
    future_id: str,
    model_step: int,
    metrics: DPMetrics,
    dataset_size: int,
    dataset_id: str | None,
) -> DPStepRow:
    """Add the row for one noisy step (flushed with the caller's transaction).

    Raises:
        sqlalchemy.exc.IntegrityError: a concurrent writer took the same ``seq``
            (cannot happen while the worker serialises each run's operations).
    """
    row = DPStepRow(
        run_id=run.run_id,
        tenant_id=run.tenant_id,
        seq=last_seq(session, run.run_id) + 1,
        model_step=model_step,
        future_id=future_id,
        noise_multiplier=metrics.noise_multiplier,
        sample_rate=metrics.sample_rate,
        max_grad_norm=metrics.max_grad_norm,
        dataset_size=dataset_size,
        expected_batch_size=metrics.expected_batch_size,
        delta=metrics.delta,
        accountant=metrics.accountant,
        epsilon=metrics.epsilon_spent,
        dataset_id=dataset_id,
        library_versions=library_versions(),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def dp_rows(session: Session, run_id: str) -> list[DPStepRow]:
    """Every row of the run (own and carried over), in ``seq`` order."""
    return list(
        session.scalars(select(DPStepRow).where(DPStepRow.run_id == run_id).order_by(DPStepRow.seq))
    )


def accountant_history(rows: Sequence[DPStepRow | CarriedStep]) -> list[tuple[float, float]]:
    """The (σ, q) of every step, for rebuilding a run's accountant."""
    return [(row.noise_multiplier, row.sample_rate) for row in rows]


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
    session: Session, *, target_run_id: str, source_run_id: str, upto_seq: int
) -> list[CarriedStep]:
    """The source run's rows up to ``upto_seq`` that the target run does not hold yet.

    Rows are identified by their *original* (run, seq): a row the source itself
    carried from a third run keeps that origin, and rows that originated in the
    target run are already counted by its own rows.
    """
    if source_run_id == target_run_id:
        return []
    held = {
        (r.origin_run_id, r.origin_seq)
        for r in session.execute(
            select(DPStepRow.origin_run_id, DPStepRow.origin_seq).where(
                DPStepRow.run_id == target_run_id, DPStepRow.origin_run_id.is_not(None)
            )
        )
    }
    carried: list[CarriedStep] = []
    source_rows = session.scalars(
        select(DPStepRow)
        .where(DPStepRow.run_id == source_run_id, DPStepRow.seq <= upto_seq)
        .order_by(DPStepRow.seq)
    )
    for row in source_rows:
        origin = (row.origin_run_id or source_run_id, row.origin_seq or row.seq)
        if origin[0] == target_run_id or origin in held:
            continue
        held.add(origin)
        carried.append(
            CarriedStep(
                origin_run_id=origin[0],
                origin_seq=origin[1],
                noise_multiplier=row.noise_multiplier,
                sample_rate=row.sample_rate,
                max_grad_norm=row.max_grad_norm,
                dataset_size=row.dataset_size,
                expected_batch_size=row.expected_batch_size,
                delta=row.delta,
                accountant=row.accountant,
                dataset_id=row.dataset_id,
                library_versions=dict(row.library_versions),
            )
        )
    return carried


def insert_carried(
    session: Session, *, run: TrainingRunRow, steps: Sequence[CarriedStep], future_id: str
) -> None:
    """Write carried-over rows into ``run`` (``epsilon`` is left empty on them: ε is
    reported for the run's whole history by the load_state result and the next step)."""
    seq = last_seq(session, run.run_id)
    for step in steps:
        seq += 1
        session.add(
            DPStepRow(
                run_id=run.run_id,
                tenant_id=run.tenant_id,
                seq=seq,
                model_step=None,
                future_id=future_id,
                origin_run_id=step.origin_run_id,
                origin_seq=step.origin_seq,
                noise_multiplier=step.noise_multiplier,
                sample_rate=step.sample_rate,
                max_grad_norm=step.max_grad_norm,
                dataset_size=step.dataset_size,
                expected_batch_size=step.expected_batch_size,
                delta=step.delta,
                accountant=step.accountant,
                epsilon=None,
                dataset_id=step.dataset_id,
                library_versions=step.library_versions,
                created_at=utcnow(),
            )
        )
    session.flush()


__all__ = [
    "CarriedStep",
    "accountant_history",
    "accountant_state",
    "dp_rows",
    "insert_carried",
    "last_seq",
    "record_dp_step",
    "steps_to_carry",
]
