"""Tinker ``/api/v1`` REST routes of ``RestClient``: training runs (a model id is a
training-run id), their checkpoints, and weights info by ``tinker://`` path. Only the
caller's own models and checkpoints are visible; another tenant's are 404."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from tg_tinker.types import TrainingConfig
from tinker import types as tt

from server.api.deps import SessionDep
from server.api.tinker.deps import RefusedError, TinkerTenant
from server.db.models import ArtifactRow, TrainingRunRow
from server.services import artifacts as artifact_service
from server.services import tinker_models as models

router = APIRouter(tags=["tinker: rest"])

_TYPES = {"training_state": "training", "lora_adapter": "sampler", "full_weights": "sampler"}


def _checkpoint(model_id: str, row: ArtifactRow) -> dict[str, Any]:
    path = models.tinker_path(model_id=model_id, native_path=row.path)
    folder_and_name = path[len(models.TINKER_SCHEME) + len(model_id) + 1 :]
    return {
        "checkpoint_id": folder_and_name,
        "checkpoint_type": _TYPES.get(row.kind, "training"),
        "time": row.created_at.isoformat(),
        "tinker_path": path,
        "size_bytes": row.size_bytes,
        "public": False,
        # the artifact's id and ciphertext hash: what pull_artifact (tg_tinker, /v1) takes
        "user_metadata": {
            **{str(k): str(v) for k, v in (row.user_metadata or {}).items()},
            "tensafe.artifact_id": row.artifact_id,
            "tensafe.content_hash": row.content_hash,
        },
        "expires_at": None if row.expires_at is None else row.expires_at.isoformat(),
    }


def _checkpoints(session: SessionDep, tenant_id: str, run: TrainingRunRow) -> list[dict[str, Any]]:
    model_id = models.model_id_of(run) or run.run_id
    rows = artifact_service.list_artifacts(session, tenant_id=tenant_id, run_id=run.run_id)
    return [_checkpoint(model_id, row) for row in sorted(rows, key=lambda r: r.created_at)]


def _training_run(session: SessionDep, tenant_id: str, run: TrainingRunRow) -> dict[str, Any]:
    config = TrainingConfig.model_validate(run.config)
    checkpoints = _checkpoints(session, tenant_id, run)
    training = [c for c in checkpoints if c["checkpoint_type"] == "training"]
    sampler = [c for c in checkpoints if c["checkpoint_type"] == "sampler"]
    metadata = {str(k): str(v) for k, v in config.metadata.items() if k != "tinker"}
    return {
        "training_run_id": models.model_id_of(run) or run.run_id,
        "base_model": config.model_ref,
        "model_owner": tenant_id,
        "is_lora": config.lora_config is not None,
        "corrupted": run.status == "ERROR",
        "lora_rank": None if config.lora_config is None else config.lora_config.rank,
        "last_request_time": (run.last_heartbeat_at or run.updated_at).isoformat(),
        "last_checkpoint": training[-1] if training else None,
        "last_sampler_checkpoint": sampler[-1] if sampler else None,
        "user_metadata": metadata or None,
    }


@router.get("/training_runs/{model_id}")
def get_training_run(model_id: str, tenant: TinkerTenant, session: SessionDep) -> dict[str, Any]:
    run = models.run_for_model(session, tenant_id=tenant.tenant_id, model_id=model_id)
    return _training_run(session, tenant.tenant_id, run)


@router.get("/training_runs")
def list_training_runs(
    tenant: TinkerTenant,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The tenant's Tinker models, newest first."""
    mine = (
        TrainingRunRow.tenant_id == tenant.tenant_id,
        TrainingRunRow.idempotency_key.like(models.MODEL_KEY_PREFIX + "%"),
    )
    total = session.scalar(select(func.count()).select_from(TrainingRunRow).where(*mine)) or 0
    page = session.scalars(
        select(TrainingRunRow)
        .where(*mine)
        .order_by(TrainingRunRow.created_at.desc(), TrainingRunRow.run_id)
        .offset(offset)
        .limit(limit)
    ).all()
    return {
        "training_runs": [_training_run(session, tenant.tenant_id, r) for r in page],
        "cursor": {"offset": offset, "limit": limit, "total_count": total},
    }


@router.get("/training_runs/{model_id}/checkpoints")
def list_checkpoints(model_id: str, tenant: TinkerTenant, session: SessionDep) -> dict[str, Any]:
    run = models.run_for_model(session, tenant_id=tenant.tenant_id, model_id=model_id)
    checkpoints = _checkpoints(session, tenant.tenant_id, run)
    return {"checkpoints": checkpoints, "cursor": None}


@router.post("/weights_info")
def weights_info(body: dict[str, Any], tenant: TinkerTenant, session: SessionDep) -> dict[str, Any]:
    """The base model and LoRA shape of the checkpoint at ``tinker_path``."""
    path = str(body.get("tinker_path", ""))
    artifact = models.resolve_tinker_path(session, tenant_id=tenant.tenant_id, path=path)
    run = session.get(TrainingRunRow, artifact.run_id)
    assert run is not None
    config = TrainingConfig.model_validate(run.config)
    lora = config.lora_config
    return tt.WeightsInfoResponse(
        base_model=config.model_ref,
        is_lora=lora is not None,
        lora_rank=None if lora is None else lora.rank,
        train_attn=None if lora is None else lora.train_attn,
        train_mlp=None if lora is None else lora.train_mlp,
        train_unembed=None if lora is None else lora.train_unembed,
    ).model_dump(mode="json")


__all__ = ["router"]


# ---------------------------------------------------------------- refused
# Routes of the 0.38 client this server refuses on purpose, with a message instead of a
# bare 404 (400: the client does not retry it). A model id is looked up first, so
# another tenant's is still a 404.
_PLAINTEXT = (
    "plaintext weight export is not offered: TenSafe artifacts leave the server only "
    "encrypted; find the checkpoint's tensafe.artifact_id in list_checkpoints and use "
    "pull_artifact (tg_tinker) to download and decrypt it locally"
)


def _refuse(detail: str, field: str | None = None) -> None:
    raise RefusedError(detail, field=field)


@router.post("/save_weights_external")
def save_weights_external(tenant: TinkerTenant) -> None:
    _refuse(_PLAINTEXT)


@router.post("/copy_weights")
def copy_weights(tenant: TinkerTenant) -> None:
    _refuse("copying checkpoints between projects is not offered by this server")


@router.post("/create_custom_loss")
def create_custom_loss(tenant: TinkerTenant) -> None:
    _refuse(
        "server-side custom losses are not offered; forward_backward_custom runs the loss "
        "on the client (custom_loss_server_side is false)"
    )


@router.delete("/training_runs/{model_id}/checkpoints/{checkpoint_id:path}")
def delete_checkpoint(
    model_id: str, checkpoint_id: str, tenant: TinkerTenant, session: SessionDep
) -> None:
    models.run_for_model(session, tenant_id=tenant.tenant_id, model_id=model_id)
    _refuse(
        "checkpoints are not deleted on request here; they expire after the server's "
        "ARTIFACT_TTL_S, and deleting the tenant's keys crypto-shreds them all",
        field="checkpoint_id",
    )
