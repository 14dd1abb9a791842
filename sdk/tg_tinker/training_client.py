"""TrainingClient: drive one training run (forward_backward, optim_step, checkpoints).

Every operation returns an :class:`~tg_tinker.APIFuture` at once; the server runs
a run's operations strictly in submission order, so submitting
``forward_backward`` then ``optim_step`` without waiting in between is safe and
keeps the worker busy. Each operation has an ``_async`` twin that submits from
async code and returns the same kind of future (``await`` it for the result).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar, get_args

import pydantic

from tg_tinker._config import build_model
from tg_tinker._http import Request
from tg_tinker.errors import FutureTimeoutError, ServerError, ValidationError
from tg_tinker.futures import APIFuture
from tg_tinker.sampling_client import SamplingClient, create_sampler_request
from tg_tinker.types import (
    AdamParams,
    BatchData,
    Datum,
    DrawBatchRequest,
    DrawnBatch,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    FutureRef,
    GetInfoResponse,
    LoadStateRequest,
    LoadStateResponse,
    LossFnName,
    OptimStepRequest,
    OptimStepResponse,
    RunStatus,
    SaveStateRequest,
    SaveStateResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    TokenizerFiles,
    TrainingConfig,
    TrainingRun,
    UnloadModelResponse,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tg_tinker._http import HTTPCore

R = TypeVar("R", bound=pydantic.BaseModel)

#: What ``forward`` / ``forward_backward`` accept: Tinker datums, a BatchData, or a
#: mapping with ``input_ids`` (and optionally ``attention_mask``, ``labels``).
TrainingInput = Sequence[Datum] | Datum | BatchData | DrawnBatch | Mapping[str, object]

_EMPTY = (
    "batch is empty. Poisson sampling can draw an empty batch: skip forward_backward "
    "for it, but still call optim_step() (a noise-only step the accountant expects)"
)


def _check_loss_fn(loss_fn: object) -> LossFnName:
    """``loss_fn`` if it names a loss the server implements.

    Raises:
        ValidationError: ``field="loss_fn"``; the message lists the allowed names.
    """
    allowed: tuple[LossFnName, ...] = get_args(LossFnName)
    for name in allowed:
        if loss_fn == name:
            return name
    raise ValidationError(
        f"unknown loss {loss_fn!r}; allowed: {', '.join(allowed)}", field="loss_fn"
    )


def forward_request(
    data: TrainingInput, loss_fn: LossFnName, loss_fn_config: Mapping[str, float] | None
) -> ForwardBackwardRequest:
    """Normalise the accepted input forms into one ForwardBackwardRequest.

    Raises:
        ValidationError: an unknown ``loss_fn`` (checked first) or malformed input.
    """
    loss_fn = _check_loss_fn(loss_fn)
    config = dict(loss_fn_config) if loss_fn_config is not None else None
    if isinstance(data, DrawnBatch):  # the server's own records (an empty draw is fine)
        return build_model(
            ForwardBackwardRequest,
            drawn_batch_id=data.batch_id,
            loss_fn=loss_fn,
            loss_fn_config=config,
        )
    if isinstance(data, (BatchData, Mapping)):
        batch = data if isinstance(data, BatchData) else build_model(BatchData, **dict(data))
        if not batch.input_ids:
            raise ValidationError(_EMPTY, field="batch.input_ids")
        return build_model(
            ForwardBackwardRequest, batch=batch, loss_fn=loss_fn, loss_fn_config=config
        )
    if isinstance(data, Datum):
        data = [data]
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise ValidationError(
            f"expected a list of Datum, a BatchData or a dict, got {type(data).__name__}",
            field="data",
        )
    if len(data) == 0:
        raise ValidationError(_EMPTY, field="data")
    return build_model(
        ForwardBackwardRequest, data=list(data), loss_fn=loss_fn, loss_fn_config=config
    )


# ---------------------------------------------------------------- requests, described once
# Each sync method and its ``_async`` twin execute the same description.


def run_request(run_id: str) -> Request[TrainingRun]:
    """Fetch one training run of this tenant."""
    return Request("GET", f"/v1/training_runs/{run_id}", response=TrainingRun)


def _heartbeat_request(run_id: str) -> Request[TrainingRun]:
    return Request("POST", f"/v1/training_runs/{run_id}/heartbeat", response=TrainingRun)


def _info_request(run_id: str) -> Request[GetInfoResponse]:
    return Request("GET", f"/v1/training_runs/{run_id}/info", response=GetInfoResponse)


@dataclass(frozen=True)
class _Operation(Generic[R]):
    """A queued training operation: the ``POST`` that submits it, and its result type."""

    request: Request[FutureRef]
    result_type: type[R]


def _operation(
    run_id: str, route: str, result_type: type[R], body: pydantic.BaseModel | None = None
) -> _Operation[R]:
    path = f"/v1/training_runs/{run_id}/{route}"
    return _Operation(Request("POST", path, response=FutureRef, body=body), result_type)


def _forward_operation(
    run_id: str,
    route: str,
    data: TrainingInput,
    loss_fn: LossFnName,
    loss_fn_config: Mapping[str, float] | None,
) -> _Operation[ForwardBackwardOutput]:
    body = forward_request(data, loss_fn, loss_fn_config)
    return _operation(run_id, route, ForwardBackwardOutput, body)


def _draw_batch_operation(run_id: str, include_records: bool) -> _Operation[DrawnBatch]:
    body = DrawBatchRequest(include_records=include_records)
    return _operation(run_id, "draw_batch", DrawnBatch, body)


def _optim_step_operation(
    run_id: str, adam_params: AdamParams | None, apply_dp_noise: bool
) -> _Operation[OptimStepResponse]:
    body = OptimStepRequest(adam_params=adam_params, apply_dp_noise=apply_dp_noise)
    return _operation(run_id, "optim_step", OptimStepResponse, body)


def _save_state_operation(
    run_id: str, name: str | None, include_optimizer: bool, metadata: Mapping[str, object] | None
) -> _Operation[SaveStateResponse]:
    body = build_model(
        SaveStateRequest,
        name=name,
        include_optimizer=include_optimizer,
        metadata=dict(metadata or {}),
    )
    return _operation(run_id, "save_state", SaveStateResponse, body)


def _load_state_operation(
    run_id: str, path: str | None, artifact_id: str | None
) -> _Operation[LoadStateResponse]:
    body = build_model(LoadStateRequest, path=path, artifact_id=artifact_id)
    return _operation(run_id, "load_state", LoadStateResponse, body)


def _save_weights_operation(run_id: str, name: str) -> _Operation[SaveWeightsForSamplerResponse]:
    body = build_model(SaveWeightsForSamplerRequest, name=name)
    return _operation(run_id, "save_weights_for_sampler", SaveWeightsForSamplerResponse, body)


class _ReadyWait:
    """The polling schedule of :meth:`TrainingClient.wait_until_ready` and its async
    form: backoff from 50 ms to 2 s, capped by the deadline."""

    def __init__(self, run_id: str, timeout: float | None) -> None:
        self._run_id = run_id
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._delay = 0.05

    def pause(self, run: TrainingRun) -> float | None:
        """Seconds to sleep before polling again; ``None`` once the model is loaded.

        Raises:
            FutureTimeoutError: still initializing at the deadline.
            ServerError: the model failed to load (the run is in ``ERROR``).
        """
        if run.status == "INITIALIZING":
            pause = self._delay
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    raise FutureTimeoutError(
                        f"run {self._run_id} still initializing after {self._timeout} s"
                    )
                pause = min(pause, left)
            self._delay = min(self._delay * 2, 2.0)
            return pause
        if run.status == "ERROR":
            raise ServerError(f"run {self._run_id} failed to load its model: {run.error}")
        return None


class TrainingClient:
    """A handle on one training run on the server.

    Get one from :class:`~tg_tinker.ServiceClient` (``create_lora_training_client``,
    ``create_training_client``, ``get_training_client``), not by hand.

    Example::

        tc = service.create_lora_training_client("smollm2-135m-instruct", rank=8)
        fb = tc.forward_backward(batch)            # APIFuture, returns at once
        opt = tc.optim_step()                      # queued behind forward_backward
        print(fb.result().loss, opt.result().step)

    ``step`` and ``status`` are cached: they follow the results this client has
    seen (optim_step, load_state, unload) and :meth:`refresh` / :meth:`heartbeat`,
    which ask the server.
    """

    def __init__(self, http: HTTPCore, run: TrainingRun) -> None:
        self._http = http
        self._run = run
        self._step = run.step
        self._status: RunStatus = run.status
        self._latest_seq = -1
        self._tokenizer: PreTrainedTokenizerBase | None = None

    def __repr__(self) -> str:
        return f"TrainingClient(run_id={self.run_id!r}, step={self.step}, status={self.status!r})"

    # ---------------------------------------------------------------- state
    @property
    def run_id(self) -> str:
        """The training run's id."""
        return self._run.run_id

    @property
    def model_id(self) -> str:
        """Alias of :attr:`run_id` (the Tinker name)."""
        return self._run.run_id

    @property
    def config(self) -> TrainingConfig:
        """The configuration the run was created with."""
        return self._run.config

    @property
    def step(self) -> int:
        """Optimizer steps taken, as last seen by this client (see :meth:`refresh`)."""
        return self._step

    @property
    def status(self) -> RunStatus:
        """``INITIALIZING``, ``READY``, ``BUSY``, ``ERROR`` or ``TERMINATED``, as last seen."""
        return self._status

    def _adopt(self, run: TrainingRun) -> TrainingRun:
        self._run = run
        self._step = run.step
        self._status = run.status
        return run

    def _on_result(self, ref: FutureRef, value: pydantic.BaseModel) -> None:
        # Results may be read out of order; only a later operation updates the cache.
        if ref.seq < self._latest_seq:
            return
        if isinstance(value, (OptimStepResponse, LoadStateResponse)):
            self._latest_seq = ref.seq
            self._step = value.step
        elif isinstance(value, UnloadModelResponse):
            self._latest_seq = ref.seq
            self._status = "TERMINATED"

    def refresh(self) -> TrainingRun:
        """Fetch the run from the server and update :attr:`step` and :attr:`status`.

        Raises:
            NotFoundError: the run does not exist for this tenant.
        """
        return self._adopt(self._http.call(run_request(self.run_id)))

    def wait_until_ready(self, timeout: float | None = 600.0) -> TrainingRun:
        """Block until the server has loaded the run's model (status leaves
        ``INITIALIZING``), polling with backoff.

        Training operations do not need this (they queue behind the model load);
        :meth:`get_tokenizer` and :meth:`get_info` call it because they read the
        loaded model.

        Raises:
            FutureTimeoutError: still initializing after ``timeout`` seconds.
            ServerError: the model failed to load (the run is in ``ERROR``).
        """
        wait = _ReadyWait(self.run_id, timeout)
        run = self.refresh()
        while (pause := wait.pause(run)) is not None:
            time.sleep(pause)
            run = self.refresh()
        return run

    async def refresh_async(self) -> TrainingRun:
        """Async twin of :meth:`refresh`."""
        return self._adopt(await self._http.acall(run_request(self.run_id)))

    def heartbeat(self) -> TrainingRun:
        """Tell the server the client is alive (keeps an idle run from being reaped)."""
        return self._adopt(self._http.call(_heartbeat_request(self.run_id)))

    async def heartbeat_async(self) -> TrainingRun:
        """Async twin of :meth:`heartbeat`."""
        return self._adopt(await self._http.acall(_heartbeat_request(self.run_id)))

    def get_info(self) -> GetInfoResponse:
        """Model and LoRA details of the run (returns directly, not a future; waits for
        the model to finish loading, see :meth:`wait_until_ready`)."""
        if self._status == "INITIALIZING":
            self.wait_until_ready()
        return self._http.call(_info_request(self.run_id))

    async def get_info_async(self) -> GetInfoResponse:
        """Async twin of :meth:`get_info` (also waits for the model to finish loading)."""
        if self._status == "INITIALIZING":
            await self._wait_until_ready_async(timeout=600.0)
        return await self._http.acall(_info_request(self.run_id))

    async def _wait_until_ready_async(self, *, timeout: float) -> TrainingRun:
        """Async form of :meth:`wait_until_ready` (same errors)."""
        wait = _ReadyWait(self.run_id, timeout)
        run = await self.refresh_async()
        while (pause := wait.pause(run)) is not None:
            await asyncio.sleep(pause)
            run = await self.refresh_async()
        return run

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        """The run's tokenizer as a ``transformers`` tokenizer, built offline from
        files the server sends (cached on disk and on this client). Waits for the
        run's model to finish loading first (see :meth:`wait_until_ready`).

        Raises:
            ImportError: ``transformers`` is not installed (the SDK does not need it
                otherwise).
        """
        if self._tokenizer is None:
            from tg_tinker._tokenizer import load_tokenizer, materialize

            if self._status == "INITIALIZING":
                self.wait_until_ready()
            path = f"/v1/training_runs/{self.run_id}/tokenizer"
            files = self._http.call(Request("GET", path, response=TokenizerFiles))
            self._tokenizer = load_tokenizer(materialize(files))
        return self._tokenizer

    # ---------------------------------------------------------------- submit
    def _submit(self, operation: _Operation[R]) -> APIFuture[R]:
        return self._future(operation, self._http.call(operation.request))

    async def _asubmit(self, operation: _Operation[R]) -> APIFuture[R]:
        return self._future(operation, await self._http.acall(operation.request))

    def _future(self, operation: _Operation[R], ref: FutureRef) -> APIFuture[R]:
        return APIFuture(self._http, ref, operation.result_type, on_result=self._on_result)

    # ---------------------------------------------------------------- operations
    def forward(
        self,
        data: TrainingInput,
        loss_fn: LossFnName = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Forward pass and loss without gradients (evaluation, reference logprobs).

        ``data`` is a list of :class:`Datum`, a :class:`BatchData`, or a dict with
        ``input_ids`` / ``attention_mask`` / ``labels`` (lists or 2-D arrays).

        ``loss_fn`` is one of :data:`~tg_tinker.types.LossFnName`
        (``cross_entropy``, ``importance_sampling``, ``ppo``).

        Raises:
            ValidationError: an unknown ``loss_fn`` (``field="loss_fn"``), malformed or
                empty input (raised here, before sending).
        """
        return self._submit(
            _forward_operation(self.run_id, "forward", data, loss_fn, loss_fn_config)
        )

    async def forward_async(
        self,
        data: TrainingInput,
        loss_fn: LossFnName = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Async twin of :meth:`forward`."""
        return await self._asubmit(
            _forward_operation(self.run_id, "forward", data, loss_fn, loss_fn_config)
        )

    def forward_backward(
        self,
        data: TrainingInput,
        loss_fn: LossFnName = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Forward and backward pass; gradients accumulate until :meth:`optim_step`.

        Under DP each example's gradient is clipped here; noise is added once per
        logical batch at ``optim_step``. Accepts the same inputs as :meth:`forward`.

        ``loss_fn`` is one of :data:`~tg_tinker.types.LossFnName`
        (``cross_entropy``, ``importance_sampling``, ``ppo``).

        Raises:
            ValidationError: an unknown ``loss_fn`` (``field="loss_fn"``), malformed or
                empty input (raised here, before sending).
        """
        return self._submit(
            _forward_operation(self.run_id, "forward_backward", data, loss_fn, loss_fn_config)
        )

    async def forward_backward_async(
        self,
        data: TrainingInput,
        loss_fn: LossFnName = "cross_entropy",
        loss_fn_config: Mapping[str, float] | None = None,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Async twin of :meth:`forward_backward`."""
        return await self._asubmit(
            _forward_operation(self.run_id, "forward_backward", data, loss_fn, loss_fn_config)
        )

    def draw_batch(self, *, include_records: bool = False) -> APIFuture[DrawnBatch]:
        """The server draws this run's next logical batch from its server-held dataset:
        each record (or privacy unit) independently with probability q, from the server's
        CSPRNG. One :meth:`optim_step` consumes it; drawing again before that is refused.

        The SFT loop is three lines; an empty draw is fine (``optim_step`` still adds
        the noise the accountant expects)::

            batch = tc.draw_batch().result()
            tc.forward_backward(batch)
            tc.optim_step()

        For RL, ``include_records=True`` returns the drawn records (the prompts); send the
        datums you build from them with ``Datum(..., record_id=batch.record_ids[i])``:
        all datums of one record (one unit) are clipped together.

        Raises:
            ConflictError: (from the future) the run declares its own sampling, or the
                previous drawn batch was not stepped.
        """
        return self._submit(_draw_batch_operation(self.run_id, include_records))

    async def draw_batch_async(self, *, include_records: bool = False) -> APIFuture[DrawnBatch]:
        """Async twin of :meth:`draw_batch`."""
        return await self._asubmit(_draw_batch_operation(self.run_id, include_records))

    def optim_step(
        self, adam_params: AdamParams | None = None, *, apply_dp_noise: bool = True
    ) -> APIFuture[OptimStepResponse]:
        """Apply the accumulated gradients (adding DP noise once, in a DP run).

        Args:
            adam_params: per-step hyperparameters; the run's optimizer config if None.
            apply_dp_noise: must stay True in a DP run (the server refuses a
                noiseless step there); ignored without DP.
        """
        return self._submit(_optim_step_operation(self.run_id, adam_params, apply_dp_noise))

    async def optim_step_async(
        self, adam_params: AdamParams | None = None, *, apply_dp_noise: bool = True
    ) -> APIFuture[OptimStepResponse]:
        """Async twin of :meth:`optim_step`."""
        return await self._asubmit(_optim_step_operation(self.run_id, adam_params, apply_dp_noise))

    def save_state(
        self,
        name: str | None = None,
        *,
        include_optimizer: bool = True,
        metadata: Mapping[str, object] | None = None,
    ) -> APIFuture[SaveStateResponse]:
        """Save an encrypted checkpoint of the trainable state (to resume training).

        The result has ``artifact_id``, ``path`` (``tensafe://{run}/weights/{name}``),
        ``size_bytes`` and ``content_hash``.

        Raises:
            ValidationError: ``name`` is not ``[A-Za-z0-9_.-]{1,128}``.
        """
        return self._submit(_save_state_operation(self.run_id, name, include_optimizer, metadata))

    async def save_state_async(
        self,
        name: str | None = None,
        *,
        include_optimizer: bool = True,
        metadata: Mapping[str, object] | None = None,
    ) -> APIFuture[SaveStateResponse]:
        """Async twin of :meth:`save_state`."""
        return await self._asubmit(
            _save_state_operation(self.run_id, name, include_optimizer, metadata)
        )

    def load_state(
        self, path: str | None = None, *, artifact_id: str | None = None
    ) -> APIFuture[LoadStateResponse]:
        """Restore a checkpoint saved by :meth:`save_state`, by ``tensafe://`` path
        or by ``artifact_id`` (exactly one).

        Raises:
            ValidationError: neither or both given.
        """
        return self._submit(_load_state_operation(self.run_id, path, artifact_id))

    async def load_state_async(
        self, path: str | None = None, *, artifact_id: str | None = None
    ) -> APIFuture[LoadStateResponse]:
        """Async twin of :meth:`load_state`."""
        return await self._asubmit(_load_state_operation(self.run_id, path, artifact_id))

    def save_weights_for_sampler(self, name: str) -> APIFuture[SaveWeightsForSamplerResponse]:
        """Save the weights for sampling (``tensafe://{run}/sampler_weights/{name}``)."""
        return self._submit(_save_weights_operation(self.run_id, name))

    async def save_weights_for_sampler_async(
        self, name: str
    ) -> APIFuture[SaveWeightsForSamplerResponse]:
        """Async twin of :meth:`save_weights_for_sampler`."""
        return await self._asubmit(_save_weights_operation(self.run_id, name))

    def _snapshot_name(self, name: str | None) -> str:
        return name if name is not None else f"sampler-{self._step}-{secrets.token_hex(4)}"

    def save_weights_and_get_sampling_client(self, name: str | None = None) -> SamplingClient:
        """Save the weights for sampling (as :meth:`save_weights_for_sampler`; an
        automatic name ``sampler-<step>-<random>`` when ``name`` is None) and return a
        :class:`~tg_tinker.SamplingClient` of that snapshot. Blocks until saved.

        The snapshot does not follow later training; for the run's current weights use
        ``service.create_sampling_client(run_id=tc.run_id)``.

        Raises:
            ValidationError: ``name`` is not ``[A-Za-z0-9_.-]{1,128}``.
            ConflictError: the name is taken.
        """
        saved = self.save_weights_for_sampler(self._snapshot_name(name)).result()
        request = create_sampler_request(
            model_path=saved.path, base_model=None, run_id=None, artifact_id=None
        )
        return SamplingClient(self._http, self._http.call(request))

    async def save_weights_and_get_sampling_client_async(
        self, name: str | None = None
    ) -> SamplingClient:
        """Async twin of :meth:`save_weights_and_get_sampling_client`."""
        future = await self.save_weights_for_sampler_async(self._snapshot_name(name))
        saved = await future
        request = create_sampler_request(
            model_path=saved.path, base_model=None, run_id=None, artifact_id=None
        )
        return SamplingClient(self._http, await self._http.acall(request))

    def unload_model(self) -> APIFuture[UnloadModelResponse]:
        """End the run and free its GPU. Does not save; saved checkpoints remain."""
        return self._submit(_operation(self.run_id, "unload", UnloadModelResponse))

    async def unload_model_async(self) -> APIFuture[UnloadModelResponse]:
        """Async twin of :meth:`unload_model`."""
        return await self._asubmit(_operation(self.run_id, "unload", UnloadModelResponse))

    unload = unload_model
    unload_async = unload_model_async


__all__ = ["TrainingClient", "TrainingInput"]
