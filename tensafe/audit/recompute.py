"""Re-deriving ε from the ledger alone: independently, and by replay.

Two different questions:

* **Independent recomputation** (:func:`recompute_epsilons`): is the recorded ε
  right? Each run's and the dataset's ``(σ, q, steps)`` history is rebuilt from the
  ``dp_step`` rows and its ε recomputed with two implementations that share no code
  with TenSafe's accountant: Google ``dp_accounting``'s privacy loss distribution
  (PLD, ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``, pessimistic estimate, its
  discretization refined until it converges) and Opacus' ``PRVAccountant`` (see
  :mod:`tensafe.audit.references`). The recorded value must agree with both within
  1 %, and must not be below the PLD value nor below the lower end of PRV's error
  interval by more than 1 % (never under-reported). Where rows record a run's exact ε
  (``epsilon_run_exact``, ledger format 2), it is checked the same way against the
  run's whole accountant history: its own ``dp_step`` rows and the ``dp_step_carried``
  rows a ``load_state`` brought in.
* **Replay** (:func:`replay_ledger`, in :mod:`tensafe.audit.replay`, re-exported
  here): is the ledger self-consistent? The rows are fed, in order, through the same
  conservative schedule the service used and each recorded ε must come out again.

Composition: all ``dp_step`` rows of a dataset, whichever run wrote them, compose
sequentially (see :mod:`tensafe.privacy.budget` for why that is an upper bound);
order does not matter, so histories are grouped by ``(σ, q)`` before evaluation.
Carried rows never enter a dataset's or a run's conservative (budget) figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

from tensafe.audit.history import budget_settings, composed_history, step_counts
from tensafe.audit.ledger import LedgerEvent
from tensafe.audit.references import (
    DEFAULT_PLD_DISCRETIZATION,
    PLD_CONVERGENCE_TOLERANCE,
    PLD_START_DISCRETIZATION,
    PLDReference,
    PRVReference,
    converged_pld_epsilon,
    opacus_prv_epsilon,
    opacus_prv_interval,
    pld_epsilon,
)
from tensafe.audit.replay import ReplayMismatch, ReplayResult, replay_ledger
from tensafe.errors import ConfigError
from tensafe.privacy.epsilon import Segment
from tensafe.privacy.schedule import StepClass

CheckScope = Literal["run", "run_exact", "dataset"]
"""What an :class:`EpsilonCheck` compares (see its ``scope``)."""

#: Relative agreement required between the recorded ε and each recomputation.
AGREEMENT_TOLERANCE = 0.01

#: Opacus PRV ``eps_error`` as a fraction of the PLD ε (its upper end adds it), at
#: least ``PRV_MIN_EPS_ERROR`` (TenSafe's own PRV asks for no less either).
PRV_RELATIVE_EPS_ERROR = 2e-3
PRV_MIN_EPS_ERROR = 1e-4


# ----------------------------------------------------------- recomputation


@dataclass(frozen=True, kw_only=True)
class EpsilonCheck:
    """The recorded ε of a run or dataset beside its independent recomputations.

    Attributes:
        scope: ``"run"`` (the run's own steps, against ``epsilon_run_total``),
            ``"run_exact"`` (the run's own and carried steps, against
            ``epsilon_run_exact``) or ``"dataset"`` (all runs composed).
        subject: the run id, or the dataset id.
        steps: number of rows composed.
        history: the composed ``(σ, q, steps)`` classes.
        recorded: the ε the ledger records (its last value).
        pld: ε by Google dp-accounting PLD (pessimistic, at the converged interval).
        prv: ε by Opacus PRV, the upper end of its error interval; ``None`` if it
            could not be computed (see ``note``).
        pld_relative_difference: ``recorded / pld − 1``.
        prv_relative_difference: ``recorded / prv − 1``, or ``None``.
        agree_within_1pct: the PLD refinement converged and both relative differences
            are within the tolerance.
        upper_bound_holds: ``recorded`` is below neither ``pld`` nor ``prv_lower`` by
            more than the tolerance (the ledger never under-reports). PRV's upper end
            is not used here: with a coarse ``prv_eps_error`` it can exceed the true ε
            by more than the tolerance.
        note: why a reference is missing or imprecise, if one is.
        pld_value_discretization: the PLD interval ``pld`` was computed at.
        pld_converged: the PLD refinement met its stopping rule.
        prv_lower: the lower end of Opacus PRV's error interval (≤ the true ε).
        prv_eps_error: the ε error PRV was evaluated with (``prv − prv_lower`` is
            about twice that).
        delta: (``run_exact`` checks of a run whose δ differs from the budget's) the
            δ of this check; ``None``: the result's ``delta``.
        accountant: (``run_exact`` checks) the accountant that produced ``recorded``
            when the ledger names it (``run_accountant``); ``None``: the budget's. An
            ``"rdp"`` figure is a deliberately looser bound: it only has to hold as an
            upper bound (see :attr:`passes`).
    """

    scope: CheckScope
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
    pld_value_discretization: float | None = None
    pld_converged: bool | None = None
    prv_lower: float | None = None
    prv_eps_error: float | None = None
    delta: float | None = None
    accountant: str | None = None

    @property
    def passes(self) -> bool:
        """Agreement within the tolerance; for a run's own RDP figure, the upper bound."""
        if self.scope == "run_exact" and self.accountant == "rdp":
            return self.upper_bound_holds
        return self.agree_within_1pct


@dataclass(frozen=True, kw_only=True)
class RecomputeResult:
    """Independent recomputation of one dataset's ledger.

    Attributes:
        dataset_id: the dataset.
        delta: δ of every ε compared.
        accountant: the accountant that produced the recorded values.
        relative_tolerance: the agreement tolerance (0.01 = 1 %).
        pld_value_discretization: the finest PLD discretization interval any check
            needed (each check's is on the check).
        runs: one check per run, in order of first appearance.
        dataset: the check of the whole composition.
        runs_exact: one check per run whose rows record ``epsilon_run_exact``: the
            last recorded value against the run's own and carried steps up to it.
        all_agree: every check passes (:attr:`EpsilonCheck.passes`).
        pld_seconds: time spent in PLD.
        prv_seconds: time spent in Opacus PRV.
        pld_tolerance: the relative change between two successive PLD intervals at
            which the refinement stops.
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
    runs_exact: tuple[EpsilonCheck, ...] = ()
    pld_tolerance: float = PLD_CONVERGENCE_TOLERANCE

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
            exact = items.get("runs_exact", ())
            items["runs_exact"] = tuple(_check_from_dict(r) for r in exact)  # type: ignore[attr-defined]
            return cls(**items)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("recompute", f"malformed recomputation result: {exc}") from None


def recompute_epsilons(
    events: Iterable[LedgerEvent],
    *,
    relative_tolerance: float = AGREEMENT_TOLERANCE,
    pld_tolerance: float = PLD_CONVERGENCE_TOLERANCE,
) -> RecomputeResult:
    """Recompute every run's and the dataset's ε from one dataset's ledger rows.

    ``events`` are one dataset's rows in ``seq`` order (see
    :func:`~tensafe.audit.history.dataset_events`). Costs one converged PLD and one
    PRV evaluation per distinct history (a run's, the dataset's; identical ones are
    evaluated once): see ``docs/audit.md`` section 5 for measured times.

    Raises:
        ConfigError: no ``budget_created`` row, or rows of several datasets
            (``events``); ``pld_tolerance`` not in (0, 0.01] (``pld_tolerance``).
    """
    if not 0.0 < pld_tolerance <= 0.01:
        raise ConfigError("pld_tolerance", f"must be in (0, 0.01], got {pld_tolerance!r}")
    rows = tuple(events)
    settings = budget_settings(rows)
    if any(e.dataset_id != settings.dataset_id for e in rows):
        raise ConfigError("events", "rows of several datasets; filter with dataset_events()")
    steps = [e for e in rows if e.kind == "dp_step"]
    references = _References(pld_tolerance=pld_tolerance)

    def check(scope: CheckScope, subject: str, chosen: list[LedgerEvent]) -> EpsilonCheck:
        last = chosen[-1] if chosen else None
        delta, accountant = settings.delta, None
        if scope == "run_exact":
            history = composed_history(_noisy_counts(chosen))
            recorded = last.epsilon_run_exact if last is not None else 0.0
            if last is not None and last.run_delta is not None:
                delta = last.run_delta
            accountant = None if last is None else last.run_accountant
        elif scope == "run":
            history = composed_history(step_counts(chosen))
            recorded = last.epsilon_run_total if last is not None else 0.0
        else:
            history = composed_history(step_counts(chosen))
            recorded = last.epsilon_dataset_total if last is not None else 0.0
        checked = _compare(
            scope=scope,
            subject=subject,
            history=history,
            recorded=float(recorded or 0.0),
            delta=delta,
            tolerance=relative_tolerance,
            references=references,
        )
        if scope != "run_exact":
            return checked
        own_delta = None if delta == settings.delta else delta
        return replace(checked, delta=own_delta, accountant=accountant)

    run_ids = list(dict.fromkeys(e.run_id for e in steps if e.run_id is not None))
    runs = tuple(check("run", run, [e for e in steps if e.run_id == run]) for run in run_ids)
    dataset = check("dataset", settings.dataset_id, steps)
    runs_exact = tuple(
        check("run_exact", run, chosen) for run, chosen in _exact_histories(rows).items()
    )
    return RecomputeResult(
        dataset_id=settings.dataset_id,
        delta=settings.delta,
        accountant=settings.accountant,
        relative_tolerance=relative_tolerance,
        pld_value_discretization=references.finest_interval(),
        runs=runs,
        dataset=dataset,
        all_agree=all(c.passes for c in (dataset, *runs, *runs_exact)),
        pld_seconds=references.pld_seconds,
        prv_seconds=references.prv_seconds,
        runs_exact=runs_exact,
        pld_tolerance=pld_tolerance,
    )


def _exact_histories(rows: Sequence[LedgerEvent]) -> dict[str, list[LedgerEvent]]:
    """Per run with a recorded ``epsilon_run_exact``: its own and carried rows up to the
    last row that records one (so that row's value is the history's ε)."""
    noisy = [e for e in rows if e.kind in ("dp_step", "dp_step_carried")]
    out: dict[str, list[LedgerEvent]] = {}
    for run in dict.fromkeys(e.run_id for e in noisy if e.run_id is not None):
        mine = [e for e in noisy if e.run_id == run]
        marked = [i for i, e in enumerate(mine) if e.epsilon_run_exact is not None]
        if marked:
            out[run] = mine[: marked[-1] + 1]
    return out


def _noisy_counts(rows: Iterable[LedgerEvent]) -> dict[StepClass, int]:
    counts: dict[StepClass, int] = {}
    for event in rows:
        cls: StepClass = (event.noise_multiplier, event.sample_rate)  # type: ignore[assignment]
        counts[cls] = counts.get(cls, 0) + 1
    return counts


_Reference = tuple[PLDReference, PRVReference | None, str]


class _References:
    """The PLD and PRV references of each distinct (history, δ), computed once: a one-run
    dataset's run and dataset checks (and its exact check) share one history."""

    def __init__(self, *, pld_tolerance: float) -> None:
        self.pld_tolerance = pld_tolerance
        self.pld_seconds = 0.0
        self.prv_seconds = 0.0
        self._memo: dict[tuple[tuple[Segment, ...], float], _Reference] = {}

    def of(self, history: tuple[Segment, ...], delta: float) -> _Reference:
        """(PLD, PRV or ``None``, why PRV is missing or ``""``) of a non-empty history."""
        cached = self._memo.get((history, delta))
        if cached is None:
            cached = self._memo[(history, delta)] = self._compute(history, delta)
        return cached

    def finest_interval(self) -> float:
        intervals = [pld.value_discretization_interval for pld, _, _ in self._memo.values()]
        return min(intervals, default=PLD_START_DISCRETIZATION)

    def _compute(self, history: tuple[Segment, ...], delta: float) -> _Reference:
        started = time.perf_counter()
        pld = converged_pld_epsilon(history, delta=delta, tolerance=self.pld_tolerance)
        self.pld_seconds += time.perf_counter() - started
        started = time.perf_counter()
        eps_error = max(PRV_MIN_EPS_ERROR, PRV_RELATIVE_EPS_ERROR * pld.epsilon)
        prv: PRVReference | None = None
        note = ""
        try:
            prv = opacus_prv_interval(history, delta=delta, eps_error=eps_error)
        except (MemoryError, ValueError, RuntimeError, FloatingPointError) as exc:
            note = f"Opacus PRV could not evaluate this history ({type(exc).__name__}: {exc})"
        self.prv_seconds += time.perf_counter() - started
        if prv is not None and not (math.isfinite(prv.upper) and math.isfinite(prv.lower)):
            note, prv = f"Opacus PRV returned {prv.upper!r}", None
        return pld, prv, note


def _compare(
    *,
    scope: CheckScope,
    subject: str,
    history: tuple[Segment, ...],
    recorded: float,
    delta: float,
    tolerance: float,
    references: _References,
) -> EpsilonCheck:
    steps = sum(n for _, _, n in history)
    if not history:
        return EpsilonCheck(
            scope=scope, subject=subject, steps=0, history=(), recorded=recorded, pld=0.0,
            prv=0.0, pld_relative_difference=_relative(recorded, 0.0),
            prv_relative_difference=_relative(recorded, 0.0),
            agree_within_1pct=recorded == 0.0, upper_bound_holds=True,
        )  # fmt: skip
    pld, prv, prv_note = references.of(history, delta)
    notes = [prv_note] if prv_note else []
    if not pld.converged:
        notes.append(
            f"the PLD refinement stopped at interval {pld.value_discretization_interval:.3g} "
            f"with a last change of {pld.relative_change:.2%}; its value is still an upper "
            "bound, so it cannot hide an under-report, but agreement is not confirmed"
        )
    differences = [_relative(recorded, pld.epsilon)]
    if prv is not None:
        differences.append(_relative(recorded, prv.upper))
    floors = [pld.epsilon] + ([prv.lower] if prv is not None else [])
    return EpsilonCheck(
        scope=scope,
        subject=subject,
        steps=steps,
        history=history,
        recorded=recorded,
        pld=pld.epsilon,
        prv=None if prv is None else prv.upper,
        pld_relative_difference=differences[0],
        prv_relative_difference=None if prv is None else differences[1],
        agree_within_1pct=pld.converged
        and prv is not None
        and all(abs(d) <= tolerance for d in differences),
        upper_bound_holds=all(recorded >= floor * (1.0 - tolerance) for floor in floors),
        note="; ".join(notes) or None,
        pld_value_discretization=pld.value_discretization_interval,
        pld_converged=pld.converged,
        prv_lower=None if prv is None else prv.lower,
        prv_eps_error=None if prv is None else prv.eps_error,
    )


def _relative(value: float, reference: float) -> float:
    if reference == 0.0:
        return 0.0 if value == 0.0 else math.inf
    return value / reference - 1.0


def _check_from_dict(data: Mapping[str, object]) -> EpsilonCheck:
    items = dict(data)
    items["history"] = tuple(tuple(s) for s in items["history"])  # type: ignore[attr-defined]
    return EpsilonCheck(**items)  # type: ignore[arg-type]


__all__ = [
    "AGREEMENT_TOLERANCE",
    "DEFAULT_PLD_DISCRETIZATION",
    "PLD_CONVERGENCE_TOLERANCE",
    "PRV_MIN_EPS_ERROR",
    "PRV_RELATIVE_EPS_ERROR",
    "CheckScope",
    "EpsilonCheck",
    "RecomputeResult",
    "ReplayMismatch",
    "ReplayResult",
    "converged_pld_epsilon",
    "opacus_prv_epsilon",
    "opacus_prv_interval",
    "pld_epsilon",
    "recompute_epsilons",
    "replay_ledger",
]
