"""The one mapping between wire types (``tg_tinker.types``) and engine types (``tensafe``).

Config pairs are mapped field by field from declared tables (:data:`FIELD_MAPS`):
each names the wire fields the engine does not know (``server_only``, e.g. the
dataset a DP run is charged to) and the engine fields the wire never sets
(``engine_only``). ``tests/server/test_wire_parity.py`` fails when a field on either
side is neither mapped nor listed, so a field added to one side cannot be dropped
silently on its way to the other.

Errors name the request field: config errors get their wire prefix
(``dp_config.noise_multiplier``); the engine reports ``input_ids`` for a ``BatchData``
batch, which is ``batch.input_ids`` in the request; datum errors
(``data[3].loss_fn_inputs.weights``) already match the request.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from tg_tinker import types as wire
from tg_tinker.types import (
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    OptimStepRequest,
    OptimStepResponse,
    TensorData,
    TrainingConfig,
)

from server.errors import prefix_field
from server.services.capacity import request_size
from server.services.policy import check_run_policy
from server.settings import Settings
from tensafe.engine import AdamParams, ForwardBackwardResult, OptimizerConfig, OptimStepResult
from tensafe.engine import DPMetrics as EngineDPMetrics
from tensafe.engine.results import LossFnOutput as EngineLossFnOutput
from tensafe.errors import ConfigError
from tensafe.losses import (
    BatchLimits,
    Datum,
    batch_from_arrays,
    batch_from_datums,
    get_loss_function,
)
from tensafe.models.lora import LoRAConfig
from tensafe.privacy import DPConfig

#: The dataset a DP run is charged to when its ``dp_config`` names none: every
#: DP step is charged to some dataset budget, so a tenant's unnamed runs compose
#: into one budget (an over-estimate if they really used different data).
DEFAULT_DATASET_ID = "default"

# When the run's vocabulary is not known yet, token ids are checked by the engine.
_UNKNOWN_VOCAB = 2**62


@dataclass(frozen=True)
class FieldMap:
    """How one wire model's fields correspond to one engine type's fields.

    ``engine`` is a dataclass or a function taking the fields as keyword arguments.
    Fields of the same name correspond unless ``renamed`` (wire name → engine name)
    says otherwise; ``convert`` adapts a wire value (wire → engine direction).
    """

    wire: type[BaseModel]
    engine: type | Callable[..., object]
    renamed: Mapping[str, str] = field(default_factory=dict)
    server_only: frozenset[str] = frozenset()
    engine_only: frozenset[str] = frozenset()
    convert: Mapping[str, Callable[[Any], object]] = field(default_factory=dict)

    def wire_fields(self) -> set[str]:
        return set(self.wire.model_fields)

    def engine_fields(self) -> set[str]:
        if dataclasses.is_dataclass(self.engine):
            return {f.name for f in dataclasses.fields(self.engine)}
        return set(inspect.signature(self.engine).parameters)

    def engine_kwargs(self, value: BaseModel) -> dict[str, object]:
        """The engine's keyword arguments for a wire value (server-only fields dropped)."""
        out: dict[str, object] = {}
        for name in self.wire.model_fields:
            if name in self.server_only:
                continue
            convert = self.convert.get(name)
            item = getattr(value, name)
            out[self.renamed.get(name, name)] = item if convert is None else convert(item)
        return out


