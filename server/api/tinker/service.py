"""Tinker ``/api/v1`` service routes: client config (the first call of every client),
sessions and heartbeats, telemetry (accepted and dropped), health, capabilities."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from tinker import types as tt

from server.api.deps import DatabaseDep, SettingsDep
from server.api.tinker.deps import TinkerTenant
from server.services import tinker_models as models
from server.services.dp_policy import get_dp_policy

router = APIRouter(tags=["tinker: service"])

#: What every 0.38 client is told at start. Plain httpx (no pyqwest) and sequential
#: fwd/bwd chunks: a chunked batch arrives in seq order, as the queue runs it.
CLIENT_CONFIG: dict[str, Any] = {
    "pjwt_auth_enabled": False,
    "use_pyqwest_transport": False,
    "parallel_fwdbwd_chunks": False,
    "proto_compress_fwdbwd": True,
    "custom_loss_server_side": False,
    "sample_use_retrieve_futures": False,
    "sample_join_sampling_session": False,
}


class _ClientConfigRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    sdk_version: str | None = None


class _FinishRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    reason: dict[str, Any] | None = None
    detail: str | None = None


@router.post("/client/config")
def client_config(body: _ClientConfigRequest, settings: SettingsDep) -> dict[str, Any]:
    """Transport settings for the client (no authentication: sent before any key use)."""
    return {**CLIENT_CONFIG, "fwdbwd_max_chunk_len": settings.tinker_fwdbwd_max_chunk_len}


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/create_session")
def create_session(
    body: tt.CreateSessionRequest, tenant: TinkerTenant, db: DatabaseDep
) -> dict[str, Any]:
    """A session; its ``user_metadata`` ``tensafe.dp.*`` keys are the DP defaults of
    its models (checked now, against the tenant's DP policy too)."""
    session_id = models.create_session(
        db,
        tenant_id=tenant.tenant_id,
        tags=list(body.tags),
        user_metadata=body.user_metadata,
        sdk_version=body.sdk_version,
        policy=get_dp_policy(db, tenant_id=tenant.tenant_id),
    )
    return {"type": "create_session", "session_id": session_id}


@router.post("/session_heartbeat")
def session_heartbeat(
    body: tt.SessionHeartbeatRequest, tenant: TinkerTenant, db: DatabaseDep
) -> dict[str, str]:
    models.heartbeat(db, tenant_id=tenant.tenant_id, session_id=body.session_id)
    return {"type": "session_heartbeat"}


@router.post("/sessions/{session_id}/finish")
def finish_session(
    session_id: str, body: _FinishRequest, tenant: TinkerTenant, db: DatabaseDep
) -> dict[str, str]:
    """Mark the session finished (``ServiceClient.close()``); runs and checkpoints stay."""
    reason = str((body.reason or {}).get("type", "success"))
    models.finish_session(db, tenant_id=tenant.tenant_id, session_id=session_id, reason=reason)
    return {"status": "finished"}


@router.post("/telemetry")
def telemetry(body: dict[str, Any], tenant: TinkerTenant) -> dict[str, str]:
    """Accepted and dropped: nothing the client reports is stored or logged."""
    return {"status": "accepted"}


@router.get("/get_server_capabilities")
def capabilities(tenant: TinkerTenant) -> dict[str, Any]:
    """The models this server trains by name (any other hub id or, when the operator
    allows it, directory works too)."""
    return {
        "supported_models": [
            {"model_name": "smollm2-135m-instruct", "trainable": True, "sampleable": False},
            {"model_name": "tiny-llama", "trainable": True, "sampleable": False},
        ]
    }


__all__ = ["CLIENT_CONFIG", "router"]
