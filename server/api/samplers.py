"""``/v1/samplers``: create and read samplers, and their asynchronous operations
(``sample``, ``compute_logprobs``: each answers ``202 FutureRef`` at once, polled at
``GET /v1/futures/{id}``). The logic is in :mod:`server.services.sampling`."""

from __future__ import annotations

from fastapi import APIRouter, status
from tg_tinker.sampling_types import (
    ComputeLogprobsRequest,
    CreateSamplerRequest,
    SampleRequest,
    SamplerInfo,
)
from tg_tinker.types import FutureRef, TokenizerFiles

from server.api.deps import (
    CurrentTenant,
    DatabaseDep,
    SampleFuturesDep,
    SamplingDep,
    SettingsDep,
)
from server.services import sampling

router = APIRouter(prefix="/v1/samplers", tags=["samplers"])

_ACCEPTED = {"status_code": status.HTTP_202_ACCEPTED, "response_model": FutureRef}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SamplerInfo)
def create_sampler(
    request: CreateSamplerRequest, tenant: CurrentTenant, db: DatabaseDep, settings: SettingsDep
) -> SamplerInfo:
    """A sampler of one of your runs (current weights), of a saved sampler checkpoint
    (``model_path`` / ``artifact_id``), or of a base model. Another tenant's run or
    checkpoint is 404. Sampling charges no privacy budget (post-processing)."""
    return sampling.create_sampler(db, settings, tenant_id=tenant.tenant_id, request=request)


@router.get("/{sampler_id}", response_model=SamplerInfo)
def get_sampler(sampler_id: str, tenant: CurrentTenant, db: DatabaseDep) -> SamplerInfo:
    """The sampler: its source and base model."""
    return sampling.read_sampler(db, tenant_id=tenant.tenant_id, sampler_id=sampler_id)


@router.get("/{sampler_id}/tokenizer", response_model=TokenizerFiles)
def get_tokenizer(
    sampler_id: str, tenant: CurrentTenant, db: DatabaseDep, backend: SamplingDep
) -> TokenizerFiles:
    """The sampled model's tokenizer files (loadable offline)."""
    files = sampling.sampler_tokenizer(
        db, backend, tenant_id=tenant.tenant_id, sampler_id=sampler_id
    )
    return TokenizerFiles(files=files)


@router.post("/{sampler_id}/sample", **_ACCEPTED)
def sample(
    sampler_id: str,
    request: SampleRequest,
    tenant: CurrentTenant,
    db: DatabaseDep,
    settings: SettingsDep,
    backend: SamplingDep,
    futures: SampleFuturesDep,
) -> FutureRef:
    """``num_samples`` completions of the prompt → ``SampleResponse``. Invalid input is
    a 422 naming the field before anything runs (``num_samples``,
    ``sampling_params.max_tokens`` beyond the context, ``prompt`` too long, ...)."""
    return sampling.submit_sample(
        db,
        backend,
        futures,
        settings,
        tenant_id=tenant.tenant_id,
        sampler_id=sampler_id,
        request=request,
    )


@router.post("/{sampler_id}/compute_logprobs", **_ACCEPTED)
def compute_logprobs(
    sampler_id: str,
    request: ComputeLogprobsRequest,
    tenant: CurrentTenant,
    db: DatabaseDep,
    backend: SamplingDep,
    futures: SampleFuturesDep,
) -> FutureRef:
    """The raw model's logprob of each prompt token → ``ComputeLogprobsResponse``."""
    return sampling.submit_compute_logprobs(
        db, backend, futures, tenant_id=tenant.tenant_id, sampler_id=sampler_id, request=request
    )


__all__ = ["router"]
