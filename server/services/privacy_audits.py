"""Recording an empirical privacy audit in a dataset's ledger (a ``privacy_audit`` row).

The audit itself is library code (:mod:`tensafe.audit.canary_audit`); this appends its
outcome to the chain of the dataset it is filed under, under the budget row's lock like
every other row. It charges nothing: the row carries the dataset's ε and cap unchanged.
The audit report then shows ε_lb beside ε for the audited run, and warns when the audit
failed (:func:`tensafe.audit.build_report`).
"""

from __future__ import annotations

from server.services.budgets import BudgetService
from tensafe.audit import LedgerEvent, utc_timestamp
from tensafe.audit.canary_result import CanaryAuditResult, privacy_audit_fields


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


__all__ = ["record_privacy_audit"]
