"""Audits of the privacy ledger: verify its chains, build a dataset's report, summarise
a budget.

Both read ``ledger_events`` only (plus each budget row's recorded chain head, which
detects rows deleted from the end) and need the ledger key to check the links.

Reports are cached (:class:`ReportCache`): rebuilding one recomputes every ε with an
independent accountant and checks every link (seconds of CPU for a long ledger), so a
report is rebuilt only when what it is built from changes. The cache key is a digest
of the dataset's ledger rows as read (every column), the budget's head, cap and the
dataset's name: an appended, edited or deleted row is a different key, so a cached
report never hides tampering.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from server.db.models import DatasetRow, PrivacyBudgetRow
from server.services.budgets import BudgetService
from server.services.ledger import dataset_rows, event_mapping
from tensafe.audit import (
    AuditReport,
    ChainHead,
    ChainReport,
    LedgerEvent,
    build_report,
)
from tensafe.audit import verify_chain as verify_rows
from tensafe.errors import ConfigError


@dataclass(frozen=True)
class VerifyResult:
    """The verification of one dataset's chain."""

    tenant_id: str
    dataset_id: str
    report: ChainReport

    def to_dict(self) -> dict[str, object]:
        return {"tenant_id": self.tenant_id, "dataset_id": self.dataset_id, **self.report.to_dict()}


def verify_chains(
    budgets: BudgetService, *, tenant_id: str | None = None, dataset_id: str | None = None
) -> list[VerifyResult]:
    """Verify every chain (of a tenant, of a dataset): links, numbering, head."""
    key = budgets.key()
    results: list[VerifyResult] = []
    with budgets.db.sessions() as session:
        query = select(PrivacyBudgetRow).order_by(
            PrivacyBudgetRow.tenant_id, PrivacyBudgetRow.dataset_id
        )
        if tenant_id is not None:
            query = query.where(PrivacyBudgetRow.tenant_id == tenant_id)
        if dataset_id is not None:
            query = query.where(PrivacyBudgetRow.dataset_id == dataset_id)
        for row in session.scalars(query):
            rows = dataset_rows(session, row.tenant_id, row.dataset_id)
            report = verify_rows(
                [event_mapping(r) for r in rows],
                key,
                expected_head=ChainHead(seq=row.head_seq, link=row.head_link),
            )
            results.append(VerifyResult(row.tenant_id, row.dataset_id, report))
    return results


def first_broken(results: Sequence[VerifyResult]) -> VerifyResult | None:
    """The first chain that failed verification, if any."""
    return next((r for r in results if not r.report.ok), None)


