"""Tinker ``/api/v1`` sampling routes on the server's sampling service
(:mod:`server.services.sampling`): a Tinker *sampling session* is a sampler.

* ``create_sampling_session`` — a sampler of a ``tinker://…/sampler_weights/…``
  checkpoint or of a base model (answered directly);
* ``GET samplers/{id}`` — its base model and path;
* ``asample`` — ``num_samples`` completions (also ``compute_logprobs``, which the client
  sends as a one-token sample with ``prompt_logprobs``) → a future whose result is a
  protobuf ``SampleResponse``; the answer carries one ``sample_sequence_ids`` entry
  per sample.

Sampling charges no privacy budget (post-processing of DP-trained weights).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from tg_tinker.sampling_types import CreateSamplerRequest, SampleRequest, SamplingParams
from tg_tinker.types import ModelInput
from tinker import types as tt

from server.api.deps import (
    DatabaseDep,
    SampleFuturesDep,
    SamplingDep,
    SessionDep,
    SettingsDep,
)
from server.api.tinker.deps import TinkerTenant, refusals_are_final
from server.db.models import SamplerRow, TrainingRunRow
from server.db.session import Database
from server.errors import ValidationError
from server.services import sampling
from server.services import tinker_models as models
from server.settings import Settings

router = APIRouter(tags=["tinker: sampling"])


def sampler_of_checkpoint(
    db: Database, settings: Settings, *, tenant_id: str, native_path: str
) -> str:
    """A sampler of the tenant's sampler checkpoint: the one made before, else a new one."""
    with db.sessions() as session:
        existing = session.scalar(
            select(SamplerRow.sampler_id).where(
                SamplerRow.tenant_id == tenant_id,
                SamplerRow.source == "checkpoint",
                SamplerRow.model_path == native_path,
            )
        )
    if existing is not None:
        return existing
    request = CreateSamplerRequest(model_path=native_path)
    return sampling.create_sampler(db, settings, tenant_id=tenant_id, request=request).sampler_id


@router.post("/create_sampling_session")
def create_sampling_session(
    body: tt.CreateSamplingSessionRequest,
    tenant: TinkerTenant,
    db: DatabaseDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """A sampler of ``model_path`` (a ``tinker://`` sampler checkpoint) or ``base_model``."""
    with db.sessions() as session:
        with refusals_are_final():
            models.open_session(session, tenant_id=tenant.tenant_id, session_id=body.session_id)
        native = (
            None
            if body.model_path is None
            else models.native_path(session, tenant_id=tenant.tenant_id, path=body.model_path)
        )
    if native is not None:
        sampler_id = sampler_of_checkpoint(
            db, settings, tenant_id=tenant.tenant_id, native_path=native
        )
    elif body.base_model is not None:
        request = CreateSamplerRequest(base_model=body.base_model)
        sampler_id = sampling.create_sampler(
            db, settings, tenant_id=tenant.tenant_id, request=request
        ).sampler_id
    else:
        raise ValidationError("give model_path or base_model", field="model_path")
    return {"type": "create_sampling_session", "sampling_session_id": sampler_id}


@router.get("/samplers/{sampler_id}")
def get_sampler(sampler_id: str, tenant: TinkerTenant, session: SessionDep) -> dict[str, Any]:
    row = sampling.get_sampler(session, tenant_id=tenant.tenant_id, sampler_id=sampler_id)
    path = None
    if row.model_path is not None and row.run_id is not None:
        run = session.get(TrainingRunRow, row.run_id)
        model_id = None if run is None else models.model_id_of(run)
        path = (
            row.model_path
            if model_id is None
            else models.tinker_path(model_id=model_id, native_path=row.model_path)
        )
    return {"sampler_id": row.sampler_id, "base_model": row.base_model, "model_path": path}


def native_sample_request(body: tt.SampleRequest) -> SampleRequest:
    """The native request of a Tinker ``asample``.

    Raises:
        ValidationError: non-text prompt chunks; options this server does not offer
            (sampled-token top-k, target or alternative prompt logprobs).
    """
    tokens: list[int] = []
    for i, chunk in enumerate(body.prompt.chunks):
        if not isinstance(chunk, tt.EncodedTextChunk):
            raise ValidationError("only text prompts are supported", field=f"prompt.chunks[{i}]")
        tokens.extend(int(t) for t in chunk.tokens)
    for name in ("topk_sample_logprobs", "prompt_alt_tokens_k"):
        if getattr(body, name):
            raise ValidationError("not supported by this server; send 0", field=name)
    if body.target_prompt_logprobs is not None or body.prompt_logprobs_last_n is not None:
        raise ValidationError(
            "not supported by this server",
            field="target_prompt_logprobs"
            if body.target_prompt_logprobs is not None
            else "prompt_logprobs_last_n",
        )
    params = body.sampling_params
    stop = params.stop
    try:
        return SampleRequest(
            prompt=ModelInput.from_ints(tokens),
            num_samples=body.num_samples,
            sampling_params=SamplingParams(
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                stop=stop if stop is None or isinstance(stop, str) else list(stop),
                seed=params.seed,
            ),
            prompt_logprobs=bool(body.prompt_logprobs),
            topk_prompt_logprobs=body.topk_prompt_logprobs,
        )
    except ValueError as exc:
        raise ValidationError(str(exc).splitlines()[-1].strip(), field="sampling_params") from None


@router.post("/asample")
def asample(
    body: tt.SampleRequest,
    tenant: TinkerTenant,
    db: DatabaseDep,
    settings: SettingsDep,
    backend: SamplingDep,
    futures: SampleFuturesDep,
) -> dict[str, Any]:
    """Completions of the prompt on a sampling session → protobuf ``SampleResponse``."""
    if body.sampling_session_id is None:
        raise ValidationError(
            "create a sampling session first (create_sampling_client)",
            field="sampling_session_id",
        )
    ref = sampling.submit_sample(
        db,
        backend,
        futures,
        settings,
        tenant_id=tenant.tenant_id,
        sampler_id=body.sampling_session_id,
        request=native_sample_request(body),
    )
    ids = [f"{ref.future_id}:{i}" for i in range(body.num_samples)]
    return {"request_id": ref.future_id, "sample_sequence_ids": ids}


__all__ = ["native_sample_request", "router", "sampler_of_checkpoint"]
