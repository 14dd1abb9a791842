"""Samplers and sampling operations, independent of any HTTP protocol.

A *sampler* names the weights a tenant samples from:

* ``run`` — a training run's current weights (they change as the run trains);
* ``checkpoint`` — a saved ``lora_adapter`` sampler checkpoint
  (``tensafe://{run}/sampler_weights/{name}`` or its artifact id), decrypted only in
  the worker's memory and loaded as a LoRA adapter on a base model already in memory;
* ``base`` — a base model by name.

Every lookup is scoped to the tenant: another tenant's sampler, run, path or artifact
is a 404 (:class:`~server.errors.NotFoundError`), never a hint that it exists.

Sampling is post-processing of DP-trained weights: nothing here touches a privacy
budget or the ledger. Sampling operations do not enter a run's training queue; they
run on the sampling backend's own threads (:class:`SamplingBackend`, implemented by
:class:`server.worker.sampling_backend.SamplingWorker`), batched with concurrent
requests for the same model. They share the model's lock with training, so a step and
a batch of generation never interleave.

Any router can call these functions: the native ``/v1/samplers`` routes do
(:mod:`server.api.samplers`); :func:`start_sample` and :func:`start_compute_logprobs`
return a plain ``concurrent.futures.Future`` for routers with futures of their own.

Example::

    info = create_sampler(db, settings, tenant_id=t, request=CreateSamplerRequest(run_id=r))
    future = start_sample(db, backend, settings, tenant_id=t, sampler_id=info.sampler_id,
                          request=SampleRequest(prompt=ModelInput.from_ints([1, 2]), num_samples=2))
    future.result()   # tg_tinker.sampling_types.SampleResponse
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session
from tg_tinker.sampling_types import (
    ComputeLogprobsRequest,
    ComputeLogprobsResponse,
    CreateSamplerRequest,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    SamplerInfo,
    SamplerSource,
)
from tg_tinker.types import FutureRef

from server.db.models import SamplerRow, TrainingRunRow
from server.db.session import Database
from server.errors import NotFoundError, ValidationError
from server.services import artifacts as artifact_service
from server.services.policy import looks_like_path
from server.services.runs import get_run
from server.services.sample_futures import SampleFutures
from server.settings import Settings
from tensafe import generation as gen
from tensafe.errors import ConfigError

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")

# engine field -> wire field of the sample request
_WIRE_FIELDS = {
    "max_tokens": "sampling_params.max_tokens",
    "temperature": "sampling_params.temperature",
    "top_p": "sampling_params.top_p",
    "top_k": "sampling_params.top_k",
    "stop": "sampling_params.stop",
    "seed": "sampling_params.seed",
    "adapter": "sampler_id",
}


@dataclass(frozen=True)
class SamplerTarget:
    """What one sampler samples from, as the backend needs it.

    ``run_id`` is the run whose current weights are sampled (``run``) or the run that
    saved the checkpoint (``checkpoint``); ``artifact_id`` the checkpoint."""

    sampler_id: str
    tenant_id: str
    source: SamplerSource
    base_model: str
    run_id: str | None = None
    artifact_id: str | None = None


class SamplingBackend(Protocol):
    """Where samples come from (the worker). Every method may raise
    :class:`~tensafe.errors.ConfigError` (invalid for this model) or a
    :class:`~server.errors.ServiceError`; the futures fail with the same errors."""

    def check(self, target: SamplerTarget, request: gen.SampleRequest) -> None:
        """Validate ``request`` against the model if it is in memory (else nothing)."""
        ...

    def sample(
        self, target: SamplerTarget, request: gen.SampleRequest
    ) -> Future[gen.SampleResponse]:
        """Start sampling; the future resolves to the response."""
        ...

    def compute_logprobs(
        self, target: SamplerTarget, *, prompt: tuple[int, ...], topk: int
    ) -> Future[gen.PromptLogprobs]:
        """Start computing the prompt's logprobs."""
        ...

    def tokenizer_files(self, target: SamplerTarget) -> dict[str, str]:
        """The sampled model's tokenizer as ``{file name: text}`` (may load the model)."""
        ...


