"""``/v1/keys``: export the caller's tenant key to decrypt pulled artifacts locally."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from server.api.deps import CurrentTenant, KeyringDep
from server.services.keys import export_tenant_key

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.get(
    "/export",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "The key file."}},
)
def export_key(
    tenant: CurrentTenant,
    keyring: KeyringDep,
    version: Annotated[
        int | None, Query(ge=1, description="Key version (default: active).")
    ] = None,
) -> Response:
    """The tenant key file (``tensafe-tenant-key/1`` JSON, secret material): keep it
    private (``chmod 600``). ``tensafe artifact decrypt --key-file`` reads it."""
    key = export_tenant_key(keyring, tenant_id=tenant.tenant_id, version=version)
    return Response(
        content=key.to_json() + "\n",
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


__all__ = ["router"]
