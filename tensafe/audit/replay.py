"""Replay of a dataset's ledger through the service's own schedule.

Is the ledger self-consistent? The rows are fed, in order, through the same
conservative schedule the service used (rule and library versions are on every row)
and each recorded ε — what the client was told at that step — must come out again,
every charged step must have kept the dataset within its cap, and every refusal must
really have been over it. The independent check of the ε themselves is
:mod:`tensafe.audit.recompute`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tensafe.audit.history import BudgetSettings, budget_settings
from tensafe.audit.ledger import LedgerEvent
from tensafe.errors import ConfigError
from tensafe.privacy.schedule import EpsilonSchedule, StepClass


@dataclass(frozen=True, kw_only=True)
class ReplayMismatch:
    """One recorded value that the replay does not reproduce.

    Attributes:
        seq: the row.
        field: the field that differs (or ``"cap"`` / ``"step"`` for a rule broken).
        recorded: the value in the row.
        replayed: the value the replay expects.
        detail: what is wrong, in words.
    """

    seq: int
    field: str
    recorded: float
    replayed: float
    detail: str


@dataclass(frozen=True, kw_only=True)
class ReplayResult:
    """The outcome of :func:`replay_ledger`.

    Attributes:
        ok: no mismatch.
        rows: rows replayed.
        evaluated: recorded totals compared (the rest were skipped by ``stride``).
        mismatches: what differs, in ``seq`` order.
    """

    ok: bool
    rows: int
    evaluated: int
    mismatches: tuple[ReplayMismatch, ...]


def replay_ledger(
    events: Iterable[LedgerEvent],
    *,
    stride: int = 1,
    relative_tolerance: float = 1e-9,
    schedule: EpsilonSchedule | None = None,
) -> ReplayResult:
    """Replay one dataset's rows (in ``seq`` order) and check every recorded ε.

    Always checked, for every row: δ and accountant match the budget's, step numbers
    count up per run, ``epsilon_step`` is right, every ``dp_step`` kept the dataset
    within the cap then in force, every refusal was over it (its
    ``epsilon_requested`` is recomputed), a cap was never lowered below the ε spent.
    The recorded totals (``epsilon_run_total``, ``epsilon_dataset_total``) of
    ``dp_step`` rows are recomputed on every ``stride``-th such row and on the last
    of each run (each costs up to two schedule evaluations). A ``dp_step_carried``
    row charges nothing: its ``epsilon_dataset_total`` must equal the dataset's ε
    before it, and its ``epsilon_run_total``, when recorded, the run's own figure; it
    does not count in the run's step numbers (``epsilon_run_exact`` is checked by
    :func:`recompute_epsilons`, not here).

    Values are compared within ``relative_tolerance`` (default 1e-9: equal up to
    floating-point noise between builds of the same library versions). Pass the live
    budget's ``schedule`` to reuse its cache; by default one is built from the rows.

    Raises:
        ConfigError: no ``budget_created`` row; ``stride`` < 1; ``schedule`` does not
            match the recorded δ, accountant and rule (field ``"schedule"``).
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ConfigError("stride", f"must be an integer ≥ 1, got {stride!r}")
    rows = tuple(events)
    settings = budget_settings(rows)
    if schedule is None:
        schedule = settings.schedule()
    elif (schedule.spec, schedule.delta, schedule.accountant) != (
        settings.schedule_spec,
        settings.delta,
        settings.accountant,
    ):
        raise ConfigError("schedule", f"{schedule!r} does not match the recorded settings")
    steps = [e for e in rows if e.kind == "dp_step"]
    sampled = {e.seq for i, e in enumerate(steps) if (i + 1) % stride == 0}
    sampled |= {e.seq for e in {e.run_id: e for e in steps}.values()}  # each run's last
    replay = _Replay(
        schedule=schedule, settings=settings, sampled=sampled, tolerance=relative_tolerance
    )
    for event in rows:
        replay.row(event)
    return ReplayResult(
        ok=not replay.mismatches,
        rows=len(rows),
        evaluated=replay.evaluated,
        mismatches=tuple(replay.mismatches),
    )


