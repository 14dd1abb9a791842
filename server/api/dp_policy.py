"""``/v1/dp_policy``: the tenant's DP policy for new runs (:mod:`server.services.dp_policy`).

Only a key with the ``privacy-officer`` scope sets, reads or removes it (403 otherwise,
before anything is looked up). The route names no tenant: each key sees its own
tenant's policy, and a tenant without one gets 404 whatever other tenants have.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from tg_tinker.types import DPPolicy, DPPolicyInfo

from server.api.deps import BudgetsDep, DatabaseDep, DPPolicyOfficer
from server.services import dp_policy

router = APIRouter(prefix="/v1/dp_policy", tags=["privacy budgets"])


@router.put("", response_model=DPPolicyInfo)
def set_dp_policy(
    body: DPPolicy, tenant: DPPolicyOfficer, db: DatabaseDep, budgets: BudgetsDep
) -> DPPolicyInfo:
    """Create or replace the policy: every new DP run of the tenant (native or Tinker)
    is charged to ``dataset_id`` with the policy's σ (or target ε) and C; clients may
    only tighten them (``client_overrides="tighten"``) or not change them (``"none"``).
    Existing runs keep their settings. 409 naming ``dataset_id`` if the dataset has no
    budget (and the server creates none on first use); 422 for an invalid policy."""
    return dp_policy.set_dp_policy(
        db, budgets, tenant_id=tenant.tenant_id, policy=body, actor=f"api:{tenant.key_id}"
    )


@router.get("", response_model=DPPolicyInfo)
def get_dp_policy(tenant: DPPolicyOfficer, db: DatabaseDep) -> DPPolicyInfo:
    """The policy (404 if the tenant has none)."""
    return dp_policy.read_dp_policy(db, tenant_id=tenant.tenant_id)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_dp_policy(tenant: DPPolicyOfficer, db: DatabaseDep) -> Response:
    """Remove the policy (404 if there is none): new runs take their DP settings from
    the client (and, on ``/api/v1``, the server's ``TENSAFE_TINKER_DEFAULT_DP``) again."""
    dp_policy.delete_dp_policy(db, tenant_id=tenant.tenant_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


__all__ = ["router"]
