"""Re-deriving ε from the ledger alone: independently, and by replay.

Two different questions:

* **Independent recomputation** (:func:`recompute_epsilons`): is the recorded ε
  right? Each run's and the dataset's ``(σ, q, steps)`` history is rebuilt from the
  ``dp_step`` rows and its ε recomputed with two implementations that share no code
  with TenSafe's accountant: Google ``dp_accounting``'s privacy loss distribution
  (PLD, ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``, pessimistic estimate)
  and Opacus' ``PRVAccountant`` used directly. The recorded value must agree with
  both within 1 %.
* **Replay** (:func:`replay_ledger`): is the ledger self-consistent? The rows are
  fed, in order, through the same conservative schedule the service used (rule and
  library versions are on every row) and each recorded ε — what the client was told
  at that step — must come out again, every charged step must have kept the dataset
  within its cap, and every refusal must really have been over it.

Composition: all ``dp_step`` rows of a dataset, whichever run wrote them, compose
sequentially (see :mod:`tensafe.privacy.budget` for why that is an upper bound);
order does not matter, so histories are grouped by ``(σ, q)`` before evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import dp_accounting
from opacus.accountants import PRVAccountant

from tensafe.audit.history import budget_settings, composed_history, step_counts
from tensafe.audit.ledger import LedgerEvent
from tensafe.errors import ConfigError
from tensafe.privacy.epsilon import Segment
from tensafe.privacy.schedule import EpsilonSchedule, StepClass

#: Relative agreement required between the recorded ε and each recomputation.
AGREEMENT_TOLERANCE = 0.01

#: PLD ``value_discretization_interval``: its pessimistic ε is within ~0.01 % of
#: the limit at 1e-4 (vs ~0.3 % at 1e-3), at 0.4–0.6 s for 10,000–40,000 steps.
DEFAULT_PLD_DISCRETIZATION = 1e-4

#: Opacus PRV ``eps_error`` as a fraction of the PLD ε (its upper end adds it).
PRV_RELATIVE_EPS_ERROR = 2e-3


# ----------------------------------------------------------------- references


def pld_epsilon(
    history: Sequence[Segment],
    *,
    delta: float,
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """ε of ``history`` at ``delta`` by Google ``dp_accounting`` PLD (pessimistic).

    Raises:
        ConfigError: (``history``) empty.
    """
    if not history:
        raise ConfigError("history", "must not be empty")
    accountant = dp_accounting.pld.PLDAccountant(
        value_discretization_interval=value_discretization_interval
    )
    for sigma, q, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def opacus_prv_epsilon(history: Sequence[Segment], *, delta: float, eps_error: float) -> float:
    """ε of ``history`` at ``delta`` by Opacus' ``PRVAccountant`` (its upper bound).

    Raises:
        ConfigError: (``history``) empty.
    """
    if not history:
        raise ConfigError("history", "must not be empty")
    accountant = PRVAccountant()
    accountant.history = [(sigma, q, steps) for sigma, q, steps in history]
    return float(accountant.get_epsilon(delta, eps_error=eps_error))


# ----------------------------------------------------------- recomputation


@dataclass(frozen=True, kw_only=True)
class EpsilonCheck:
    """The recorded ε of a run or dataset beside its independent recomputations.

    Attributes:
        scope: ``"run"`` (the run's own steps) or ``"dataset"`` (all runs composed).
        subject: the run id, or the dataset id.
        steps: number of ``dp_step`` rows composed.
        history: the composed ``(σ, q, steps)`` classes.
        recorded: the ε the ledger records (its last value).
        pld: ε by Google dp-accounting PLD.
        prv: ε by Opacus PRV; ``None`` if it could not be computed (see ``note``).
        pld_relative_difference: ``recorded / pld − 1``.
        prv_relative_difference: ``recorded / prv − 1``, or ``None``.
        agree_within_1pct: both relative differences are within the tolerance.
        upper_bound_holds: ``recorded`` is not below any reference by more than
            the tolerance (the ledger never under-reports).
        note: why a reference is missing, if one is.
    """

    scope: Literal["run", "dataset"]
    subject: str
    steps: int
    history: tuple[Segment, ...]
    recorded: float
    pld: float
    prv: float | None
    pld_relative_difference: float
    prv_relative_difference: float | None
    agree_within_1pct: bool
    upper_bound_holds: bool
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class RecomputeResult:
    """Independent recomputation of one dataset's ledger.

    Attributes:
        dataset_id: the dataset.
        delta: δ of every ε compared.
        accountant: the accountant that produced the recorded values.
        relative_tolerance: the agreement tolerance (0.01 = 1 %).
        pld_value_discretization: the PLD discretization used.
        runs: one check per run, in order of first appearance.
        dataset: the check of the whole composition.
        all_agree: every check agrees within the tolerance.
        pld_seconds: time spent in PLD.
        prv_seconds: time spent in Opacus PRV.
    """

    dataset_id: str
    delta: float
    accountant: str
    relative_tolerance: float
    pld_value_discretization: float
    runs: tuple[EpsilonCheck, ...]
    dataset: EpsilonCheck
    all_agree: bool
    pld_seconds: float
    prv_seconds: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (histories as lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RecomputeResult:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: (``recompute``) malformed.
        """
        try:
            items = dict(data)
            items["runs"] = tuple(_check_from_dict(r) for r in items["runs"])  # type: ignore[attr-defined]
            items["dataset"] = _check_from_dict(items["dataset"])  # type: ignore[arg-type]
            return cls(**items)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("recompute", f"malformed recomputation result: {exc}") from None


def recompute_epsilons(
    events: Iterable[LedgerEvent],
    *,
    relative_tolerance: float = AGREEMENT_TOLERANCE,
    pld_value_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> RecomputeResult:
    """Recompute every run's and the dataset's ε from one dataset's ledger rows.

    ``events`` are one dataset's rows in ``seq`` order (see
    :func:`~tensafe.audit.history.dataset_events`). Costs one PLD and one PRV
    evaluation per run and for the dataset: about 0.5 s (PLD) and 0.5–5 s (PRV)
    each at 10,000 steps.

    Raises:
        ConfigError: no ``budget_created`` row, or rows of several datasets.
    """
    rows = tuple(events)
    settings = budget_settings(rows)
    if any(e.dataset_id != settings.dataset_id for e in rows):
        raise ConfigError("events", "rows of several datasets; filter with dataset_events()")
    steps = [e for e in rows if e.kind == "dp_step"]
    timers = {"pld": 0.0, "prv": 0.0}

    def check(
        scope: Literal["run", "dataset"], subject: str, chosen: list[LedgerEvent]
    ) -> EpsilonCheck:
        history = composed_history(step_counts(chosen))
        last = chosen[-1] if chosen else None
        if scope == "run":
            recorded = last.epsilon_run_total if last is not None else 0.0
        else:
            recorded = last.epsilon_dataset_total if last is not None else 0.0
        return _compare(
            scope=scope,
            subject=subject,
            history=history,
            recorded=float(recorded or 0.0),
            delta=settings.delta,
            tolerance=relative_tolerance,
            discretization=pld_value_discretization,
            timers=timers,
        )

    run_ids = list(dict.fromkeys(e.run_id for e in steps if e.run_id is not None))
    runs = tuple(check("run", run, [e for e in steps if e.run_id == run]) for run in run_ids)
    dataset = check("dataset", settings.dataset_id, steps)
    return RecomputeResult(
        dataset_id=settings.dataset_id,
        delta=settings.delta,
        accountant=settings.accountant,
        relative_tolerance=relative_tolerance,
        pld_value_discretization=pld_value_discretization,
        runs=runs,
        dataset=dataset,
        all_agree=dataset.agree_within_1pct and all(r.agree_within_1pct for r in runs),
        pld_seconds=timers["pld"],
        prv_seconds=timers["prv"],
    )


def _compare(
    *,
    scope: Literal["run", "dataset"],
    subject: str,
    history: tuple[Segment, ...],
    recorded: float,
    delta: float,
    tolerance: float,
    discretization: float,
    timers: dict[str, float],
) -> EpsilonCheck:
    steps = sum(n for _, _, n in history)
    if not history:
        return EpsilonCheck(
            scope=scope, subject=subject, steps=0, history=(), recorded=recorded, pld=0.0,
            prv=0.0, pld_relative_difference=_relative(recorded, 0.0),
            prv_relative_difference=_relative(recorded, 0.0),
            agree_within_1pct=recorded == 0.0, upper_bound_holds=True,
        )  # fmt: skip
    started = time.perf_counter()
    pld = pld_epsilon(history, delta=delta, value_discretization_interval=discretization)
    timers["pld"] += time.perf_counter() - started
    prv: float | None = None
    note = None
    started = time.perf_counter()
    try:
        prv = opacus_prv_epsilon(
            history, delta=delta, eps_error=max(1e-4, PRV_RELATIVE_EPS_ERROR * pld)
        )
    except (MemoryError, ValueError, RuntimeError, FloatingPointError) as exc:
        note = f"Opacus PRV could not evaluate this history ({type(exc).__name__}: {exc})"
    timers["prv"] += time.perf_counter() - started
    if prv is not None and not math.isfinite(prv):
        note, prv = f"Opacus PRV returned {prv!r}", None
    references = [r for r in (pld, prv) if r is not None]
    differences = [_relative(recorded, r) for r in references]
    return EpsilonCheck(
        scope=scope,
        subject=subject,
        steps=steps,
        history=history,
        recorded=recorded,
        pld=pld,
        prv=prv,
        pld_relative_difference=differences[0],
        prv_relative_difference=_relative(recorded, prv) if prv is not None else None,
        agree_within_1pct=prv is not None and all(abs(d) <= tolerance for d in differences),
        upper_bound_holds=all(d >= -tolerance for d in differences),
        note=note,
    )


def _relative(value: float, reference: float) -> float:
    if reference == 0.0:
        return 0.0 if value == 0.0 else math.inf
    return value / reference - 1.0


def _check_from_dict(data: Mapping[str, object]) -> EpsilonCheck:
    items = dict(data)
    items["history"] = tuple(tuple(s) for s in items["history"])  # type: ignore[attr-defined]
    return EpsilonCheck(**items)  # type: ignore[arg-type]


# --------------------------------------------------------------------- replay


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
    of each run (each costs up to two schedule evaluations).

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
    last_of_run = {e.run_id: e.seq for e in steps}
    sampled = {e.seq for i, e in enumerate(steps) if (i + 1) % stride == 0}
    sampled |= set(last_of_run.values())
    mismatches: list[ReplayMismatch] = []
    counts: dict[StepClass, int] = {}
    run_counts: dict[str, dict[StepClass, int]] = {}
    evaluated = 0

    def expect(event: LedgerEvent, name: str, recorded: float | None, replayed: float) -> None:
        value = float(recorded if recorded is not None else math.nan)
        if not math.isclose(value, replayed, rel_tol=relative_tolerance, abs_tol=0.0):
            mismatches.append(
                ReplayMismatch(
                    seq=event.seq, field=name, recorded=value, replayed=replayed,
                    detail=f"recorded {value!r}, replay gives {replayed!r}",
                )
            )  # fmt: skip

    def rule(event: LedgerEvent, name: str, recorded: float, bound: float, detail: str) -> None:
        mismatches.append(
            ReplayMismatch(
                seq=event.seq, field=name, recorded=recorded, replayed=bound, detail=detail
            )
        )

    for event in rows:
        if event.delta != settings.delta or event.accountant != settings.accountant:
            rule(event, "delta", event.delta, settings.delta, "δ or accountant changed mid-ledger")
        if event.kind == "budget_changed" and event.cap < event.epsilon_dataset_total:
            rule(event, "cap", event.cap, event.epsilon_dataset_total, "cap set below ε spent")
        if event.kind not in ("dp_step", "step_refused"):
            continue
        assert event.run_id is not None and event.step is not None
        cls: StepClass = (event.noise_multiplier, event.sample_rate)  # type: ignore[assignment]
        mine = run_counts.setdefault(event.run_id, {})
        if event.step != sum(mine.values()) + 1:
            rule(event, "step", event.step, sum(mine.values()) + 1, "run step numbers skip")
        expect(event, "epsilon_step", event.epsilon_step, schedule.epsilon({cls: 1}))
        if event.kind == "step_refused":
            after = dict(counts)
            after[cls] = after.get(cls, 0) + 1
            requested = schedule.epsilon(after)
            evaluated += 1
            expect(event, "epsilon_requested", event.epsilon_requested, requested)
            if requested <= event.cap:
                rule(event, "cap", requested, event.cap, "refused although within the cap")
            continue
        counts[cls] = counts.get(cls, 0) + 1
        mine[cls] = mine.get(cls, 0) + 1
        if event.epsilon_dataset_total > event.cap:
            rule(event, "cap", event.epsilon_dataset_total, event.cap, "charged above the cap")
        if event.seq in sampled:
            evaluated += 1
            expect(
                event,
                "epsilon_dataset_total",
                event.epsilon_dataset_total,
                schedule.epsilon(counts),
            )
            expect(event, "epsilon_run_total", event.epsilon_run_total, schedule.epsilon(mine))
    return ReplayResult(
        ok=not mismatches, rows=len(rows), evaluated=evaluated, mismatches=tuple(mismatches)
    )


__all__ = [
    "AGREEMENT_TOLERANCE",
    "DEFAULT_PLD_DISCRETIZATION",
    "PRV_RELATIVE_EPS_ERROR",
    "EpsilonCheck",
    "RecomputeResult",
    "ReplayMismatch",
    "ReplayResult",
    "opacus_prv_epsilon",
    "pld_epsilon",
    "recompute_epsilons",
    "replay_ledger",
]