class _Replay:
    """The composition so far, fed one row at a time; collects what does not match."""

    def __init__(
        self,
        *,
        schedule: EpsilonSchedule,
        settings: BudgetSettings,
        sampled: set[int],
        tolerance: float,
    ) -> None:
        self.schedule = schedule
        self.settings = settings
        self.sampled = sampled
        self.tolerance = tolerance
        self.counts: dict[StepClass, int] = {}
        self.run_counts: dict[str, dict[StepClass, int]] = {}
        self.evaluated = 0
        self.total = 0.0  # the dataset's ε recorded by the previous row
        self.mismatches: list[ReplayMismatch] = []

    def row(self, event: LedgerEvent) -> None:
        before, self.total = self.total, event.epsilon_dataset_total
        settings = self.settings
        if event.delta != settings.delta or event.accountant != settings.accountant:
            self.rule(
                event, "delta", event.delta, settings.delta, "δ or accountant changed mid-ledger"
            )
        if event.kind == "budget_changed" and event.cap < event.epsilon_dataset_total:
            self.rule(event, "cap", event.cap, event.epsilon_dataset_total, "cap set below ε spent")
        if event.kind == "dp_step_carried":
            self.carried(event, before)
        elif event.kind == "privacy_audit":  # an audit charges nothing
            self.expect(event, "epsilon_dataset_total", event.epsilon_dataset_total, before)
        elif event.kind in ("dp_step", "step_refused"):
            self.step(event)

    def carried(self, event: LedgerEvent, before: float) -> None:
        """A carried row charges nothing: the dataset's ε is unchanged."""
        self.expect(event, "epsilon_dataset_total", event.epsilon_dataset_total, before)
        own = self.run_counts.get(event.run_id or "", {})
        if event.epsilon_run_total is not None:
            replayed = self.schedule.epsilon(own) if own else 0.0
            self.expect(event, "epsilon_run_total", event.epsilon_run_total, replayed)

    def step(self, event: LedgerEvent) -> None:
        """A step taken or refused: numbering, ε of the step, then the charge or refusal."""
        assert event.run_id is not None and event.step is not None
        cls: StepClass = (event.noise_multiplier, event.sample_rate)  # type: ignore[assignment]
        mine = self.run_counts.setdefault(event.run_id, {})
        if event.step != sum(mine.values()) + 1:
            self.rule(event, "step", event.step, sum(mine.values()) + 1, "run step numbers skip")
        self.expect(event, "epsilon_step", event.epsilon_step, self.schedule.epsilon({cls: 1}))
        if event.kind == "step_refused":
            self.refusal(event, cls)
        else:
            self.charge(event, cls, mine)

    def refusal(self, event: LedgerEvent, cls: StepClass) -> None:
        after = dict(self.counts)
        after[cls] = after.get(cls, 0) + 1
        requested = self.schedule.epsilon(after)
        self.evaluated += 1
        self.expect(event, "epsilon_requested", event.epsilon_requested, requested)
        if requested <= event.cap:
            self.rule(event, "cap", requested, event.cap, "refused although within the cap")

    def charge(self, event: LedgerEvent, cls: StepClass, mine: dict[StepClass, int]) -> None:
        self.counts[cls] = self.counts.get(cls, 0) + 1
        mine[cls] = mine.get(cls, 0) + 1
        if event.epsilon_dataset_total > event.cap:
            self.rule(event, "cap", event.epsilon_dataset_total, event.cap, "charged above the cap")
        if event.seq in self.sampled:
            self.evaluated += 1
            replayed = self.schedule.epsilon(self.counts)
            self.expect(event, "epsilon_dataset_total", event.epsilon_dataset_total, replayed)
            replayed = self.schedule.epsilon(mine)
            self.expect(event, "epsilon_run_total", event.epsilon_run_total, replayed)

    def expect(
        self, event: LedgerEvent, name: str, recorded: float | None, replayed: float
    ) -> None:
        value = float(recorded if recorded is not None else math.nan)
        if not math.isclose(value, replayed, rel_tol=self.tolerance, abs_tol=0.0):
            detail = f"recorded {value!r}, replay gives {replayed!r}"
            self.mismatches.append(ReplayMismatch(
                seq=event.seq, field=name, recorded=value, replayed=replayed, detail=detail
            ))  # fmt: skip

    def rule(self, event: LedgerEvent, name: str, recorded: float, bound: float, why: str) -> None:
        self.mismatches.append(ReplayMismatch(
            seq=event.seq, field=name, recorded=recorded, replayed=bound, detail=why
        ))  # fmt: skip


__all__ = ["ReplayMismatch", "ReplayResult", "replay_ledger"]
