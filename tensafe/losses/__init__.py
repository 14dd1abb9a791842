"""Per-example losses and the batch forms they consume."""

from tensafe.losses.batch import (
    IGNORE_INDEX,
    MIN_SAMPLING_LOGPROB,
    BatchLimits,
    Datum,
    TokenBatch,
    batch_from_arrays,
    batch_from_datums,
    check_token_batch,
)
from tensafe.losses.functions import (
    LOSS_FUNCTIONS,
    LossFunction,
    LossOutput,
    compute_loss,
    get_loss_function,
    token_logprobs,
)

__all__ = [
    "IGNORE_INDEX",
    "LOSS_FUNCTIONS",
    "MIN_SAMPLING_LOGPROB",
    "BatchLimits",
    "Datum",
    "LossFunction",
    "LossOutput",
    "TokenBatch",
    "batch_from_arrays",
    "batch_from_datums",
    "check_token_batch",
    "compute_loss",
    "get_loss_function",
    "token_logprobs",
]
