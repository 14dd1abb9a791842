"""Re-deriving ε from the ledger alone: independently, and by replay.

Two different questions:

* **Independent recomputation** (:func:`recompute_epsilons`): is the recorded ε
  right? Each run's and the dataset's ``(σ, q, steps)`` history is rebuilt from the
  ``dp_step`` rows and its ε recomputed with two implementations that share no code
  with TenSafe's accountant: Google ``dp_accounting``'s privacy loss distribution
  (PLD, ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``, pessimistic estimate)
  and Opacus' ``PRVAccountant`` used directly. The recorded value must agree with
  both within 1 %. Where rows record a run's exact ε (``epsilon_run_exact``, ledger
  format 2), it is checked the same way against the run's whole accountant history:
  its own ``dp_step`` rows and the ``dp_step_carried`` rows a ``load_state`` brought in.
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

import dp_accounting
from opacus.accountants import PRVAccountant

from tensafe.audit.history import budget_settings, composed_history, step_counts
from tensafe.audit.ledger import LedgerEvent
from tensafe.audit.replay import ReplayMismatch, ReplayResult, replay_ledger
from tensafe.errors import ConfigError
from tensafe.privacy.epsilon import Segment
from tensafe.privacy.schedule import StepClass

CheckScope = Literal["run", "run_exact", "dataset"]
"""What an :class:`EpsilonCheck` compares (see its ``scope``)."""

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
        scope: ``"run"`` (the run's own steps, against ``epsilon_run_total``),
            ``"run_exact"`` (the run's own and carried steps, against
            ``epsilon_run_exact``) or ``"dataset"`` (all runs composed).
        subject: the run id, or the dataset id.
        steps: number of rows composed.
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
        pld_value_discretization: the PLD discretization used.
        runs: one check per run, in order of first appearance.
        dataset: the check of the whole composition.
        runs_exact: one check per run whose rows record ``epsilon_run_exact``: the
            last recorded value against the run's own and carried steps up to it.
        all_agree: every check passes (:attr:`EpsilonCheck.passes`).
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
    runs_exact: tuple[EpsilonCheck, ...] = ()

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
            discretization=pld_value_discretization,
            timers=timers,
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
        pld_value_discretization=pld_value_discretization,
        runs=runs,
        dataset=dataset,
        all_agree=all(c.passes for c in (dataset, *runs, *runs_exact)),
        pld_seconds=timers["pld"],
        prv_seconds=timers["prv"],
        runs_exact=runs_exact,
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


def _compare(
    *,
    scope: CheckScope,
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


__all__ = [
    "AGREEMENT_TOLERANCE",
    "DEFAULT_PLD_DISCRETIZATION",
    "PRV_RELATIVE_EPS_ERROR",
    "CheckScope",
    "EpsilonCheck",
    "RecomputeResult",
    "ReplayMismatch",
    "ReplayResult",
    "opacus_prv_epsilon",
    "pld_epsilon",
    "recompute_epsilons",
    "replay_ledger",
]
