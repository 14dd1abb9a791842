"""Capacity admission: what one run and one operation may ask of a worker, checked before
anything is allocated.

Budget admission (may this run spend ε?) lives in :mod:`server.services.admission`; this
module bounds *resources*:

* **caps** — validated limits from the settings: ``lora_config.rank`` ≤
  ``max_lora_rank``, tokens of one batch ≤ ``max_tokens_per_batch``, a run's
  ``metadata`` ≤ ``max_metadata_bytes``, and the model references a run may name (in
  production only the operator's ``served_models``; ``tiny-llama`` test models only
  with ``allow_test_models``, with their sizes bounded everywhere). A cap is a 422
  naming the field.
* **a memory estimate** of the run (weights, LoRA parameters with their gradients,
  optimizer state and per-example gradients) and of one operation (activations and
  the B×T×V logits with their log-softmax and gradient), compared with the worker's
  budget (``worker_memory_bytes``). Over budget is a 409 :class:`CapacityError` that
  says the estimate and the budget.

The estimates are deliberately simple (bytes per element × elements, float32) and
err high; they only have to keep a request that cannot fit from being tried.

Example::

    >>> from server.settings import Settings
    >>> settings = Settings(environment="development", worker_memory_bytes=2**30)
    >>> estimate_operation_bytes(tokens=4 * 4096, shape=SMOLLM2_SHAPE) > 2**30
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tg_tinker.types import ForwardBackwardRequest, TrainingConfig

from server.db.models import TrainingRunRow
from server.errors import ConflictError, ValidationError
from server.settings import Settings
from tensafe.errors import ConfigError
from tensafe.models.smollm2 import is_smollm2_ref
from tensafe.models.tiny import is_tiny_llama_ref, parse_tiny_llama_ref

FLOAT_BYTES = 4
#: Copies of the B×T×V logits alive at the peak of a forward/backward: the logits, their
#: log-softmax and its gradient (matches the 9 GB measured for 4 × 4096 tokens of SmolLM2).
LOGIT_COPIES = 3
#: Activations kept per token, per layer, in units of the hidden size (attention and MLP
#: inputs, norms, residuals). With the logits this estimates 14 GiB for 4 × 4096 tokens
#: of SmolLM2, where 9 GB was measured: it errs high, as it should.
ACTIVATIONS_PER_LAYER = 4
#: Largest sizes a ``tiny-llama:`` reference may ask for (it is a test model).
TINY_LLAMA_LIMITS = {
    "hidden_size": 1024,
    "num_layers": 8,
    "num_heads": 64,
    "num_kv_heads": 64,
    "intermediate_size": 4096,
    "max_position_embeddings": 8192,
}


class CapacityError(ConflictError):
    """The run or operation would need more memory than the worker's budget (409);
    nothing was allocated."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a model that memory depends on.

    Attributes:
        params: parameters of the base model.
        hidden: hidden size.
        layers: transformer blocks.
        vocab: vocabulary size (the logits' width).
    """

    params: int
    hidden: int
    layers: int
    vocab: int


SMOLLM2_SHAPE = ModelShape(params=134_515_008, hidden=576, layers=30, vocab=49_152)
_TINY_VOCAB = 49_152


def model_shape(model_ref: str) -> ModelShape | None:
    """The shape of a model the server knows without loading it (SmolLM2 and the
    ``tiny-llama`` family), else ``None``."""
    if is_smollm2_ref(model_ref):
        return SMOLLM2_SHAPE
    if is_tiny_llama_ref(model_ref):
        options = parse_tiny_llama_ref(model_ref)
        hidden = int(options.get("hidden_size", 64))
        layers = int(options.get("num_layers", 2))
        intermediate = int(options.get("intermediate_size", 128))
        tied = bool(options.get("tie_word_embeddings", True))
        embeddings = _TINY_VOCAB * hidden * (1 if tied else 2)
        block = 4 * hidden * hidden + 3 * hidden * intermediate
        return ModelShape(
            params=embeddings + layers * block, hidden=hidden, layers=layers, vocab=_TINY_VOCAB
        )
    return None


def estimate_run_bytes(*, shape: ModelShape, lora_rank: int | None, batch_size: int) -> int:
    """Memory of a loaded run: the base weights, and its trainable parameters with
    their gradient, two Adam moments and one per-example gradient per example of a
    batch (Opacus keeps them until clipping). ``lora_rank=None`` is full fine-tuning.
    LoRA is counted on every linear map of every block (an upper bound)."""
    if lora_rank is None:
        trainable = shape.params
    else:
        per_block = 7 * lora_rank * 2 * shape.hidden  # q, k, v, o, gate, up, down
        trainable = per_block * shape.layers
    return FLOAT_BYTES * (shape.params + trainable * (3 + batch_size))


def estimate_operation_bytes(*, tokens: int, shape: ModelShape) -> int:
    """Peak memory of one forward/forward_backward over ``tokens`` tokens in all:
    the activations of every layer and :data:`LOGIT_COPIES` copies of the logits."""
    activations = tokens * shape.hidden * shape.layers * ACTIVATIONS_PER_LAYER
    logits = tokens * shape.vocab * LOGIT_COPIES
    return FLOAT_BYTES * (activations + logits)


def _gib(value: int) -> str:
    return f"{value / 1024**3:.2f} GiB"


def check_model_ref(model_ref: str, *, settings: Settings) -> None:
    """Refuse a model reference this server does not serve to tenants.

    In production a run may name only ``served_models`` (SmolLM2 under any of its
    names when it is served), ``tiny-llama`` models with ``allow_test_models``, and
    directories with ``allow_model_paths``; in development any name. ``tiny-llama``
    sizes are bounded everywhere (:data:`TINY_LLAMA_LIMITS`). The answer never depends
    on what exists on the server's disk.

    Raises:
        ValidationError: (``model_ref``) naming the models that are served.
    """
    ref = model_ref.strip()
    if is_tiny_llama_ref(ref):
        if settings.environment == "production" and not settings.allow_test_models:
            raise _not_served(settings)
        try:
            options = parse_tiny_llama_ref(ref)
        except ConfigError as exc:
            raise ValidationError(exc.message, field="model_ref") from None
        for key, limit in TINY_LLAMA_LIMITS.items():
            value = options.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise ValidationError(
                    f"tiny-llama option {key} must be at most {limit} (server limit)",
                    field="model_ref",
                )
        return
    if settings.environment != "production" or settings.allow_model_paths:
        return
    served = {m.strip() for m in settings.served_models}
    if ref in served or (is_smollm2_ref(ref) and any(is_smollm2_ref(m) for m in served)):
        return
    raise _not_served(settings)


def _not_served(settings: Settings) -> ValidationError:
    names = ", ".join(repr(m) for m in settings.served_models) or "(none)"
    return ValidationError(
        f"this server does not serve that model; it serves: {names}", field="model_ref"
    )


def check_run_capacity(config: TrainingConfig, *, settings: Settings) -> None:
    """Caps and the memory estimate of a new run, before it is stored or loaded.

    Raises:
        ValidationError: (``model_ref``) see :func:`check_model_ref`;
            (``lora_config.rank``) above ``max_lora_rank``; (``metadata``) above
            ``max_metadata_bytes`` as JSON (422).
        CapacityError: the run's estimated memory is above the worker's budget (409).
    """
    check_model_ref(config.model_ref, settings=settings)
    rank = config.lora_config.rank if config.lora_config is not None else None
    if rank is not None and rank > settings.max_lora_rank:
        raise ValidationError(
            f"must be at most {settings.max_lora_rank} (server limit)", field="lora_config.rank"
        )
    size = len(json.dumps(config.metadata, separators=(",", ":")))
    if size > settings.max_metadata_bytes:
        raise ValidationError(
            f"must be at most {settings.max_metadata_bytes} bytes as JSON (got {size})",
            field="metadata",
        )
    shape = model_shape(config.model_ref.strip())
    if shape is None:
        return  # an operator-served model of unknown shape: its operations are still bounded
    estimate = estimate_run_bytes(
        shape=shape, lora_rank=rank, batch_size=min(config.batch_size, settings.max_batch_size)
    )
    budget = settings.resolved_worker_memory_bytes()
    if estimate > budget:
        raise CapacityError(
            f"this run would need about {_gib(estimate)} of worker memory (model, "
            f"trainable parameters, optimizer state, per-example gradients), above this "
            f"server's budget of {_gib(budget)}; use a smaller lora_config.rank or batch_size",
            field="lora_config.rank" if rank is not None else "lora_config",
        )


def _operation_shape(model_ref: str, vocab_size: int | None) -> ModelShape | None:
    shape = model_shape(model_ref.strip())
    if shape is None and vocab_size is not None:
        # unknown depth and width: count the logits, and SmolLM2-sized activations
        shape = ModelShape(
            params=0, hidden=SMOLLM2_SHAPE.hidden, layers=SMOLLM2_SHAPE.layers, vocab=vocab_size
        )
    return shape


def max_tokens_per_call(*, model_ref: str, vocab_size: int | None, settings: Settings) -> int:
    """The most tokens one engine call may take on a run of ``model_ref``: the
    ``max_tokens_per_batch`` cap, or fewer if the memory estimate says so. A batch the
    server builds itself (a drawn batch) is split into calls of at most this many."""
    cap = settings.max_tokens_per_batch
    shape = _operation_shape(model_ref, vocab_size)
    if shape is None:
        return cap
    per_token = estimate_operation_bytes(tokens=1, shape=shape)
    return max(1, min(cap, settings.resolved_worker_memory_bytes() // per_token))


def check_operation_capacity(
    *,
    tokens: int,
    model_ref: str,
    vocab_size: int | None,
    settings: Settings,
    examples: int = 0,
    trainable_params: int | None = None,
) -> None:
    """Caps and the memory estimate of one forward/forward_backward of ``tokens`` tokens
    in all (``examples`` rows), on a run of ``model_ref`` (``vocab_size`` and
    ``trainable_params`` once the model is loaded: each example holds a per-example
    gradient of the trainable parameters).

    Raises:
        ValidationError: (``batch``) more than ``max_tokens_per_batch`` tokens (422).
        CapacityError: the estimate is above the worker's budget (409).
    """
    if tokens > settings.max_tokens_per_batch:
        raise ValidationError(
            f"has {tokens} tokens in all; at most {settings.max_tokens_per_batch} per request "
            "(server limit): split it over several forward_backward calls",
            field="batch",
        )
    shape = _operation_shape(model_ref, vocab_size)
    if shape is None:
        return
    estimate = estimate_operation_bytes(tokens=tokens, shape=shape)
    estimate += FLOAT_BYTES * examples * (trainable_params or 0)
    budget = settings.resolved_worker_memory_bytes()
    if estimate > budget:
        raise CapacityError(
            f"this batch ({tokens} tokens) would need about {_gib(estimate)} of worker memory, "
            f"above this server's budget of {_gib(budget)}; send fewer tokens per request",
            field="batch",
        )


def request_size(request: ForwardBackwardRequest) -> tuple[str, int | None, int | None]:
    """``(form, examples, tokens)`` of a batch request — ``batch`` (arrays), ``data``
    (datums) or ``drawn`` (the server's records: sizes unknown here, ``None``)."""
    if request.drawn_batch_id is not None:
        return "drawn", None, None
    if request.batch is not None:
        return "batch", len(request.batch.input_ids), sum(map(len, request.batch.input_ids))
    assert request.data is not None
    return "data", len(request.data), sum(d.model_input.length for d in request.data)


def check_batch_capacity(
    request: ForwardBackwardRequest, *, run: TrainingRunRow, settings: Settings
) -> None:
    """:func:`check_operation_capacity` for a forward/forward_backward request on
    ``run`` (a drawn batch is sized by the server: see :func:`max_tokens_per_call`).

    Raises:
        ValidationError: more than ``max_tokens_per_batch`` tokens (422).
        CapacityError: the estimate is above the worker's budget (409).
    """
    _form, examples, tokens = request_size(request)
    if tokens is None:
        return
    check_operation_capacity(
        tokens=tokens,
        examples=examples or 0,
        model_ref=run.model_ref or "",
        vocab_size=run.vocab_size,
        trainable_params=run.trainable_params,
        settings=settings,
    )


__all__ = [
    "SMOLLM2_SHAPE",
    "CapacityError",
    "ModelShape",
    "check_batch_capacity",
    "check_model_ref",
    "check_operation_capacity",
    "check_run_capacity",
    "estimate_operation_bytes",
    "estimate_run_bytes",
    "max_tokens_per_call",
    "model_shape",
    "request_size",
]
