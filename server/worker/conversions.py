"""Wire types (``tg_tinker.types``) to engine inputs and engine results to wire types.

Batch errors name the request field: the engine reports ``input_ids`` for a
``BatchData`` batch, which is ``batch.input_ids`` in the request; datum errors
(``data[3].loss_fn_inputs.weights``) already match the request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from tg_tinker.types import (
    DPMetrics,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    LossFnOutput,
    OptimStepRequest,
    OptimStepResponse,
    TensorData,
)

from tensafe.engine import AdamParams, ForwardBackwardResult, OptimStepResult
from tensafe.errors import ConfigError
from tensafe.losses import (
    BatchLimits,
    Datum,
    batch_from_arrays,
    batch_from_datums,
    get_loss_function,
)

# When the run's vocabulary is not known yet, token ids are checked by the engine.
_UNKNOWN_VOCAB = 2**62


def engine_batch(request: ForwardBackwardRequest) -> list[Datum] | dict[str, Any]:
    """The engine's input for a forward/forward_backward request."""
    if request.batch is not None:
        batch = request.batch
        out: dict[str, Any] = {"input_ids": batch.input_ids}
        if batch.attention_mask is not None:
            out["attention_mask"] = batch.attention_mask
        if batch.labels is not None:
            out["labels"] = batch.labels
        return out
    assert request.data is not None
    return [
        Datum(
            tokens=datum.model_input.to_ints(),
            loss_fn_inputs={name: t.to_numpy() for name, t in datum.loss_fn_inputs.items()},
        )
        for datum in request.data
    ]


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
        batch = engine_batch(request)
        vocab = vocab_size or _UNKNOWN_VOCAB
        if isinstance(batch, dict):
            tb = batch_from_arrays(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                labels=batch.get("labels"),
                vocab_size=vocab,
                limits=limits,
            )
        else:
            tb = batch_from_datums(
                batch, vocab_size=vocab, required_inputs=fn.required_inputs, limits=limits
            )
    return tb.batch_size


def batch_summary(request: ForwardBackwardRequest) -> dict[str, Any]:
    """What the database keeps of a batch request: no token ids, no loss inputs."""
    if request.batch is not None:
        form, examples = "batch", len(request.batch.input_ids)
        tokens = sum(len(row) for row in request.batch.input_ids)
    else:
        assert request.data is not None
        form, examples = "data", len(request.data)
        tokens = sum(d.model_input.length for d in request.data)
    return {
        "form": form,
        "examples": examples,
        "tokens": tokens,
        "loss_fn": request.loss_fn,
        "loss_fn_config": request.loss_fn_config,
    }


def adam_params(request: OptimStepRequest) -> AdamParams | None:
    """The per-step Adam hyperparameters, if the request has any.

    Raises:
        ConfigError: (``adam_params.*``) an invalid value.
    """
    wire = request.adam_params
    if wire is None:
        return None
    return AdamParams(
        learning_rate=wire.learning_rate,
        beta1=wire.beta1,
        beta2=wire.beta2,
        eps=wire.eps,
        weight_decay=wire.weight_decay,
    )


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics without NaN/inf entries (JSON has no spelling for them)."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def forward_output(result: ForwardBackwardResult) -> ForwardBackwardOutput:
    return ForwardBackwardOutput(
        loss_fn_output_type=result.loss_fn_output_type,
        loss_fn_outputs=[
            LossFnOutput(
                logprobs=TensorData.from_numpy(np.asarray(o.logprobs, dtype=np.float32)),
                elementwise_loss=TensorData.from_numpy(
                    np.asarray(o.elementwise_loss, dtype=np.float32)
                ),
            )
            for o in result.loss_fn_outputs
        ],
        metrics=finite_metrics(result.metrics),
        loss=result.loss if math.isfinite(result.loss) else 0.0,
        grad_norm=result.grad_norm
        if result.grad_norm is None or math.isfinite(result.grad_norm)
        else None,
        tokens_processed=result.tokens_processed,
    )


def optim_output(result: OptimStepResult) -> OptimStepResponse:
    dp = result.dp_metrics
    return OptimStepResponse(
        step=result.step,
        learning_rate=result.learning_rate,
        metrics=finite_metrics(result.metrics),
        dp_metrics=None
        if dp is None
        else DPMetrics(
            epsilon_spent=dp.epsilon_spent,
            delta=dp.delta,
            noise_multiplier=dp.noise_multiplier,
            sample_rate=dp.sample_rate,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=dp.expected_batch_size,
            accountant=dp.accountant,
            steps=dp.steps,
        ),
    )


__all__ = [
    "adam_params",
    "batch_summary",
    "engine_batch",
    "finite_metrics",
    "forward_output",
    "optim_output",
    "request_fields",
    "validate_batch_request",
]
