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
    take_rows,
)
from tensafe.losses.chunked import (
    DEFAULT_CHUNK_TOKENS,
    check_chunk_tokens,
    chunked_token_logprobs,
    num_chunks,
)
from tensafe.losses.functions import (
    LOSS_FUNCTIONS,
    LossFunction,
    LossOutput,
    compute_loss,
    get_loss_function,
    loss_from_logprobs,
    token_logprobs,
)

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
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
    "check_chunk_tokens",
    "check_token_batch",
    "chunked_token_logprobs",
    "compute_loss",
    "get_loss_function",
    "loss_from_logprobs",
    "num_chunks",
    "take_rows",
    "token_logprobs",
]
