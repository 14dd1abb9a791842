"""``/v1/budgets`` and ``/v1/audit``: a tenant's privacy budgets, its ledger, audits.

Creating a budget and changing a cap need a key with the ``privacy-officer`` scope
(403 ``PermissionDeniedError`` otherwise, before anything is looked up or written);
reading budgets, the ledger check and audit reports needs ``train`` or
``privacy-officer`` (:mod:`server.services.scopes`). Every change is a ledger row whose
``actor`` is ``api:<key_id>`` of the key that made it (the key id, never the secret).
Another tenant's dataset answers 404.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from starlette.concurrency import run_in_threadpool
from tg_tinker.types import (
    BudgetCreate,
    BudgetUpdate,
    LedgerVerification,
    PrivacyBudget,
    PrivacyBudgetList,
)

from server.api.deps import BudgetReader, BudgetsDep, PrivacyOfficer
from server.services import audits
from server.services.budgets import BudgetService

router = APIRouter(tags=["privacy budgets"])


#: The report is self-contained: inline styles and data: images, nothing else — no
#: script, no fetches, no forms, no framing by another page.
REPORT_HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _wire(service: BudgetService, tenant_id: str, dataset_id: str) -> PrivacyBudget:
    return PrivacyBudget.model_validate(
        audits.budget_summary(service, tenant_id=tenant_id, dataset_id=dataset_id)
    )


@router.post("/v1/budgets", status_code=status.HTTP_201_CREATED, response_model=PrivacyBudget)
def create_budget(body: BudgetCreate, tenant: PrivacyOfficer, service: BudgetsDep) -> PrivacyBudget:
    """Create the ε budget of one of your datasets (409 if it has one; 422 naming
    ``delta`` if δ ≥ 0.01, which no dataset of 100 examples or more could use; 403
    without the ``privacy-officer`` scope)."""
    service.create_budget(
        tenant_id=tenant.tenant_id,
        dataset_id=body.dataset_id,
        epsilon_cap=body.epsilon_cap,
        delta=body.delta,
        accountant=body.accountant,
        actor=f"api:{tenant.key_id}",
        reason=body.reason,
        sampling_policy=body.sampling_policy,
    )
    return _wire(service, tenant.tenant_id, body.dataset_id)


@router.get("/v1/budgets", response_model=PrivacyBudgetList)
def list_budgets(tenant: BudgetReader, service: BudgetsDep) -> PrivacyBudgetList:
    rows = service.list_budgets(tenant_id=tenant.tenant_id)
    return PrivacyBudgetList(
        budgets=[
            PrivacyBudget.model_validate(
                audits.budget_summary(
                    service, tenant_id=tenant.tenant_id, dataset_id=r.dataset_id, exact=False
                )
            )
            for r in rows
        ]
    )


@router.get("/v1/budgets/{dataset_id}", response_model=PrivacyBudget)
def get_budget(dataset_id: str, tenant: BudgetReader, service: BudgetsDep) -> PrivacyBudget:
    """Cap, δ, ε spent (conservative and exact), remaining, runs."""
    return _wire(service, tenant.tenant_id, dataset_id)


@router.patch("/v1/budgets/{dataset_id}", response_model=PrivacyBudget)
def update_budget(
    dataset_id: str, body: BudgetUpdate, tenant: PrivacyOfficer, service: BudgetsDep
) -> PrivacyBudget:
    """Change the cap (lowering it below the ε already spent is refused, 422; 403
    without the ``privacy-officer`` scope)."""
    service.change_cap(
        tenant_id=tenant.tenant_id,
        dataset_id=dataset_id,
        epsilon_cap=body.epsilon_cap,
        sampling_policy=body.sampling_policy,
        actor=f"api:{tenant.key_id}",
        reason=body.reason,
    )
    return _wire(service, tenant.tenant_id, dataset_id)


@router.get(
    "/v1/audit/{dataset_id}/report",
    response_class=Response,
    responses={200: {"content": {"application/json": {}, "text/html": {}}}},
)
async def audit_report(
    dataset_id: str,
    tenant: BudgetReader,
    service: BudgetsDep,
    format: Annotated[Literal["json", "html"], Query()] = "json",
) -> Response:
    """The dataset's audit report (JSON, or a self-contained HTML page with plots,
    served with a Content-Security-Policy that allows no script, no network access and
    no framing). Rebuilt only when the dataset's ledger has changed."""
    if format == "html":
        html = await run_in_threadpool(
            audits.audit_report_html, service, tenant_id=tenant.tenant_id, dataset_id=dataset_id
        )
        return Response(
            content=html, media_type="text/html; charset=utf-8", headers=REPORT_HTML_HEADERS
        )
    report = await run_in_threadpool(
        audits.audit_report, service, tenant_id=tenant.tenant_id, dataset_id=dataset_id
    )
    return Response(content=report.to_json(), media_type="application/json")


@router.get("/v1/audit/verify", response_model=LedgerVerification)
def verify_ledger(
    tenant: BudgetReader,
    service: BudgetsDep,
    dataset_id: Annotated[str | None, Query()] = None,
) -> LedgerVerification:
    """Verify the HMAC chain of each of your datasets (or of one)."""
    results = audits.verify_chains(service, tenant_id=tenant.tenant_id, dataset_id=dataset_id)
    return LedgerVerification(
        ok=all(r.report.ok for r in results), chains=[r.to_dict() for r in results]
    )


__all__ = ["router"]
