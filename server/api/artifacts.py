"""``/v1/artifacts``: list, describe, and pull an artifact's ciphertext."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from tg_tinker.types import ArtifactInfo, ArtifactList

from server.api.deps import CurrentTenant, DatabaseDep, SessionDep, StoreDep
from server.services import artifacts as artifact_service
from server.services.runs import get_run

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])

_CHUNK = 1 << 20


@router.get("", response_model=ArtifactList)
def list_artifacts(
    tenant: CurrentTenant,
    session: SessionDep,
    run_id: Annotated[str | None, Query(description="Only this run's artifacts.")] = None,
) -> ArtifactList:
    if run_id is not None:
        get_run(session, tenant_id=tenant.tenant_id, run_id=run_id)  # 404 for others' runs
    rows = artifact_service.list_artifacts(session, tenant_id=tenant.tenant_id, run_id=run_id)
    return ArtifactList(artifacts=[artifact_service.artifact_to_wire(r) for r in rows])


@router.get("/{artifact_id}", response_model=ArtifactInfo)
def get_artifact(artifact_id: str, tenant: CurrentTenant, session: SessionDep) -> ArtifactInfo:
    row = artifact_service.get_artifact(
        session, tenant_id=tenant.tenant_id, artifact_id=artifact_id
    )
    return artifact_service.artifact_to_wire(row)


def _stream(src: BinaryIO) -> Iterator[bytes]:
    with src:
        while chunk := src.read(_CHUNK):
            yield chunk


@router.get(
    "/{artifact_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def pull_artifact(
    artifact_id: str, tenant: CurrentTenant, db: DatabaseDep, store: StoreDep
) -> StreamingResponse:
    """The sealed artifact exactly as stored (AES-256-GCM ciphertext), streamed.
    ``X-Content-SHA256`` is its ``content_hash``; decrypt it with the exported key."""
    row, src = artifact_service.open_tenant_artifact(
        db, store, tenant_id=tenant.tenant_id, artifact_id=artifact_id
    )
    return StreamingResponse(
        _stream(src),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(row.size_bytes),
            "X-Content-SHA256": row.content_hash,
            "Content-Disposition": f'attachment; filename="{row.artifact_id}.tsafe"',
            "Cache-Control": "no-store",
        },
    )


__all__ = ["router"]
