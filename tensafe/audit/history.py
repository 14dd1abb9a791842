"""Reading ledger rows back into privacy histories and budgets.

Everything an audit needs is in the ledger: each ``dp_step`` row carries the
step's σ and q, so the rows of a dataset, in ``seq`` order, *are* its DP-SGD
history. These helpers only regroup them; they compute no ε.

Two histories are read from the same rows:

* a dataset's **budget** (:func:`run_histories`, :func:`step_counts`,
  :func:`budget_from_events`) counts ``dp_step`` rows only: a
  ``dp_step_carried`` row touched the origin run's data, charged where it was taken;
* a run's **accountant** (:func:`accountant_history`) counts its ``dp_step`` and
  its ``dp_step_carried`` rows: everything its model has been trained on.

:func:`steps_to_carry` decides which rows a ``load_state`` carries into a run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
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
    """Each run's ``dp_step`` rows as ``(σ, q, num_steps)`` segments, in order.

    Carried rows (``dp_step_carried``) are not counted: they charge no dataset.
    """
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
    """How many ``dp_step`` rows there are for each ``(σ, q)`` — the composition
    (carried rows are not counted)."""
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
    the cap is the last row's. Only ``dp_step`` rows are charged (see
    :func:`run_histories`). The chain is not verified here.

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


@dataclass(frozen=True, kw_only=True)
class CarriedStep:
    """A noisy step to carry into a run, named by its original ``(run, seq)``.

    Example:
        >>> step = CarriedStep(origin_run_id="a", origin_seq=3, noise_multiplier=1.0,
        ...                    sample_rate=0.01, max_grad_norm=1.0, dataset_size=1000)
        >>> step.ledger_fields(run_id="b")["kind"]
        'dp_step_carried'

    Attributes:
        origin_run_id: the run that took the step.
        origin_seq: the step's ledger ``seq`` in that run's chain.
        noise_multiplier: σ of the step.
        sample_rate: q of the step.
        max_grad_norm: C of the step.
        dataset_size: N the origin run declared.
    """

    origin_run_id: str
    origin_seq: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    dataset_size: int

    @property
    def origin(self) -> tuple[str, int]:
        """``(origin_run_id, origin_seq)``: the step's identity across runs."""
        return (self.origin_run_id, self.origin_seq)

    def ledger_fields(self, *, run_id: str) -> dict[str, object]:
        """The step fields of its ``dp_step_carried`` row in ``run_id``'s chain (the
        caller adds tenant, dataset, δ, accountant, ε totals, cap, versions, time)."""
        return {
            "kind": "dp_step_carried",
            "run_id": run_id,
            "origin_run_id": self.origin_run_id,
            "origin_seq": self.origin_seq,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "max_grad_norm": self.max_grad_norm,
            "dataset_size": self.dataset_size,
        }


_NOISY_KINDS = ("dp_step", "dp_step_carried")


def accountant_history(
    events: Iterable[LedgerEvent], *, run_id: str
) -> tuple[tuple[float, float], ...]:
    """The ``(σ, q)`` of every ``dp_step`` and ``dp_step_carried`` row of ``run_id``, in
    ``seq`` order: the history a restarted server rebuilds the run's accountant from.

    ``events`` are the run's dataset chain (rows of other runs are ignored).
    """
    rows = sorted(
        (e for e in events if e.kind in _NOISY_KINDS and e.run_id == run_id),
        key=lambda e: e.seq,
    )
    return tuple(_step_class(e) for e in rows)


def carried_origins(events: Iterable[LedgerEvent], *, run_id: str) -> frozenset[tuple[str, int]]:
    """The ``(origin_run_id, origin_seq)`` of every step already carried into ``run_id``."""
    return frozenset(
        (e.origin_run_id, e.origin_seq)  # type: ignore[misc]
        for e in events
        if e.kind == "dp_step_carried" and e.run_id == run_id
    )


def steps_to_carry(
    source_events: Iterable[LedgerEvent],
    *,
    source_run_id: str,
    upto_seq: int,
    target_run_id: str,
    held: Collection[tuple[str, int]],
) -> list[CarriedStep]:
    """The steps a ``load_state`` of ``source_run_id``'s checkpoint carries into the target.

    The source run's ``dp_step`` and ``dp_step_carried`` rows with ``seq ≤ upto_seq``
    (the source's chain position when the checkpoint was saved), in ``seq`` order, each
    named by its *original* ``(run, seq)``: ``(source_run_id, row.seq)`` for its own
    steps, the row's ``origin_*`` for steps it carried itself. Skipped: steps that
    originated in the target (its own rows count them), origins in ``held`` (already
    carried: see :func:`carried_origins`) and repeats — so loading the same lineage
    twice does not count it twice. Nothing when source and target are the same run.

    Args:
        source_events: the source run's dataset chain (other runs' rows are ignored).
        source_run_id: the run that saved the checkpoint.
        upto_seq: the last ledger ``seq`` the checkpoint includes (0: none).
        target_run_id: the run loading it.
        held: origins the target already holds.

    Raises:
        ConfigError: (``upto_seq``) not an integer ≥ 0; (``source_events``) the source
            run's rows belong to several datasets (seq numbers would be ambiguous).
    """
    if isinstance(upto_seq, bool) or not isinstance(upto_seq, int) or upto_seq < 0:
        raise ConfigError("upto_seq", f"must be an integer ≥ 0, got {upto_seq!r}")
    if source_run_id == target_run_id:
        return []
    rows = sorted(
        (
            e
            for e in source_events
            if e.kind in _NOISY_KINDS and e.run_id == source_run_id and e.seq <= upto_seq
        ),
        key=lambda e: e.seq,
    )
    if len({(e.tenant_id, e.dataset_id) for e in rows}) > 1:
        raise ConfigError("source_events", "the source run's rows span several datasets")
    seen = set(held)
    carried: list[CarriedStep] = []
    for row in rows:
        if row.kind == "dp_step_carried":
            origin = (row.origin_run_id, row.origin_seq)
        else:
            origin = (source_run_id, row.seq)
        if origin[0] == target_run_id or origin in seen:
            continue
        seen.add(origin)  # type: ignore[arg-type]
        carried.append(
            CarriedStep(
                origin_run_id=origin[0],  # type: ignore[arg-type]
                origin_seq=origin[1],  # type: ignore[arg-type]
                noise_multiplier=row.noise_multiplier,  # type: ignore[arg-type]
                sample_rate=row.sample_rate,  # type: ignore[arg-type]
                max_grad_norm=row.max_grad_norm,  # type: ignore[arg-type]
                dataset_size=row.dataset_size,  # type: ignore[arg-type]
            )
        )
    return carried


def _step_class(event: LedgerEvent) -> StepClass:
    assert event.noise_multiplier is not None and event.sample_rate is not None
    return (event.noise_multiplier, event.sample_rate)


__all__ = [
    "BudgetSettings",
    "CarriedStep",
    "accountant_history",
    "budget_from_events",
    "budget_settings",
    "carried_origins",
    "composed_history",
    "dataset_events",
    "run_histories",
    "step_counts",
    "steps_to_carry",
]
