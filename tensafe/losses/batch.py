"""One internal batch form for both client input shapes.

Clients send either Tinker datums (``model_input`` tokens plus ``loss_fn_inputs``
such as ``target_tokens`` and ``weights``) or ``BatchData`` (``input_ids``,
``attention_mask``, ``labels`` with ``-100`` for ignored positions). Both become a
:class:`TokenBatch`: right-padded ``(B, T)`` tensors where position ``t`` of example
``b`` predicts ``targets[b, t]`` with weight ``weights[b, t]``.

Label alignment: as in the TenSafe training guide (``input_ids=[1, 2, 3, 4]``,
``labels=[2, 3, 4, -100]``) and in Tinker's ``target_tokens``, targets are already
aligned with positions — ``labels[t]`` is the token the model should predict *at*
position ``t``. No further shift is applied.

Every check happens before a tensor is built, and errors name the offending field
(``data[2].loss_fn_inputs.weights``), so a bad batch never changes engine state.

Float inputs are checked in the dtype the engine computes with (:data:`FLOAT_DTYPE`,
float32), not in the float64 they arrive in: ``1e39`` is finite in float64 but
infinite in float32, and one such value would make an example's loss and gradient
NaN. A value is refused if it is NaN or infinite, or if its magnitude exceeds
float32's range; a row of weights whose sum would overflow is refused; and a
sampling log-probability below :data:`MIN_SAMPLING_LOGPROB` is refused, because the
importance ratio ``exp(logprob_now − logprob)`` would overflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tensafe.errors import InvalidBatchError

IGNORE_INDEX = -100

# Loss-function inputs that are per-token float arrays (besides target_tokens).
_FLOAT_INPUTS = ("weights", "logprobs", "advantages")

#: The dtype per-token float inputs (weights, logprobs, advantages) are stored and used in.
FLOAT_DTYPE = torch.float32
_FINFO = np.finfo(np.float32)
#: The lowest accepted sampling log-probability: ``log`` of float32's smallest normal
#: number (≈ −87.34). A float32 sampler cannot draw a less likely token, and at or above
#: it the importance ratio ``exp(logprob_now − logprob) ≤ 1 / tiny`` stays finite.
MIN_SAMPLING_LOGPROB = float(np.log(_FINFO.tiny))


@dataclass(frozen=True)
class Datum:
    """One training example in Tinker form.

    ``tokens`` is the model input; ``loss_fn_inputs`` maps names to per-token arrays
    of the same length (``target_tokens`` required; ``weights`` defaults to ones;
    ``logprobs`` and ``advantages`` for the RL losses).
    """

    tokens: Sequence[int]
    loss_fn_inputs: Mapping[str, Sequence[float] | np.ndarray]


@dataclass(frozen=True)
class TokenBatch:
    """A validated, right-padded batch. All tensors are ``(B, T)``.

    ``lengths[b]`` is the number of real (non-padding) positions of example ``b``.
    ``extras`` holds the optional per-token float inputs (``logprobs``,
    ``advantages``) used by RL losses, padded with zeros.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    lengths: tuple[int, ...]
    extras: Mapping[str, torch.Tensor]

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) input positions in the batch."""
        return int(sum(self.lengths))

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            targets=self.targets.to(device),
            weights=self.weights.to(device),
            lengths=self.lengths,
            extras={k: v.to(device) for k, v in self.extras.items()},
        )


def take_rows(batch: TokenBatch, rows: Sequence[int]) -> TokenBatch:
    """The examples ``rows`` of ``batch`` (in that order) as a batch of their own,
    padded only as wide as they need.

    A column is dropped when it is padding in every chosen row: attention mask 0
    and weight 0, so it feeds no real position (right padding, causal attention)
    and adds nothing to any loss; the width never falls below the chosen rows'
    longest ``lengths``. Each kept example's log-probabilities and losses are
    therefore the ones it has in ``batch``, up to float rounding.

    Raises:
        InvalidBatchError: (``rows``) empty, or an index outside the batch.
    """
    if not rows:
        raise InvalidBatchError("rows", "must choose at least one example")
    bad = [r for r in rows if not 0 <= r < batch.batch_size]
    if bad:
        raise InvalidBatchError("rows", f"index {bad[0]} is outside a batch of {batch.batch_size}")
    index = torch.tensor(list(rows), dtype=torch.long, device=batch.input_ids.device)
    mask = batch.attention_mask.index_select(0, index)
    weights = batch.weights.index_select(0, index)
    used = (mask != 0) | (weights != 0)
    cols = used.any(dim=0).nonzero()
    lengths = tuple(batch.lengths[r] for r in rows)
    width = max(int(cols[-1]) + 1 if cols.numel() else 0, *lengths)

    def pick(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.index_select(0, index)[:, :width].contiguous()

    return TokenBatch(
        input_ids=pick(batch.input_ids),
        attention_mask=mask[:, :width].contiguous(),
        targets=pick(batch.targets),
        weights=weights[:, :width].contiguous(),
        lengths=lengths,
        extras={k: pick(v) for k, v in batch.extras.items()},
    )


def _as_int_list(value: object, *, field: str) -> list[int]:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise InvalidBatchError(field, f"must be a 1-D sequence of ints, got shape {arr.shape}")
    if (
        arr.size
        and not np.issubdtype(arr.dtype, np.integer)
        and (not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0))
    ):
        raise InvalidBatchError(field, f"must contain integers, got dtype {arr.dtype}")
    return [int(v) for v in arr.tolist()]


def _as_float_list(
    value: object, *, field: str, name: str, signed_weights: bool = False
) -> list[float]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidBatchError(field, f"must be a 1-D sequence of numbers ({exc})") from None
    if arr.ndim != 1:
        raise InvalidBatchError(field, f"must be a 1-D sequence of numbers, got shape {arr.shape}")
    check_float_row(arr, field=field, name=name, signed_weights=signed_weights)
    return arr.tolist()


def check_float_row(
    values: np.ndarray, *, field: str, name: str, signed_weights: bool = False
) -> None:
    """Refuse one example's per-token float input unless it is safe in :data:`FLOAT_DTYPE`.

    ``name`` is the input (``weights``, ``logprobs`` or ``advantages``); ``values``
    may be in any float dtype (they are judged as float32 will hold them).

    Raises:
        InvalidBatchError: naming ``field`` and the first offending position: a
            value that is NaN, infinite or beyond float32's range; a negative
            weight (unless ``signed_weights``, for losses that sum), or weights whose
            sum would overflow float32; a ``logprobs``
            value below :data:`MIN_SAMPLING_LOGPROB`.
    """
    arr = np.asarray(values, dtype=np.float64)
    bad = ~(np.abs(arr) <= _FINFO.max)  # NaN compares False: caught here too
    if bad.any():
        pos = int(np.argmax(bad))
        raise InvalidBatchError(
            field,
            f"value {float(arr[pos])!r} at position {pos} is not a finite float32 "
            f"(NaN, infinity, or magnitude above {_FINFO.max:.6g})",
        )
    if name == "weights":
        if not signed_weights and (arr < 0).any():
            raise InvalidBatchError(field, "weights must be non-negative")
        if np.abs(arr).sum() > _FINFO.max / 2:  # margin: float32 sums round differently
            raise InvalidBatchError(
                field, f"weights sum to {arr.sum():.6g}, which overflows float32"
            )
    elif name == "logprobs" and (arr < MIN_SAMPLING_LOGPROB).any():
        pos = int(np.argmax(arr < MIN_SAMPLING_LOGPROB))
        raise InvalidBatchError(
            field,
            f"sampling log-probability {float(arr[pos])!r} at position {pos} is below "
            f"{MIN_SAMPLING_LOGPROB:.4f} (log of float32's smallest normal number): no "
            "float32 sampler draws such a token, and the importance ratio would overflow",
        )


def check_token_batch(batch: TokenBatch) -> None:
    """Apply :func:`check_float_row` to every row of a ready-made batch's float inputs
    (``weights[b]``, ``extras.logprobs[b]``, ...).

    Raises:
        InvalidBatchError: as :func:`check_float_row`, naming the row.
    """
    inputs = {"weights": batch.weights, **batch.extras}
    for name, tensor in inputs.items():
        prefix = "weights" if name == "weights" else f"extras.{name}"
        rows = tensor.detach().to("cpu", torch.float64).numpy()
        for b, row in enumerate(rows):
            check_float_row(row, field=f"{prefix}[{b}]", name=name)


def _check_tokens(tokens: list[int], *, field: str, vocab_size: int) -> None:
    for pos, tok in enumerate(tokens):
        if tok < 0 or tok >= vocab_size:
            raise InvalidBatchError(
                field,
                f"token id {tok} at position {pos} is outside the vocabulary [0, {vocab_size})",
            )


def _check_limits(batch_size: int, max_len: int, *, field: str, limits: BatchLimits) -> None:
    if batch_size == 0:
        raise InvalidBatchError(field, "batch is empty")
    if batch_size > limits.max_batch_size:
        raise InvalidBatchError(
            field, f"batch has {batch_size} examples; the limit is {limits.max_batch_size}"
        )
    if max_len > limits.max_seq_len:
        raise InvalidBatchError(
            field, f"a sequence has {max_len} tokens; the limit is {limits.max_seq_len}"
        )


@dataclass(frozen=True)
class BatchLimits:
    """Upper bounds enforced on every batch (the server sets them from its settings)."""

    max_batch_size: int = 1024
    max_seq_len: int = 8192


def _pad(rows: Sequence[Sequence[float]], *, width: int, fill: float, dtype: torch.dtype):
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


def batch_from_datums(
    data: Sequence[Datum],
    *,
    vocab_size: int,
    required_inputs: Sequence[str] = ("target_tokens",),
    limits: BatchLimits = BatchLimits(),
    signed_weights: bool = False,
) -> TokenBatch:
    """Validate Tinker datums and build a :class:`TokenBatch` (``signed_weights``:
    negative weights are allowed, for losses that sum).

    Raises:
        InvalidBatchError: empty batch, length mismatch between ``model_input`` and
            a loss input, token ids outside ``[0, vocab_size)``, a float input that
            is unsafe in float32 (see :func:`check_float_row`), a missing required
            input, or an unknown input name. ``field`` names the offending datum
            and input (``data[3].loss_fn_inputs.weights``).
    """
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise InvalidBatchError("data", "must be a list of datums")
    lengths = [len(d.tokens) for d in data]
    _check_limits(len(data), max(lengths, default=0), field="data", limits=limits)
    token_rows: list[list[int]] = []
    target_rows: list[list[int]] = []
    float_rows: dict[str, list[list[float]]] = {name: [] for name in _FLOAT_INPUTS}
    present: set[str] = set()
    for i, datum in enumerate(data):
        base = f"data[{i}]"
        tokens = _as_int_list(datum.tokens, field=f"{base}.model_input")
        if not tokens:
            raise InvalidBatchError(f"{base}.model_input", "must contain at least one token")
        _check_tokens(tokens, field=f"{base}.model_input", vocab_size=vocab_size)
        inputs = dict(datum.loss_fn_inputs)
        unknown = set(inputs) - {"target_tokens", *_FLOAT_INPUTS}
        if unknown:
            raise InvalidBatchError(
                f"{base}.loss_fn_inputs",
                f"unknown input(s) {sorted(unknown)}; allowed: target_tokens, "
                + ", ".join(_FLOAT_INPUTS),
            )
        for name in required_inputs:
            if name not in inputs:
                raise InvalidBatchError(f"{base}.loss_fn_inputs.{name}", "is required")
        targets = _as_int_list(
            inputs["target_tokens"], field=f"{base}.loss_fn_inputs.target_tokens"
        )
        if len(targets) != len(tokens):
            raise InvalidBatchError(
                f"{base}.loss_fn_inputs.target_tokens",
                f"has length {len(targets)} but model_input has {len(tokens)}",
            )
        _check_tokens(targets, field=f"{base}.loss_fn_inputs.target_tokens", vocab_size=vocab_size)
        token_rows.append(tokens)
        target_rows.append(targets)
        for name in _FLOAT_INPUTS:
            field = f"{base}.loss_fn_inputs.{name}"
            if name in inputs:
                present.add(name)
                values = _as_float_list(
                    inputs[name], field=field, name=name, signed_weights=signed_weights
                )
                if len(values) != len(tokens):
                    raise InvalidBatchError(
                        field, f"has length {len(values)} but model_input has {len(tokens)}"
                    )
            else:
                values = [1.0] * len(tokens) if name == "weights" else [0.0] * len(tokens)
            float_rows[name].append(values)
    for name in present - {"weights"}:
        missing = [i for i, d in enumerate(data) if name not in d.loss_fn_inputs]
        if missing:
            raise InvalidBatchError(
                f"data[{missing[0]}].loss_fn_inputs.{name}", "must be given for every datum"
            )
    width = max(lengths)
    return TokenBatch(
        input_ids=_pad(token_rows, width=width, fill=0, dtype=torch.long),
        attention_mask=_pad([[1] * n for n in lengths], width=width, fill=0, dtype=torch.long),
        targets=_pad(target_rows, width=width, fill=0, dtype=torch.long),
        weights=_pad(float_rows["weights"], width=width, fill=0.0, dtype=FLOAT_DTYPE),
        lengths=tuple(lengths),
        extras={
            name: _pad(float_rows[name], width=width, fill=0.0, dtype=FLOAT_DTYPE)
            for name in present - {"weights"}
        },
    )


def batch_from_arrays(
    *,
    input_ids: object,
    attention_mask: object | None = None,
    labels: object | None = None,
    vocab_size: int,
    limits: BatchLimits = BatchLimits(),
) -> TokenBatch:
    """Validate ``BatchData`` arrays and build a :class:`TokenBatch`.

    ``input_ids`` is a list of rows (ragged rows are refused: pad them and say so
    with ``attention_mask``). ``attention_mask`` must be 1s followed by 0s (right
    padding). ``labels`` are aligned targets with ``-100`` for ignored positions;
    if omitted, the next input token is the target at each position.

    Raises:
        InvalidBatchError: empty batch, ragged or mismatched shapes, a mask that is
            not right padding, token ids or labels outside the vocabulary.
    """
    rows = _rows(input_ids, field="input_ids")
    _check_limits(
        len(rows), max((len(r) for r in rows), default=0), field="input_ids", limits=limits
    )
    width = len(rows[0])
    if width == 0:
        raise InvalidBatchError("input_ids", "rows must contain at least one token")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InvalidBatchError(
                f"input_ids[{i}]",
                f"has length {len(row)} but input_ids[0] has {width}; "
                "rows must be padded to one length",
            )
        _check_tokens(row, field=f"input_ids[{i}]", vocab_size=vocab_size)
    if attention_mask is None:
        mask_rows = [[1] * width for _ in rows]
    else:
        mask_rows = _rows(attention_mask, field="attention_mask")
        _same_shape(mask_rows, rows, field="attention_mask")
        for i, row in enumerate(mask_rows):
            if any(v not in (0, 1) for v in row):
                raise InvalidBatchError(f"attention_mask[{i}]", "must contain only 0 and 1")
            n = sum(row)
            if row != [1] * n + [0] * (width - n):
                raise InvalidBatchError(
                    f"attention_mask[{i}]", "must be right padding: 1s followed by 0s"
                )
            if n == 0:
                raise InvalidBatchError(f"attention_mask[{i}]", "example has no real tokens")
    lengths = tuple(sum(r) for r in mask_rows)
    if labels is None:
        label_rows = [
            row[1:n] + [IGNORE_INDEX] * (width - n + 1)
            for row, n in zip(rows, lengths, strict=True)
        ]
    else:
        label_rows = _rows(labels, field="labels")
        _same_shape(label_rows, rows, field="labels")
    weights = []
    targets = []
    for i, (row, n) in enumerate(zip(label_rows, lengths, strict=True)):
        w, t = [], []
        for pos, lab in enumerate(row):
            if lab == IGNORE_INDEX or pos >= n:
                w.append(0.0)
                t.append(0)
            elif 0 <= lab < vocab_size:
                w.append(1.0)
                t.append(lab)
            else:
                raise InvalidBatchError(
                    f"labels[{i}]",
                    f"label {lab} at position {pos} is outside the vocabulary [0, {vocab_size}) "
                    f"and is not the ignore index {IGNORE_INDEX}",
                )
        weights.append(w)
        targets.append(t)
    return TokenBatch(
        input_ids=torch.tensor(
            [
                [t if m else 0 for t, m in zip(r, mr, strict=True)]
                for r, mr in zip(rows, mask_rows, strict=True)
            ]
        ),
        attention_mask=torch.tensor(mask_rows, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        weights=torch.tensor(weights, dtype=FLOAT_DTYPE),
        lengths=lengths,
        extras={},
    )


def _rows(value: object, *, field: str) -> list[list[int]]:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise InvalidBatchError(field, "must be a list of rows")
    if not value:
        raise InvalidBatchError(field, "batch is empty")
    out = []
    for i, row in enumerate(value):
        if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
            raise InvalidBatchError(f"{field}[{i}]", "must be a list of integers")
        vals = []
        for v in row:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                if isinstance(v, float) and math.isfinite(v) and v == int(v):
                    v = int(v)
                else:
                    raise InvalidBatchError(f"{field}[{i}]", f"must contain integers, got {v!r}")
            vals.append(int(v))
        out.append(vals)
    return out


def _same_shape(a: list[list[int]], b: list[list[int]], *, field: str) -> None:
    if len(a) != len(b):
        raise InvalidBatchError(field, f"has {len(a)} rows but input_ids has {len(b)}")
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        if len(ra) != len(rb):
            raise InvalidBatchError(
                f"{field}[{i}]", f"has length {len(ra)} but input_ids[{i}] has {len(rb)}"
            )


__all__ = [
    "FLOAT_DTYPE",
    "IGNORE_INDEX",
    "MIN_SAMPLING_LOGPROB",
    "BatchLimits",
    "Datum",
    "TokenBatch",
    "batch_from_arrays",
    "batch_from_datums",
    "check_float_row",
    "check_token_batch",
    "take_rows",
]
