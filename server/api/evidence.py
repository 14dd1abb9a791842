"""Evidence bundles: each artifact's signed bundle, and the server's public keys.

``GET /v1/artifacts/{id}/evidence`` returns the DSSE envelope signed when the
checkpoint was saved (the tenant's own artifacts only). ``GET
/.well-known/tensafe-evidence-keys`` publishes every evidence signing key's public
half — old versions too, so bundles signed before a rotation stay verifiable — with no
authentication: verifying needs no account.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from server.api.deps import CurrentTenant, KeyringDep, SessionDep
from server.errors import NotFoundError
from server.services import artifacts as artifact_service
from tensafe.evidence.keys import published_keys

router = APIRouter(tags=["evidence"])


@router.get(
    "/v1/artifacts/{artifact_id}/evidence",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}},
)
def pull_evidence(artifact_id: str, tenant: CurrentTenant, session: SessionDep) -> Response:
    """The artifact's signed evidence bundle, byte for byte as signed."""
    row = artifact_service.get_artifact(
        session, tenant_id=tenant.tenant_id, artifact_id=artifact_id
    )
    if row.evidence is None:
        raise NotFoundError(
            f"artifact {artifact_id} has no evidence bundle (saved before bundles existed)",
            field="artifact_id",
        )
    return Response(
        content=row.evidence.encode("utf-8"),
        media_type="application/json",
        headers={"X-Content-SHA256": row.content_hash, "Cache-Control": "no-store"},
    )


@router.get("/.well-known/tensafe-evidence-keys")
def evidence_keys(keyring: KeyringDep) -> dict[str, list[dict[str, object]]]:
    """``{"keys": [{"version", "keyid", "public_key_pem", "current"}, ...]}``, oldest
    first."""
    return {
        "keys": [
            {
                "version": k.version,
                "keyid": k.keyid,
                "public_key_pem": k.public_key_pem,
                "current": k.current,
            }
            for k in published_keys(keyring)
        ]
    }


__all__ = ["router"]
