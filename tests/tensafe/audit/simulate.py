"""Build ledgers the way the server does: budget check, then charge, then chained row.

Used by the audit tests and to generate ``docs/audit-sample.html`` (``make audit-sample``)::

    .venv/bin/python -m tests.tensafe.audit.simulate docs/audit-sample.html [report.json]
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tensafe.audit.canary_result import CanaryAuditResult, privacy_audit_fields
from tensafe.audit.history import accountant_history, carried_origins, steps_to_carry
from tensafe.audit.ledger import GENESIS, ChainHead, LedgerEvent, append, utc_timestamp
from tensafe.privacy.budget import DatasetBudget, accounting_versions
from tensafe.privacy.epsilon import AccountantName, compute_epsilon
from tensafe.privacy.schedule import EpsilonSchedule

KEY = bytes(range(32))
START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class RunSpec:
    """A run: id, σ, q, N, C and how many steps it asks for."""

    run_id: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    dataset_size: int = 50_000
    max_grad_norm: float = 1.0


@dataclass
class Ledger:
    """The rows written so far, the chain head, and the live budget."""

    events: list[LedgerEvent]
    head: ChainHead
    budget: DatasetBudget


def new_ledger(
    *,
    cap: float,
    delta: float = 1e-5,
    accountant: AccountantName = "prv",
    dataset_id: str = "patients-2026",
    key: bytes = KEY,
    schedule: EpsilonSchedule | None = None,
) -> Ledger:
    """A ledger holding only its ``budget_created`` row (a shared ``schedule`` makes
    repeated simulations cheap)."""
    budget = DatasetBudget(
        dataset_id=dataset_id,
        epsilon_cap=cap,
        delta=delta,
        accountant=accountant,
        schedule=schedule,
    )
    ledger = Ledger(events=[], head=GENESIS, budget=budget)
    _write(
        ledger,
        key,
        kind="budget_created",
        epsilon_dataset_total=0.0,
        actor="admin:dpo@st-marys.example",
        reason="initial budget approved by the data protection officer",
    )
    return ledger


def run_steps(
    ledger: Ledger, runs: Sequence[RunSpec], *, key: bytes = KEY, exact: bool = False
) -> None:
    """Interleave the runs' steps round-robin; a run stops after its steps or at its
    first refusal. ``exact``: also record ledger format 2's ``model_step`` and
    ``epsilon_run_exact`` (the run's own and carried steps, as the server's accountant)."""
    done = dict.fromkeys((r.run_id for r in runs), 0)
    active = list(runs)
    while active:
        for spec in list(active):
            decision = ledger.budget.check_step(
                run_id=spec.run_id,
                noise_multiplier=spec.noise_multiplier,
                sample_rate=spec.sample_rate,
            )
            common = {
                "run_id": spec.run_id,
                "step": decision.step,
                "noise_multiplier": spec.noise_multiplier,
                "sample_rate": spec.sample_rate,
                "max_grad_norm": spec.max_grad_norm,
                "dataset_size": spec.dataset_size,
                "epsilon_step": decision.epsilon_step,
            }
            if not decision.allowed:
                _write(
                    ledger,
                    key,
                    kind="step_refused",
                    epsilon_run_total=decision.epsilon_run,
                    epsilon_dataset_total=decision.epsilon_before,
                    epsilon_requested=decision.epsilon_after,
                    **common,
                )
                active.remove(spec)
                continue
            charge = ledger.budget.record_step(
                run_id=spec.run_id,
                noise_multiplier=spec.noise_multiplier,
                sample_rate=spec.sample_rate,
            )
            _write(
                ledger,
                key,
                kind="dp_step",
                epsilon_run_total=charge.epsilon_run_total,
                epsilon_dataset_total=charge.epsilon_dataset_total,
                **(_exact_fields(ledger, spec.run_id, spec) if exact else {}),
                **common,
            )
            done[spec.run_id] += 1
            if done[spec.run_id] >= spec.steps:
                active.remove(spec)


def carry_into(ledger: Ledger, *, source_run_id: str, target_run_id: str, key: bytes = KEY) -> int:
    """Record a ``load_state`` of ``source_run_id``'s latest checkpoint into the target:
    its steps not held yet, as ``dp_step_carried`` rows. Returns how many."""
    steps = steps_to_carry(
        ledger.events,
        source_run_id=source_run_id,
        upto_seq=ledger.head.seq,
        target_run_id=target_run_id,
        held=carried_origins(ledger.events, run_id=target_run_id),
    )
    for step in steps:
        history = [*accountant_history(ledger.events, run_id=target_run_id)]
        history.append((step.noise_multiplier, step.sample_rate))
        _write(
            ledger,
            key,
            **step.ledger_fields(run_id=target_run_id),
            epsilon_dataset_total=ledger.budget.epsilon(),
            epsilon_run_exact=_exact_epsilon(ledger, history),
            model_step=len(history),
        )
    return len(steps)


def _exact_fields(ledger: Ledger, run_id: str, spec: RunSpec) -> dict[str, object]:
    history = [*accountant_history(ledger.events, run_id=run_id)]
    history.append((spec.noise_multiplier, spec.sample_rate))
    return {"epsilon_run_exact": _exact_epsilon(ledger, history), "model_step": len(history)}


def _exact_epsilon(ledger: Ledger, history: Sequence[tuple[float, float]]) -> float:
    counts = Counter(history)  # order does not change ε
    return compute_epsilon(
        history=[(sigma, q, n) for (sigma, q), n in sorted(counts.items())],
        delta=ledger.budget.delta,
        accountant=ledger.budget.accountant,
    )


def raise_cap(ledger: Ledger, new_cap: float, *, key: bytes = KEY, actor: str, reason: str) -> None:
    """Raise the cap and record it."""
    change = ledger.budget.raise_cap(new_cap)
    _write(
        ledger,
        key,
        kind="budget_changed",
        epsilon_dataset_total=change.epsilon_spent,
        actor=actor,
        reason=reason,
    )


def record_audit(ledger: Ledger, result: CanaryAuditResult, *, key: bytes = KEY) -> None:
    """Record a privacy audit (it charges nothing: the dataset's ε is unchanged)."""
    spent = ledger.events[-1].epsilon_dataset_total
    _write(ledger, key, epsilon_dataset_total=spent, **privacy_audit_fields(result))


def _write(ledger: Ledger, key: bytes, **fields: object) -> None:
    budget = ledger.budget
    seq = ledger.head.seq + 1
    row = {
        "tenant_id": "st-marys-hospital",
        "dataset_id": budget.dataset_id,
        "delta": budget.delta,
        "accountant": budget.accountant,
        "cap": budget.epsilon_cap,
        "library_versions": accounting_versions(budget.schedule),
        "created_at": utc_timestamp(START + timedelta(seconds=7 * seq)),
        **fields,
    }
    event = append(ledger.head, row, key)
    ledger.events.append(event)
    ledger.head = ChainHead.after(event)


def sample_ledger() -> Ledger:
    """The ledger behind ``docs/audit-sample.html``: three runs, a cap raise, refusals."""
    ledger = new_ledger(cap=3.0)
    run_steps(
        ledger,
        [
            RunSpec("baseline-lora", 1.1, 0.01, 400),
            RunSpec("clinical-notes-v2", 0.9, 0.01, 5000),
        ],
    )
    raise_cap(
        ledger,
        4.0,
        actor="admin:dpo@st-marys.example",
        reason="ethics board approval 2026-03-04 for one more fine-tuning round",
    )
    run_steps(ledger, [RunSpec("clinical-notes-v3", 1.3, 0.01, 5000)])
    return ledger


def main(argv: Sequence[str]) -> None:
    from tensafe.audit import build_report, render_html

    ledger = sample_ledger()
    report = build_report(
        ledger.events,
        dataset_id=ledger.budget.dataset_id,
        key=KEY,
        expected_head=ledger.head,
        generated_at=utc_timestamp(START + timedelta(days=3)),
    )
    html = render_html(report)
    with open(argv[0], "w", encoding="utf-8") as fh:
        fh.write(html)
    if len(argv) > 1:
        with open(argv[1], "w", encoding="utf-8") as fh:
            fh.write(report.to_json())


if __name__ == "__main__":
    main(sys.argv[1:])
