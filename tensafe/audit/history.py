"""Reading ledger rows back into privacy histories and budgets.

Everything an audit needs is in the ledger: each ``dp_step`` row carries the
step's σ and q, so the rows of a dataset, in ``seq`` order, *are* its DP-SGD
history. These helpers only regroup them; they compute no ε.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from tensafe.audit.ledger import LedgerEvent
from tensafe.errors import ConfigError
from tensafe.privacy.budget import BUDGET_STATE_FORMAT, DatasetBudget
from tensafe.privacy.epsilon import AccountantName, Segment
from tensafe.privacy.schedule import (
    DEFAULT_RELATIVE_SPACING,
    EpsilonSchedule,
    StepClass,
)


@dataclass(frozen=True, kw_only=True)
class BudgetSettings:
    """What the ``budget_created`` row fixes for a dataset's whole ledger.

    Attributes:
        tenant_id: the owning tenant.
        dataset_id: the dataset.
        delta: δ of every ε.
        accountant: the accountant that computed recorded ε.
        schedule_spec: the conservative-ε rounding rule (``EpsilonSchedule.spec``).
    """

    tenant_id: str
    dataset_id: str
    delta: float
    accountant: AccountantName
    schedule_spec: str

    def schedule(self, *, executor: Executor | None = None) -> EpsilonSchedule:
        """A schedule that reproduces the recorded conservative ε.

        Raises:
            ConfigError: the stored rule or accountant is not understood.
        """
        return EpsilonSchedule.from_spec(
            self.schedule_spec, delta=self.delta, accountant=self.accountant, executor=executor
        )


def dataset_events(
    events: Iterable[LedgerEvent], *, dataset_id: str, tenant_id: str | None = None
) -> tuple[LedgerEvent, ...]:
    """The rows of one dataset (and tenant, if given), in ``seq`` order."""
    chosen = [
        e
        for e in events
        if e.dataset_id == dataset_id and (tenant_id is None or e.tenant_id == tenant_id)
    ]
    chosen.sort(key=lambda e: e.seq)
    return tuple(chosen)


def budget_settings(events: Iterable[LedgerEvent]) -> BudgetSettings:
    """The settings of the first ``budget_created`` row.

    A row without an ``"epsilon_schedule"`` library version is read with the
    accountant's default rule.

    Raises:
        ConfigError: (``events``) there is no ``budget_created`` row, or the
            accountant is unknown.
    """
    for event in events:
        if event.kind == "budget_created":
            if event.accountant not in DEFAULT_RELATIVE_SPACING:
                raise ConfigError("accountant", f"unknown accountant {event.accountant!r}")
            accountant: AccountantName = event.accountant  # type: ignore[assignment]
            spec = event.library_versions.get("epsilon_schedule")
            if spec is None:
                spec = EpsilonSchedule(delta=event.delta, accountant=accountant).spec
            return BudgetSettings(
                tenant_id=event.tenant_id,
                dataset_id=event.dataset_id,
                delta=event.delta,
                accountant=accountant,
                schedule_spec=spec,
            )
    raise ConfigError("events", "no budget_created row: the ledger of this dataset is incomplete")


def run_histories(events: Iterable[LedgerEvent]) -> dict[str, tuple[Segment, ...]]:
    """Each run's ``dp_step`` rows as ``(σ, q, num_steps)`` segments, in order."""
    histories: dict[str, list[Segment]] = {}
    for event in events:
        if event.kind != "dp_step":
            continue
        assert event.run_id is not None
        sigma, q = _step_class(event)
        history = histories.setdefault(event.run_id, [])
        if history and history[-1][:2] == (sigma, q):
            history[-1] = (sigma, q, history[-1][2] + 1)
        else:
            history.append((sigma, q, 1))
    return {run: tuple(h) for run, h in histories.items()}


def step_counts(events: Iterable[LedgerEvent]) -> dict[StepClass, int]:
    """How many ``dp_step`` rows there are for each ``(σ, q)`` — the composition."""
    counts: dict[StepClass, int] = {}
    for event in events:
        if event.kind == "dp_step":
            cls = _step_class(event)
            counts[cls] = counts.get(cls, 0) + 1
    return counts


def composed_history(counts: dict[StepClass, int]) -> tuple[Segment, ...]:
    """Step counts as a history sorted by ``(σ, q)``: the order of steps does not
    change ε, so this is the history of the whole composition."""
    return tuple(sorted((sigma, q, n) for (sigma, q), n in counts.items() if n > 0))


def budget_from_events(
    events: Iterable[LedgerEvent],
    *,
    schedule: EpsilonSchedule | None = None,
    executor: Executor | None = None,
) -> DatasetBudget:
    """Rebuild the in-memory budget of one dataset from its ledger rows.

    ``events`` are one dataset's rows in ``seq`` order (see :func:`dataset_events`);
    the cap is the last row's. The chain is not verified here.

    Raises:
        ConfigError: no ``budget_created`` row, rows of several datasets, or
            ``schedule`` does not match the recorded settings.
    """
    rows = tuple(events)
    settings = budget_settings(rows)
    if any(e.dataset_id != settings.dataset_id for e in rows):
        raise ConfigError("events", "rows of several datasets; filter with dataset_events()")
    state = {
        "format": BUDGET_STATE_FORMAT,
        "dataset_id": settings.dataset_id,
        "epsilon_cap": rows[-1].cap,
        "delta": settings.delta,
        "accountant": settings.accountant,
        "epsilon_schedule": settings.schedule_spec,
        "histories": {run: [list(s) for s in h] for run, h in run_histories(rows).items()},
    }
    return DatasetBudget.from_state(state, schedule=schedule, executor=executor)


def _step_class(event: LedgerEvent) -> StepClass:
    assert event.noise_multiplier is not None and event.sample_rate is not None
    return (event.noise_multiplier, event.sample_rate)


__all__ = [
    "BudgetSettings",
    "budget_from_events",
    "budget_settings",
    "composed_history",
    "dataset_events",
    "run_histories",
    "step_counts",
]