def budget_summary(
    budgets: BudgetService, *, tenant_id: str, dataset_id: str, exact: bool = True
) -> dict[str, Any]:
    """Cap, δ, ε spent (conservative and exact), remaining, and per-run usage.

    Raises:
        NotFoundError: no budget for the dataset (or another tenant's).
    """
    with budgets.db.sessions() as session:
        row = budgets.get_row(session, tenant_id=tenant_id, dataset_id=dataset_id)
        budget = budgets.budget_of(session, row)
        refusals = sum(
            1 for r in dataset_rows(session, tenant_id, dataset_id) if r.kind == "step_refused"
        )
    spent = budget.epsilon()
    runs = [
        {
            "run_id": run,
            "steps": budget.steps(run),
            "epsilon": budget.run_epsilon(run),
        }
        for run in budget.histories
    ]
    return {
        "dataset_id": row.dataset_id,
        "epsilon_cap": row.epsilon_cap,
        "delta": row.delta,
        "accountant": row.accountant,
        "sampling_policy": row.sampling_policy,
        "epsilon_spent": spent,
        "epsilon_spent_exact": budget.exact_epsilon() if exact else None,
        "epsilon_remaining": max(0.0, row.epsilon_cap - spent),
        "total_steps": budget.steps(),
        "refusals": refusals,
        "runs": runs,
        "ledger_head_seq": row.head_seq,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


class ReportCache:
    """The last ``max_entries`` reports (and their HTML), by the digest of their inputs
    (thread-safe, least recently used first out)."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> object | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, str], value: object) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


#: The server's report cache (one per process; keys include the database URL).
REPORTS = ReportCache()


def _inputs_digest(db_url: str, *parts: object) -> str:
    text = json.dumps([db_url, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def audit_report(
    budgets: BudgetService,
    *,
    tenant_id: str,
    dataset_id: str,
    recompute: bool = True,
    cache: ReportCache | None = REPORTS,
) -> AuditReport:
    """The audit report of one dataset, from its ledger rows alone, with the chain
    verified against the budget's recorded head (a broken chain is the report's
    first warning). Served from ``cache`` while the ledger rows, the budget's head
    and cap and the dataset's name are those it was built from.

    Raises:
        NotFoundError: no budget for the dataset (or another tenant's).
    """
    report, _key = _report_and_key(
        budgets, tenant_id=tenant_id, dataset_id=dataset_id, recompute=recompute, cache=cache
    )
    return report


def audit_report_html(
    budgets: BudgetService,
    *,
    tenant_id: str,
    dataset_id: str,
    cache: ReportCache | None = REPORTS,
) -> str:
    """The report as a self-contained HTML page (cached like :func:`audit_report`).

    Raises:
        NotFoundError: no budget for the dataset (or another tenant's).
    """
    report, key = _report_and_key(
        budgets, tenant_id=tenant_id, dataset_id=dataset_id, recompute=True, cache=cache
    )
    html_key = ("html", key)
    cached = None if cache is None else cache.get(html_key)
    if isinstance(cached, str):
        return cached
    from tensafe.audit import render_html  # plots (matplotlib): loaded on first use

    html = render_html(report)
    if cache is not None:
        cache.put(html_key, html)
    return html


def _report_and_key(
    budgets: BudgetService,
    *,
    tenant_id: str,
    dataset_id: str,
    recompute: bool,
    cache: ReportCache | None,
) -> tuple[AuditReport, str]:
    with budgets.db.sessions() as session:
        budget = budgets.get_row(session, tenant_id=tenant_id, dataset_id=dataset_id)
        mappings = [event_mapping(r) for r in dataset_rows(session, tenant_id, dataset_id)]
        held = session.get(DatasetRow, dataset_id)
        name = None
        if held is not None and held.tenant_id == tenant_id:
            name = f"{held.name} v{held.version}"
    digest = _inputs_digest(
        budgets.db.url,
        tenant_id,
        dataset_id,
        recompute,
        budget.head_seq,
        budget.head_link,
        budget.epsilon_cap,
        name,
        mappings,
    )
    key = ("report", digest)
    cached = None if cache is None else cache.get(key)
    if isinstance(cached, AuditReport):
        return cached, digest
    report = _build(budgets, budget, mappings, tenant_id, dataset_id, name, recompute)
    if cache is not None:
        cache.put(key, report)
    return report, digest


def _build(
    budgets: BudgetService,
    budget: PrivacyBudgetRow,
    mappings: list[dict[str, Any]],
    tenant_id: str,
    dataset_id: str,
    name: str | None,
    recompute: bool,
) -> AuditReport:
    events: list[LedgerEvent] = []
    for mapping in mappings:
        try:
            events.append(LedgerEvent.from_row(mapping))
        except ConfigError:
            continue  # the chain check below reports it
    report = build_report(
        events,
        dataset_id=dataset_id,
        tenant_id=tenant_id,
        key=None,
        cap=budget.epsilon_cap,
        recompute=recompute,
        dataset_name=name,
    )
    chain = verify_rows(
        mappings,
        budgets.key(),
        expected_head=ChainHead(seq=budget.head_seq, link=budget.head_link),
    )
    warnings = list(report.warnings)
    if not chain.ok:
        warnings.insert(
            0,
            f"The ledger's integrity check failed at entry {chain.first_broken_seq}: "
            f"{chain.reason}. The figures below cannot be trusted.",
        )
    data = report.to_dict()
    data["chain"] = chain.to_dict()
    data["warnings"] = warnings
    return AuditReport.from_dict(data)


__all__ = [
    "REPORTS",
    "ReportCache",
    "VerifyResult",
    "audit_report",
    "audit_report_html",
    "budget_summary",
    "first_broken",
    "verify_chains",
]
