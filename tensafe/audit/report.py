"""The privacy audit report of one dataset, built from its ledger rows alone.

:func:`build_report` gathers what a compliance officer asks — the cap, the ε spent
and remaining, every run with its parameters and its ε over steps, refusals,
budget changes — and attaches the chain verification, the independent
recomputation (Google dp-accounting PLD and Opacus PRV) and a replay of the
recorded values. :class:`AuditReport` is plain data: JSON in and out
(:meth:`AuditReport.to_json`, :meth:`AuditReport.from_json`); the HTML page is
:func:`tensafe.audit.render.render_html`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType

from tensafe.audit.canary_result import CanaryAuditResult, result_from_event
from tensafe.audit.history import budget_settings, dataset_events, run_histories
from tensafe.audit.ledger import ChainHead, ChainReport, LedgerEvent, utc_timestamp, verify_chain
from tensafe.audit.recompute import (
    RecomputeResult,
    ReplayMismatch,
    ReplayResult,
    recompute_epsilons,
    replay_ledger,
)
from tensafe.errors import ConfigError
from tensafe.privacy.epsilon import Segment

#: Version of the report's JSON layout (2: ε reported vs budget figure, carried steps).
REPORT_FORMAT = 2

#: Layouts :meth:`AuditReport.from_dict` reads (older ones are upgraded on reading).
READABLE_FORMATS = (1, 2)


@dataclass(frozen=True, kw_only=True)
class EpsilonSeries:
    """ε after each of a run's steps (parallel tuples, one entry per step).

    Attributes:
        seq: the ledger rows (orders the steps of all runs in time).
        steps: the run's step numbers.
        epsilon_run: the run's ε after the step as reported to the client: the row's
            ``epsilon_run_exact`` when recorded, else its ``epsilon_run_total``
            (rows before ledger format 2).
        epsilon_dataset: the dataset's ε (all runs) after the step — the value
            compared with the cap.
        cap: the cap in force at the step.
    """

    seq: tuple[int, ...]
    steps: tuple[int, ...]
    epsilon_run: tuple[float, ...]
    epsilon_dataset: tuple[float, ...]
    cap: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class RunReport:
    """One training run on the dataset.

    Attributes:
        run_id: the run.
        steps: noisy steps charged to the dataset.
        history: ``(σ, q, steps)`` segments in order (σ: noise multiplier; q:
            sampling rate).
        max_grad_norms: distinct clipping norms C used, in order of first use.
        dataset_sizes: distinct dataset sizes N declared, in order.
        epsilon: the run's ε as reported to the client: the last ``dp_step`` row's
            ``epsilon_run_exact`` (the run's accountant over its own and carried
            steps) when recorded, else its ``epsilon_run_total`` (older rows). A run
            with carried rows but no step on this dataset yet: its last carried
            row's ``epsilon_run_exact``, or 0.
        epsilon_budget: the last ``dp_step`` row's ``epsilon_run_total``: the
            budget's conservative figure over the run's own steps (0 without one).
        carried_steps: steps of other runs' lineage carried into this run by a
            ``load_state`` (``dp_step_carried`` rows; they charge no dataset).
        first_step_at: time of the first step (of the first carried row if the run
            has no step).
        last_step_at: time of the last step (likewise).
        refusals: steps of this run refused for budget.
        series: ε after every step (empty for a run without steps).
        sampling: how its batches were drawn (``"server-poisson"``,
            ``"client-declared"``), from its step rows; ``None`` when they do not say
            (rows written before the label existed: the client declared them).
        privacy_unit: ``"record"`` or ``"unit"`` (e.g. a patient), likewise.
    """

    run_id: str
    steps: int
    history: tuple[Segment, ...]
    max_grad_norms: tuple[float, ...]
    dataset_sizes: tuple[int, ...]
    epsilon: float
    epsilon_budget: float
    carried_steps: int
    first_step_at: str
    last_step_at: str
    refusals: int
    series: EpsilonSeries
    sampling: str | None = None
    privacy_unit: str | None = None


@dataclass(frozen=True, kw_only=True)
class BudgetChange:
    """A budget creation or cap change.

    Attributes:
        seq: the ledger row.
        kind: ``"budget_created"`` or ``"budget_changed"``.
        created_at: when.
        previous_cap: the cap before (``None`` at creation).
        new_cap: the cap after.
        epsilon_spent: the dataset's ε at that moment.
        actor: who made the change, if recorded.
        reason: the reason given, if any.
        sampling_policy: the sampling policy after the change (``"server-only"``,
            ``"any"``), when the row records one.
    """

    seq: int
    kind: str
    created_at: str
    previous_cap: float | None
    new_cap: float
    epsilon_spent: float
    actor: str | None
    reason: str | None
    sampling_policy: str | None = None


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A step refused because it would have exceeded the cap (nothing was applied).

    Attributes:
        seq: the ledger row.
        run_id: the run that asked.
        step: the step number it would have had.
        created_at: when.
        noise_multiplier: σ of the refused step.
        sample_rate: q of the refused step.
        epsilon_spent: the dataset's ε at the time (unchanged).
        epsilon_requested: the dataset's ε had the step been taken.
        cap: the cap in force.
    """

    seq: int
    run_id: str
    step: int
    created_at: str
    noise_multiplier: float
    sample_rate: float
    epsilon_spent: float
    epsilon_requested: float
    cap: float


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """Everything the audit of one dataset shows; JSON-serializable.

    Attributes:
        format: :data:`REPORT_FORMAT`.
        generated_at: when the report was built (UTC).
        tenant_id: the owning tenant.
        dataset_id: the dataset.
        accountant: the accountant that computed recorded ε.
        delta: δ of every ε.
        cap: the current ε cap.
        epsilon_spent: the dataset's recorded ε (all runs composed; conservative).
        epsilon_remaining: ``max(0, cap − epsilon_spent)``.
        total_steps: noisy steps on the dataset, all runs.
        ledger_rows: rows read for this dataset.
        first_event_at: time of the first row.
        last_event_at: time of the last row.
        runs: the runs, in order of their first row (step or carried step).
        budget_changes: creation and every cap change, in order.
        refusals: every refused step, in order.
        chain: the chain verification, or ``None`` if no key was given.
        recompute: the independent recomputation, or ``None`` if skipped.
        replay: the replay of recorded values, or ``None`` if skipped.
        library_versions: what computed the latest recorded ε.
        warnings: discrepancies found while building the report, in words.
        notices: what a reader must know that is no discrepancy, in words — e.g. that
            some runs built their own batches (client-declared sampling).
        dataset_name: the dataset's name and version, when it is a server-held dataset
            (display only).
        privacy_audits: the empirical privacy audits recorded on the dataset's ledger
            (``privacy_audit`` rows), in order: each run's ε lower bound beside its ε.
            An audit whose lower bound exceeds the ε it audits is a warning.
    """

    format: int = REPORT_FORMAT
    generated_at: str
    tenant_id: str
    dataset_id: str
    accountant: str
    delta: float
    cap: float
    epsilon_spent: float
    epsilon_remaining: float
    total_steps: int
    ledger_rows: int
    first_event_at: str
    last_event_at: str
    runs: tuple[RunReport, ...]
    budget_changes: tuple[BudgetChange, ...]
    refusals: tuple[Refusal, ...]
    chain: ChainReport | None
    recompute: RecomputeResult | None
    replay: ReplayResult | None
    library_versions: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    dataset_name: str | None = None
    privacy_audits: tuple[CanaryAuditResult, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "library_versions", MappingProxyType(dict(self.library_versions)))

    @property
    def ok(self) -> bool:
        """Nothing to worry about: chain verified, values reproduced, no warnings."""
        return (
            self.chain is not None
            and self.chain.ok
            and (self.recompute is None or self.recompute.all_agree)
            and (self.replay is None or self.replay.ok)
            and not self.warnings
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (tuples become lists)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out: dict[str, object] = {}
        for name, value in data.items():
            if name == "library_versions":
                out[name] = dict(self.library_versions)
            elif name == "privacy_audits":
                out[name] = [audit.to_dict() for audit in self.privacy_audits]
            elif isinstance(value, tuple):
                out[name] = [asdict(v) if hasattr(v, "__dataclass_fields__") else v for v in value]
            elif hasattr(value, "__dataclass_fields__"):
                out[name] = asdict(value)
            else:
                out[name] = value
        return out

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as JSON (floats exact; infinities as ``Infinity``)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> AuditReport:
        """Inverse of :meth:`to_dict`; also reads format 1 (each run's ``epsilon_budget``
        is then its ``epsilon``, ``carried_steps`` 0), returned as format 2.

        Raises:
            ConfigError: (``report``) malformed, or a format not in :data:`READABLE_FORMATS`.
        """
        try:
            items = dict(data)
            if items.get("format") not in READABLE_FORMATS:
                raise ValueError(f"format {items.get('format')!r}, expected {REPORT_FORMAT}")
            items["format"] = REPORT_FORMAT
            items["runs"] = tuple(_run_from_dict(r) for r in items["runs"])  # type: ignore[attr-defined]
            items["budget_changes"] = tuple(BudgetChange(**c) for c in items["budget_changes"])  # type: ignore[attr-defined]
            items["refusals"] = tuple(Refusal(**r) for r in items["refusals"])  # type: ignore[attr-defined]
            items["warnings"] = tuple(items.get("warnings", ()))  # type: ignore[arg-type]
            items["notices"] = tuple(items.get("notices", ()))  # type: ignore[arg-type]
            items["privacy_audits"] = tuple(
                CanaryAuditResult.from_dict(a)
                for a in items.get("privacy_audits", ())  # type: ignore[attr-defined]
            )
            if items.get("chain") is not None:
                items["chain"] = ChainReport.from_dict(items["chain"])  # type: ignore[arg-type]
            if items.get("recompute") is not None:
                items["recompute"] = RecomputeResult.from_dict(items["recompute"])  # type: ignore[arg-type]
            if items.get("replay") is not None:
                replay = dict(items["replay"])  # type: ignore[call-overload]
                replay["mismatches"] = tuple(ReplayMismatch(**m) for m in replay["mismatches"])
                items["replay"] = ReplayResult(**replay)
            return cls(**items)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError("report", f"malformed audit report: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> AuditReport:
        """Inverse of :meth:`to_json`.

        Raises:
            ConfigError: (``report``) not JSON, or malformed.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("report", f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("report", "must be a JSON object")
        return cls.from_dict(data)


def _recompute_warning(result: RecomputeResult) -> str:
    checks = (result.dataset, *result.runs, *result.runs_exact)
    if not all(c.upper_bound_holds for c in checks):
        return (
            "A recorded ε is below the independent recomputation by more than 1 %: the "
            "ledger under-reports the privacy spent (see the recomputation table)."
        )
    return (
        "The recorded ε does not agree within 1 % with the independent recomputation, "
        "though it is never below it: it over-states the privacy spent, or a reference "
        "could not be evaluated (see the recomputation table)."
    )


def build_report(
    events: Iterable[LedgerEvent],
    *,
    dataset_id: str,
    tenant_id: str | None = None,
    key: bytes | None = None,
    expected_head: ChainHead | None = None,
    cap: float | None = None,
    recompute: bool = True,
    replay: bool = True,
    generated_at: str | None = None,
    dataset_name: str | None = None,
) -> AuditReport:
    """The audit report of ``dataset_id`` from ledger rows.

    Args:
        events: the ledger rows, ordered by ``seq``: at least the dataset's whole
            chain (rows of other datasets are ignored for the content, but are
            part of the chain that is verified).
        dataset_id: the dataset to report on.
        tenant_id: restrict to this tenant's rows (when dataset ids are per tenant).
        key: the ledger HMAC key; ``None`` skips chain verification (the report
            then says so).
        expected_head: the chain head recorded outside the ledger (detects rows
            deleted from the end).
        cap: the cap the service currently holds for the dataset; a difference from
            the ledger's last cap is reported as a warning. The ledger's cap is
            reported.
        recompute: run the independent PLD/PRV recomputation (seconds).
        replay: replay the recorded values of each run's last step and of every
            refusal through the service's schedule.
        generated_at: the report time (default now), as :func:`utc_timestamp`.
        dataset_name: a human-readable name for the dataset (display only; the ledger
            names datasets by id).

    Raises:
        ConfigError: the dataset has no rows, or no ``budget_created`` row.
    """
    all_rows = tuple(events)
    rows = dataset_events(all_rows, dataset_id=dataset_id, tenant_id=tenant_id)
    if not rows:
        raise ConfigError("dataset_id", f"no ledger rows for dataset {dataset_id!r}")
    settings = budget_settings(rows)
    warnings: list[str] = []
    chain = None
    if key is not None:
        chain = verify_chain(all_rows, key, expected_head=expected_head)
        if not chain.ok:
            warnings.append(
                f"The ledger's integrity check failed at entry {chain.first_broken_seq}: "
                f"{chain.reason}. The figures below cannot be trusted."
            )
    last = rows[-1]
    if cap is not None and cap != last.cap:
        warnings.append(
            f"The service holds a cap of {cap:g} but the ledger's last entry records {last.cap:g}."
        )
    recomputed = recompute_epsilons(rows) if recompute else None
    if recomputed is not None and not recomputed.all_agree:
        warnings.append(_recompute_warning(recomputed))
    replayed = replay_ledger(rows, stride=len(rows) + 1) if replay else None
    if replayed is not None and not replayed.ok:
        warnings.append(
            f"{len(replayed.mismatches)} recorded value(s) could not be reproduced by replaying "
            "the ledger (see the replay section)."
        )
    audits = tuple(result_from_event(e) for e in rows if e.kind == "privacy_audit")
    warnings.extend(_audit_warning(a) for a in audits if not a.passed)
    steps = [e for e in rows if e.kind == "dp_step"]
    spent = steps[-1].epsilon_dataset_total if steps else 0.0
    runs = _runs(rows)
    return AuditReport(
        generated_at=generated_at or utc_timestamp(),
        tenant_id=settings.tenant_id,
        dataset_id=dataset_id,
        accountant=settings.accountant,
        delta=settings.delta,
        cap=last.cap,
        epsilon_spent=spent,
        epsilon_remaining=max(0.0, last.cap - spent),
        total_steps=len(steps),
        ledger_rows=len(rows),
        first_event_at=rows[0].created_at,
        last_event_at=last.created_at,
        runs=runs,
        budget_changes=_budget_changes(rows),
        refusals=tuple(_refusal(e) for e in rows if e.kind == "step_refused"),
        chain=chain,
        recompute=recomputed,
        replay=replayed,
        library_versions=last.library_versions,
        warnings=tuple(warnings),
        notices=_notices(runs) + _audit_notices(audits),
        dataset_name=dataset_name,
        privacy_audits=audits,
    )


def _audit_warning(audit: CanaryAuditResult) -> str:
    return (
        f"The empirical privacy audit of run {audit.run_id} FAILED: its measured lower bound "
        f"ε_lb = {audit.epsilon_lower_bound:.3g} exceeds the ε = {audit.epsilon_upper:.3g} its "
        f"accountant claims ({audit.correct} of {audit.guesses} membership guesses right on "
        f"{audit.canaries} canaries, {audit.confidence:.0%} confidence): the training step "
        "is less private than reported (see the empirical audit section)."
    )


def _audit_notices(audits: tuple[CanaryAuditResult, ...]) -> tuple[str, ...]:
    broken = sorted({a.test_fault for a in audits if a.test_fault})
    if not broken:
        return ()
    return (
        "Some privacy audits on this ledger were run against a deliberately broken engine "
        f"(test-only fault: {', '.join(broken)}) to show that the audit detects it; they "
        "say nothing about the runs that trained on this dataset.",
    )


def _notices(runs: tuple[RunReport, ...]) -> tuple[str, ...]:
    """Client-declared sampling, said in words (it is no discrepancy: a mode)."""
    declared = [r.run_id for r in runs if r.steps and r.sampling != "server-poisson"]
    if not declared:
        return ()
    shown = ", ".join(declared[:3]) + ("…" if len(declared) > 3 else "")
    return (
        f"Sampling: client-declared for {len(declared)} run(s) ({shown}). Those runs built "
        "their own batches and declared the dataset size N and sampling rate q; their ε "
        "holds only if the client really sampled as it declared. The server refused batches "
        "larger than N or implausibly large for q, and repeated records, but cannot check "
        "the sampling itself. Runs whose batches the server drew (server-poisson) do not "
        "depend on the client.",
    )


def _reported(event: LedgerEvent) -> float:
    """The run's ε the client was told at this row: exact when recorded (format 2)."""
    if event.epsilon_run_exact is not None:
        return event.epsilon_run_exact
    return event.epsilon_run_total  # type: ignore[return-value]


def _runs(rows: tuple[LedgerEvent, ...]) -> tuple[RunReport, ...]:
    histories = run_histories(rows)
    noisy = [e for e in rows if e.kind in ("dp_step", "dp_step_carried")]
    return tuple(
        _run(run_id, rows, [e for e in noisy if e.run_id == run_id], histories.get(run_id, ()))
        for run_id in dict.fromkeys(e.run_id for e in noisy if e.run_id is not None)
    )


def _run(
    run_id: str,
    rows: tuple[LedgerEvent, ...],
    noisy: list[LedgerEvent],
    history: tuple[Segment, ...],
) -> RunReport:
    mine = [e for e in noisy if e.kind == "dp_step"]
    carried = [e for e in noisy if e.kind == "dp_step_carried"]
    if mine:
        epsilon, budget, timed = _reported(mine[-1]), mine[-1].epsilon_run_total, mine
    else:
        exact = [e.epsilon_run_exact for e in carried if e.epsilon_run_exact is not None]
        epsilon, budget, timed = (exact[-1] if exact else 0.0), 0.0, carried
    return RunReport(
        run_id=run_id,
        steps=len(mine),
        history=history,
        max_grad_norms=tuple(dict.fromkeys(e.max_grad_norm for e in mine)),  # type: ignore[misc]
        dataset_sizes=tuple(dict.fromkeys(e.dataset_size for e in mine)),  # type: ignore[misc]
        epsilon=epsilon,
        epsilon_budget=budget,  # type: ignore[arg-type]
        carried_steps=len(carried),
        first_step_at=timed[0].created_at,
        last_step_at=timed[-1].created_at,
        refusals=sum(1 for e in rows if e.kind == "step_refused" and e.run_id == run_id),
        sampling=next((e.sampling for e in reversed(mine) if e.sampling), None),
        privacy_unit=next((e.privacy_unit for e in reversed(mine) if e.privacy_unit), None),
        series=EpsilonSeries(
            seq=tuple(e.seq for e in mine),
            steps=tuple(e.step for e in mine),  # type: ignore[misc]
            epsilon_run=tuple(_reported(e) for e in mine),
            epsilon_dataset=tuple(e.epsilon_dataset_total for e in mine),
            cap=tuple(e.cap for e in mine),
        ),
    )


def _budget_changes(rows: tuple[LedgerEvent, ...]) -> tuple[BudgetChange, ...]:
    out = []
    previous: float | None = None
    for event in rows:
        if event.kind in ("budget_created", "budget_changed"):
            out.append(
                BudgetChange(
                    seq=event.seq,
                    kind=event.kind,
                    created_at=event.created_at,
                    previous_cap=previous,
                    new_cap=event.cap,
                    epsilon_spent=event.epsilon_dataset_total,
                    actor=event.actor,
                    reason=event.reason,
                    sampling_policy=event.sampling_policy,
                )
            )
        previous = event.cap
    return tuple(out)


def _refusal(event: LedgerEvent) -> Refusal:
    return Refusal(
        seq=event.seq,
        run_id=event.run_id,  # type: ignore[arg-type]
        step=event.step,  # type: ignore[arg-type]
        created_at=event.created_at,
        noise_multiplier=event.noise_multiplier,  # type: ignore[arg-type]
        sample_rate=event.sample_rate,  # type: ignore[arg-type]
        epsilon_spent=event.epsilon_dataset_total,
        epsilon_requested=event.epsilon_requested,  # type: ignore[arg-type]
        cap=event.cap,
    )


def _run_from_dict(data: Mapping[str, object]) -> RunReport:
    items = dict(data)
    items["history"] = tuple(tuple(s) for s in items["history"])  # type: ignore[attr-defined]
    items["max_grad_norms"] = tuple(items["max_grad_norms"])  # type: ignore[arg-type]
    items["dataset_sizes"] = tuple(items["dataset_sizes"])  # type: ignore[arg-type]
    series = {k: tuple(v) for k, v in dict(items["series"]).items()}  # type: ignore[call-overload]
    items["series"] = EpsilonSeries(**series)
    items.setdefault("epsilon_budget", items["epsilon"])  # format 1: epsilon was the budget's
    items.setdefault("carried_steps", 0)
    return RunReport(**items)  # type: ignore[arg-type]


__all__ = [
    "READABLE_FORMATS",
    "REPORT_FORMAT",
    "AuditReport",
    "BudgetChange",
    "EpsilonSeries",
    "Refusal",
    "RunReport",
    "build_report",
]
