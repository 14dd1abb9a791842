"""Recording an empirical privacy audit in a dataset's ledger (a ``privacy_audit`` row).

The audit itself is library code (:mod:`tensafe.audit.canary_audit`); this appends its
outcome to the chain of the dataset it is filed under, under the budget row's lock like
every other row. It charges nothing: the row carries the dataset's ε and cap unchanged.
The audit report then shows ε_lb beside ε for the audited run, and warns when the audit
failed (:func:`tensafe.audit.build_report`).
"""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import NotFoundError, ValidationError
from server.services.budgets import BudgetService
from server.services.ledger import run_noisy_rows
from tensafe.audit import LedgerEvent, utc_timestamp
from tensafe.audit.canary_result import CanaryAuditResult, privacy_audit_fields


@dataclass(frozen=True)
class AuditedRun:
    """A run's DP parameters as its ledger records them, to audit the step at them.

    Attributes:
        tenant_id: the run's tenant.
        dataset_id: the dataset its steps are charged to (the audit is filed there).
        steps: its own noisy steps.
        noise_multiplier: σ (the same at every step).
        sample_rate: q (likewise).
        max_grad_norm: C (likewise).
        delta: the run's δ (of the ε it was told).
        accountant: the run's accountant.
    """

    tenant_id: str
    dataset_id: str
    steps: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    delta: float
    accountant: str


def audited_run(budgets: BudgetService, *, run_id: str) -> AuditedRun:
    """The DP parameters of ``run_id`` from its ``dp_step`` ledger rows.

    Raises:
        NotFoundError: (``run``) the run has no noisy step in any ledger.
        ValidationError: (``run``) σ, q or C changed during the run (audit one
            configuration at a time: not supported here).
    """
    with budgets.db.sessions() as session:
        rows = [r for r in run_noisy_rows(session, run_id) if r.kind == "dp_step"]
        if not rows:
            raise NotFoundError(f"run {run_id!r} has no noisy step in the ledger", field="run")
        configs = {(r.noise_multiplier, r.sample_rate, r.max_grad_norm) for r in rows}
        if len(configs) > 1:
            raise ValidationError(
                f"run {run_id!r} changed σ, q or C during training ({len(configs)} settings); "
                "audit each setting with explicit --noise-multiplier/--sample-rate/--steps",
                field="run",
            )
        last = rows[-1]
        return AuditedRun(
            tenant_id=last.tenant_id,
            dataset_id=last.dataset_id,
            steps=len(rows),
            noise_multiplier=float(last.noise_multiplier),  # type: ignore[arg-type]
            sample_rate=float(last.sample_rate),  # type: ignore[arg-type]
            max_grad_norm=float(last.max_grad_norm),  # type: ignore[arg-type]
            delta=float(last.run_delta if last.run_delta is not None else last.delta),
            accountant=last.run_accountant or last.accountant,
        )


def record_privacy_audit(
    budgets: BudgetService,
    *,
    tenant_id: str,
    dataset_id: str,
    result: CanaryAuditResult,
    actor: str | None = None,
    reason: str | None = None,
) -> LedgerEvent:
    """Append ``result`` to the dataset's ledger as a ``privacy_audit`` row.

    Raises:
        NotFoundError: (``dataset_id``) the dataset has no budget.
        ConfigError: the result does not make a valid row (e.g. a non-finite score).
    """
    budgets.key()  # before any transaction: the keyring uses its own connection
    try:
        with budgets.db.transaction() as session:
            row, budget = budgets.lock(session, tenant_id=tenant_id, dataset_id=dataset_id)
            event = budgets.append(
                session,
                row,
                {
                    **privacy_audit_fields(result),
                    "tenant_id": tenant_id,
                    "dataset_id": dataset_id,
                    "delta": row.delta,
                    "accountant": row.accountant,
                    "epsilon_dataset_total": budget.epsilon(),
                    "cap": row.epsilon_cap,
                    "actor": actor,
                    "reason": reason,
                    "library_versions": budgets.versions(budget.schedule),
                    "created_at": utc_timestamp(),
                },
            )
    except BaseException:
        budgets.discard(tenant_id=tenant_id, dataset_id=dataset_id)
        raise
    budgets.settle(row, budget)
    return event


__all__ = ["AuditedRun", "audited_run", "record_privacy_audit"]