# ------------------------------------------------------------------ samplers
def create_sampler(
    db: Database, settings: Settings, *, tenant_id: str, request: CreateSamplerRequest
) -> SamplerInfo:
    """Record a sampler of the tenant's run, checkpoint or a base model.

    Raises:
        NotFoundError: no such run / checkpoint for this tenant (``run_id``,
            ``model_path``, ``artifact_id``).
        ValidationError: (``model_path``) not a sampler-weights path, or a checkpoint
            that is not a LoRA adapter; (``base_model``) a server path while paths
            are disabled; (``run_id``) a run whose model failed to load.
    """
    with db.transaction() as session:
        row = SamplerRow(
            sampler_id="smp_" + secrets.token_hex(12),
            tenant_id=tenant_id,
            **_resolve_source(session, settings, tenant_id=tenant_id, request=request),
        )
        session.add(row)
        session.flush()
        return sampler_to_wire(row)


def _resolve_source(
    session: Session, settings: Settings, *, tenant_id: str, request: CreateSamplerRequest
) -> dict[str, str | None]:
    if request.run_id is not None:
        run = get_run(session, tenant_id=tenant_id, run_id=request.run_id)
        if run.status in ("ERROR", "TERMINATED"):
            raise ValidationError(
                f"training run {run.run_id} is {run.status}: it has no weights in memory to "
                "sample; sample a saved sampler checkpoint instead",
                field="run_id",
            )
        return {"source": "run", "run_id": run.run_id, "base_model": _run_model(run)}
    if request.base_model is not None:
        name = request.base_model.strip()
        if not settings.allow_model_paths and looks_like_path(name):
            raise ValidationError(
                "local model paths are disabled on this server; name a model "
                "(e.g. 'smollm2-135m-instruct')",
                field="base_model",
            )
        return {"source": "base", "base_model": name}
    field = "artifact_id" if request.artifact_id is not None else "model_path"
    if request.model_path is not None and "/sampler_weights/" not in request.model_path:
        raise ValidationError(
            "must be a sampler checkpoint path, tensafe://{run_id}/sampler_weights/{name} "
            "(save one with save_weights_for_sampler)",
            field="model_path",
        )
    artifact = artifact_service.resolve_reference(
        session, tenant_id=tenant_id, artifact_id=request.artifact_id, path=request.model_path
    )
    if artifact.kind != "lora_adapter":
        raise ValidationError(
            f"checkpoint {artifact.artifact_id} is a {artifact.kind} checkpoint; the server "
            "samples LoRA sampler checkpoints (save_weights_for_sampler of a LoRA run), a "
            "run's current weights (run_id) or a base model",
            field=field,
        )
    return {
        "source": "checkpoint",
        "run_id": artifact.run_id,
        "artifact_id": artifact.artifact_id,
        "model_path": artifact.path,
        "base_model": artifact.base_model,
    }


def _run_model(run: TrainingRunRow) -> str:
    return run.model_name or str((run.config or {}).get("model_ref", ""))


def get_sampler(session: Session, *, tenant_id: str, sampler_id: str) -> SamplerRow:
    """The tenant's sampler.

    Raises:
        NotFoundError: no such sampler for this tenant.
    """
    row = session.get(SamplerRow, sampler_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFoundError(f"no sampler {sampler_id!r}", field="sampler_id")
    return row


def read_sampler(db: Database, *, tenant_id: str, sampler_id: str) -> SamplerInfo:
    """The tenant's sampler as sent on the wire (its base model name filled in once
    the run's model is loaded).

    Raises:
        NotFoundError: no such sampler for this tenant.
    """
    with db.sessions() as session:
        row = get_sampler(session, tenant_id=tenant_id, sampler_id=sampler_id)
        if row.source == "run" and row.run_id is not None:
            run = session.get(TrainingRunRow, row.run_id)
            if run is not None and run.model_name:
                row.base_model = run.model_name
        return sampler_to_wire(row)


def list_samplers(session: Session, *, tenant_id: str) -> list[SamplerRow]:
    """The tenant's samplers, oldest first."""
    query = select(SamplerRow).where(SamplerRow.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(SamplerRow.created_at, SamplerRow.sampler_id)))