def _tuple_or_none(value: list[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


DP_MAP = FieldMap(
    wire.DPConfig,
    DPConfig,
    # the budget it is charged to, and how its batches are drawn: the server's business
    server_only=frozenset({"dataset_id", "sampling", "max_records_per_unit"}),
    engine_only=frozenset({"allow_zero_noise"}),  # never from a client: a DP step adds noise
)
LORA_MAP = FieldMap(wire.LoRAConfig, LoRAConfig, convert={"target_modules": _tuple_or_none})
OPTIMIZER_MAP = FieldMap(wire.OptimizerConfig, OptimizerConfig)
ADAM_MAP = FieldMap(wire.AdamParams, AdamParams)
DATUM_MAP = FieldMap(
    wire.Datum,
    Datum,
    renamed={"model_input": "tokens"},
    server_only=frozenset({"record_id"}),  # checked and grouped by the server
    convert={
        "model_input": lambda model_input: model_input.to_ints(),
        "loss_fn_inputs": lambda inputs: {name: t.to_numpy() for name, t in inputs.items()},
    },
)
BATCH_MAP = FieldMap(
    wire.BatchData, batch_from_arrays, engine_only=frozenset({"vocab_size", "limits"})
)
# Engine → wire: results and metrics.
FORWARD_MAP = FieldMap(ForwardBackwardOutput, ForwardBackwardResult)
LOSS_OUTPUT_MAP = FieldMap(wire.LossFnOutput, EngineLossFnOutput)
OPTIM_MAP = FieldMap(
    OptimStepResponse,
    OptimStepResult,
    engine_only=frozenset({"examples_in_batch"}),  # the batch size stays on the server
)
DP_METRICS_MAP = FieldMap(wire.DPMetrics, EngineDPMetrics)

FIELD_MAPS: tuple[FieldMap, ...] = (
    DP_MAP,
    LORA_MAP,
    OPTIMIZER_MAP,
    ADAM_MAP,
    DATUM_MAP,
    BATCH_MAP,
    FORWARD_MAP,
    LOSS_OUTPUT_MAP,
    OPTIM_MAP,
    DP_METRICS_MAP,
)


# ----------------------------------------------------------------- configs
@dataclass(frozen=True)
class EngineSpec:
    """What the worker needs to build a run's engine, validated."""

    model_ref: str
    lora: LoRAConfig | None
    dp: DPConfig
    optimizer: OptimizerConfig
    seed: int
    dataset_id: str | None
    sampling: Literal["server", "client"] | None = None
    max_records_per_unit: int = 1


#: ``TrainingConfig`` fields that configure the server, not the engine.
TRAINING_SERVER_ONLY = frozenset({"batch_size", "gradient_accumulation_steps", "metadata"})
TRAINING_MAP = FieldMap(
    TrainingConfig,
    EngineSpec,
    renamed={"lora_config": "lora", "dp_config": "dp"},
    server_only=TRAINING_SERVER_ONLY,
    # from dp_config: dataset_id, sampling, max_records_per_unit
    engine_only=frozenset({"dataset_id", "sampling", "max_records_per_unit"}),
)


def engine_spec(
    config: TrainingConfig, *, settings: Settings, enforce_policy: bool = True
) -> EngineSpec:
    """Validate a wire ``TrainingConfig`` into engine configs, without loading anything.

    With ``enforce_policy`` (creating a run) the server's policy applies too
    (:func:`~server.services.policy.check_run_policy`); rebuilding an existing run
    skips it.

    Raises:
        ValidationError: naming the field (``lora_config.rank``,
            ``dp_config.noise_multiplier``, ``optimizer.learning_rate``, ``batch_size``...).
    """
    if enforce_policy:
        check_run_policy(config, settings=settings)
    wire_dp = config.dp_config
    try:
        lora = None
        if config.lora_config is not None:
            lora = LoRAConfig(**LORA_MAP.engine_kwargs(config.lora_config))  # type: ignore[arg-type]
    except ConfigError as exc:
        raise prefix_field(exc, "lora_config") from None
    try:
        optimizer = OptimizerConfig(**OPTIMIZER_MAP.engine_kwargs(config.optimizer))  # type: ignore[arg-type]
    except ConfigError as exc:
        raise prefix_field(exc, "optimizer") from None
    try:
        if wire_dp is None or not wire_dp.enabled:
            dp = DPConfig(enabled=False)
        else:
            dp = DPConfig(**DP_MAP.engine_kwargs(wire_dp))  # type: ignore[arg-type]
    except ConfigError as exc:
        raise prefix_field(exc, "dp_config") from None
    return EngineSpec(
        model_ref=config.model_ref,
        lora=lora,
        dp=dp,
        optimizer=optimizer,
        seed=config.seed,
        dataset_id=_dataset_of(wire_dp) if dp.enabled else None,
        sampling=(wire_dp.sampling or "client") if dp.enabled and wire_dp is not None else None,
        max_records_per_unit=(wire_dp.max_records_per_unit or 1) if wire_dp is not None else 1,
    )


def _dataset_of(wire_dp: wire.DPConfig | None) -> str:
    """The dataset a DP run is charged to: the one it names, else the default."""
    named = None if wire_dp is None else wire_dp.dataset_id
    return named or DEFAULT_DATASET_ID


def adam_params(request: OptimStepRequest) -> AdamParams | None:
    """The per-step Adam hyperparameters, if the request has any.

    Raises:
        ConfigError: (``adam_params.*``) an invalid value.
    """
    if request.adam_params is None:
        return None
    return AdamParams(**ADAM_MAP.engine_kwargs(request.adam_params))  # type: ignore[arg-type]


# ----------------------------------------------------------------- batches
def engine_batch(request: ForwardBackwardRequest) -> list[Datum] | dict[str, Any]:
    """The engine's input for a forward/forward_backward request: keyword arguments
    of :func:`~tensafe.losses.batch_from_arrays` (``BatchData``) or datums."""
    if request.batch is not None:
        arrays = BATCH_MAP.engine_kwargs(request.batch)
        return {name: value for name, value in arrays.items() if value is not None}
    assert request.data is not None
    return [Datum(**DATUM_MAP.engine_kwargs(datum)) for datum in request.data]  # type: ignore[arg-type]


_BATCH_FIELDS = re.compile(r"(input_ids|attention_mask|labels)($|[\[.])")


@contextmanager
def request_fields(request: ForwardBackwardRequest) -> Iterator[None]:
    """Re-raise engine config/batch errors naming the *request* field: ``input_ids[2]``
    of a ``BatchData`` batch is ``batch.input_ids[2]`` in the request."""
    try:
        yield
    except ConfigError as exc:
        if request.batch is not None and _BATCH_FIELDS.match(exc.field):
            raise type(exc)(f"batch.{exc.field}", exc.message) from None
        raise


def validate_batch_request(
    request: ForwardBackwardRequest, *, vocab_size: int | None, limits: BatchLimits
) -> int:
    """Check a batch request the way the engine will (loss name and config, shape,
    limits, and token ids when the vocabulary is known); returns the batch size.

    Raises:
        InvalidBatchError, ConfigError: naming the offending request field; nothing is
            queued then.
    """
    with request_fields(request):
        fn = get_loss_function(request.loss_fn)
        fn.resolve_config(request.loss_fn_config)
        if request.drawn_batch_id is not None:
            return 0  # the server's own records: checked when the batch is built
        batch = engine_batch(request)
        vocab = vocab_size or _UNKNOWN_VOCAB
        if isinstance(batch, dict):
            tb = batch_from_arrays(**batch, vocab_size=vocab, limits=limits)
        else:
            tb = batch_from_datums(
                batch,
                vocab_size=vocab,
                required_inputs=fn.required_inputs,
                limits=limits,
                signed_weights=fn.signed_weights,
            )
    return tb.batch_size


def batch_summary(request: ForwardBackwardRequest) -> dict[str, Any]:
    """What the database keeps of a batch request: no token ids, no loss inputs."""
    form, examples, tokens = request_size(request)
    return {
        "form": form,
        "examples": examples,
        "tokens": tokens,
        "loss_fn": request.loss_fn,
        "loss_fn_config": request.loss_fn_config,
    }


# ----------------------------------------------------------------- results
def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics without NaN/inf entries (JSON has no spelling for them)."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def _float32(values: object) -> TensorData:
    return TensorData.from_numpy(np.asarray(values, dtype=np.float32))


def forward_output(result: ForwardBackwardResult) -> ForwardBackwardOutput:
    """The wire result of ``forward``/``forward_backward`` (non-finite values dropped)."""
    grad_norm = result.grad_norm
    return ForwardBackwardOutput(
        loss_fn_output_type=result.loss_fn_output_type,
        loss_fn_outputs=[
            wire.LossFnOutput(
                logprobs=_float32(o.logprobs), elementwise_loss=_float32(o.elementwise_loss)
            )
            for o in result.loss_fn_outputs
        ],
        metrics=finite_metrics(result.metrics),
        loss=result.loss if math.isfinite(result.loss) else 0.0,
        grad_norm=grad_norm if grad_norm is None or math.isfinite(grad_norm) else None,
        tokens_processed=result.tokens_processed,
    )


def optim_output(result: OptimStepResult) -> OptimStepResponse:
    """The wire result of ``optim_step``."""
    dp = result.dp_metrics
    return OptimStepResponse(
        step=result.step,
        learning_rate=result.learning_rate,
        metrics=finite_metrics(result.metrics),
        dp_metrics=None
        if dp is None
        else wire.DPMetrics(**{name: getattr(dp, name) for name in wire.DPMetrics.model_fields}),
    )


__all__ = [
    "DEFAULT_DATASET_ID",
    "FIELD_MAPS",
    "TRAINING_MAP",
    "EngineSpec",
    "FieldMap",
    "adam_params",
    "batch_summary",
    "engine_batch",
    "engine_spec",
    "finite_metrics",
    "forward_output",
    "optim_output",
    "request_fields",
    "validate_batch_request",
]