def sampler_to_wire(row: SamplerRow) -> SamplerInfo:
    return SamplerInfo(
        sampler_id=row.sampler_id,
        source=row.source,  # type: ignore[arg-type]
        base_model=row.base_model,
        run_id=row.run_id,
        model_path=row.model_path,
        artifact_id=row.artifact_id,
        created_at=row.created_at,
    )


def sampler_target(db: Database, *, tenant_id: str, sampler_id: str) -> SamplerTarget:
    """What the backend needs to serve the tenant's sampler; the run and the
    checkpoint are looked up again, so a deleted or expired one is a 404 now.

    Raises:
        NotFoundError: no such sampler; its run or checkpoint is gone.
    """
    with db.sessions() as session:
        row = get_sampler(session, tenant_id=tenant_id, sampler_id=sampler_id)
        base_model = row.base_model
        if row.source == "run":
            assert row.run_id is not None
            base_model = _run_model(get_run(session, tenant_id=tenant_id, run_id=row.run_id))
        elif row.source == "checkpoint":
            assert row.artifact_id is not None
            try:
                artifact_service.get_artifact(
                    session, tenant_id=tenant_id, artifact_id=row.artifact_id
                )
            except NotFoundError:
                raise NotFoundError(
                    f"sampler {sampler_id}'s checkpoint {row.model_path} no longer exists",
                    field="sampler_id",
                ) from None
        return SamplerTarget(
            sampler_id=row.sampler_id,
            tenant_id=tenant_id,
            source=row.source,  # type: ignore[arg-type]
            base_model=base_model,
            run_id=row.run_id,
            artifact_id=row.artifact_id,
        )


# ------------------------------------------------------------------ operations
def engine_request(request: SampleRequest, *, settings: Settings) -> gen.SampleRequest:
    """The engine's request for a wire ``SampleRequest``, after the server's limits.

    Raises:
        ValidationError: naming the wire field (``num_samples``,
            ``sampling_params.stop``, ...).
    """
    if request.num_samples > settings.max_num_samples:
        raise ValidationError(
            f"must be at most {settings.max_num_samples} on this server, got {request.num_samples}",
            field="num_samples",
        )
    params = request.sampling_params
    try:
        return gen.SampleRequest(
            prompt=request.prompt.to_ints(),
            num_samples=request.num_samples,
            params=gen.SamplingParams(
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                stop=params.stop,
                seed=params.seed,
            ),
            prompt_logprobs=request.prompt_logprobs,
            topk_prompt_logprobs=request.topk_prompt_logprobs,
        )
    except ConfigError as exc:
        raise wire_error(exc) from None


def wire_error(exc: ConfigError) -> ValidationError:
    """A sampler's ConfigError as a ValidationError naming the wire field."""
    return ValidationError(exc.message, field=_WIRE_FIELDS.get(exc.field, exc.field))


def start_sample(
    db: Database,
    backend: SamplingBackend,
    settings: Settings,
    *,
    tenant_id: str,
    sampler_id: str,
    request: SampleRequest,
) -> Future[SampleResponse]:
    """Check ``request`` and start sampling on the tenant's sampler; the future
    resolves to the wire :class:`SampleResponse` (or fails with a typed error).

    Raises:
        ValidationError: the request is invalid (for the server, or for the model
            when it is in memory); nothing is started.
        NotFoundError: no such sampler (or its run / checkpoint) for this tenant.
    """
    engine = engine_request(request, settings=settings)
    target = sampler_target(db, tenant_id=tenant_id, sampler_id=sampler_id)
    _checked(lambda: backend.check(target, engine))
    return _mapped(backend.sample(target, engine), sample_to_wire)


def start_compute_logprobs(
    db: Database,
    backend: SamplingBackend,
    *,
    tenant_id: str,
    sampler_id: str,
    request: ComputeLogprobsRequest,
) -> Future[ComputeLogprobsResponse]:
    """Start computing the prompt's logprobs on the tenant's sampler.

    Raises:
        NotFoundError: no such sampler (or its run / checkpoint) for this tenant.
    """
    target = sampler_target(db, tenant_id=tenant_id, sampler_id=sampler_id)
    work = backend.compute_logprobs(
        target, prompt=tuple(request.prompt.to_ints()), topk=request.topk
    )
    return _mapped(work, logprobs_to_wire)


def submit_sample(
    db: Database,
    backend: SamplingBackend,
    futures: SampleFutures,
    settings: Settings,
    *,
    tenant_id: str,
    sampler_id: str,
    request: SampleRequest,
) -> FutureRef:
    """:func:`start_sample`, tracked as a future of the sampler (``GET /v1/futures``)."""
    work = start_sample(
        db, backend, settings, tenant_id=tenant_id, sampler_id=sampler_id, request=request
    )
    return futures.track(tenant_id=tenant_id, owner_id=sampler_id, operation="sample", work=work)


def submit_compute_logprobs(
    db: Database,
    backend: SamplingBackend,
    futures: SampleFutures,
    *,
    tenant_id: str,
    sampler_id: str,
    request: ComputeLogprobsRequest,
) -> FutureRef:
    """:func:`start_compute_logprobs`, tracked as a future of the sampler."""
    work = start_compute_logprobs(
        db, backend, tenant_id=tenant_id, sampler_id=sampler_id, request=request
    )
    return futures.track(
        tenant_id=tenant_id, owner_id=sampler_id, operation="compute_logprobs", work=work
    )


def sampler_tokenizer(
    db: Database, backend: SamplingBackend, *, tenant_id: str, sampler_id: str
) -> dict[str, str]:
    """The sampled model's tokenizer files.

    Raises:
        NotFoundError: no such sampler for this tenant.
    """
    target = sampler_target(db, tenant_id=tenant_id, sampler_id=sampler_id)
    return _checked(lambda: backend.tokenizer_files(target))


def sample_to_wire(response: gen.SampleResponse) -> SampleResponse:
    return SampleResponse(
        sequences=[
            SampledSequence(
                tokens=list(s.tokens),
                logprobs=list(s.logprobs),
                model_logprobs=list(s.model_logprobs),
                stop_reason=s.stop_reason,
            )
            for s in response.sequences
        ],
        prompt_logprobs=None
        if response.prompt_logprobs is None
        else list(response.prompt_logprobs),
        topk_prompt_logprobs=_topk(response.topk_prompt_logprobs),
    )


def logprobs_to_wire(result: gen.PromptLogprobs) -> ComputeLogprobsResponse:
    return ComputeLogprobsResponse(logprobs=list(result.logprobs), topk=_topk(result.topk))


def _topk(
    topk: tuple[gen.TopLogprobs | None, ...] | None,
) -> list[list[tuple[int, float]] | None] | None:
    if topk is None:
        return None
    return [None if row is None else [(int(t), float(lp)) for t, lp in row] for row in topk]


def _checked(call: Callable[[], T]) -> T:
    try:
        return call()
    except ConfigError as exc:
        raise wire_error(exc) from None


def _mapped(work: Future[A], convert: Callable[[A], B]) -> Future[B]:
    """A future of ``convert(work's value)``; engine ConfigErrors become
    ValidationErrors naming the wire field."""
    out: Future[B] = Future()

    def done(finished: Future[A]) -> None:
        if finished.cancelled():
            out.cancel()
            return
        exc = finished.exception()
        if exc is not None:
            out.set_exception(wire_error(exc) if isinstance(exc, ConfigError) else exc)
            return
        try:
            out.set_result(convert(finished.result()))
        except Exception as error:
            out.set_exception(error)

    work.add_done_callback(done)
    out.add_done_callback(lambda f: work.cancel() if f.cancelled() else None)
    return out


__all__ = [
    "SamplerTarget",
    "SamplingBackend",
    "create_sampler",
    "engine_request",
    "get_sampler",
    "list_samplers",
    "logprobs_to_wire",
    "read_sampler",
    "sample_to_wire",
    "sampler_target",
    "sampler_to_wire",
    "sampler_tokenizer",
    "start_compute_logprobs",
    "start_sample",
    "submit_compute_logprobs",
    "submit_sample",
    "wire_error",
]
