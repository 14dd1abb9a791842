"""One record of a server-held dataset, validated at upload, and its canonical bytes.

A record is what ``forward_backward`` takes as one datum: model-input ``tokens`` and
per-token ``fields`` of the same length (``target_tokens``; ``weights``; for RL losses
``logprobs`` and ``advantages``). A record with no fields is a prompt, for flows where
the client builds the datums itself (RL: sample completions of the drawn prompts).

Records are validated when they are uploaded — every value in the dtype it is stored
and used in (token ids int64, floats float32, so a weight of 1e39 is refused rather
than stored as infinity) — and errors name the record by its index in the dataset
(``records[41].fields.weights``). Token ids are checked against a model's vocabulary
only when a run uses them (the dataset is not tied to one model).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tensafe.errors import InvalidBatchError
from tensafe.losses.batch import Datum

#: Per-token fields a record may carry, and their stored dtypes.
FIELD_DTYPES: Mapping[str, np.dtype] = {
    "target_tokens": np.dtype(np.int64),
    "weights": np.dtype(np.float32),
    "logprobs": np.dtype(np.float32),
    "advantages": np.dtype(np.float32),
}

#: Longest record accepted, in tokens.
MAX_RECORD_TOKENS = 32_768

_MAX_TOKEN_ID = 2**31 - 1


@dataclass(frozen=True, eq=False)
class Record:
    """One validated record. Arrays are read-only.

    Attributes:
        tokens: the model input, int64, 1 ≤ length ≤ :data:`MAX_RECORD_TOKENS`.
        fields: per-token arrays of the same length, by name (:data:`FIELD_DTYPES`).
    """

    tokens: np.ndarray
    fields: Mapping[str, np.ndarray]

    def to_datum(self) -> Datum:
        """The record as the engine's :class:`~tensafe.losses.batch.Datum`."""
        return Datum(tokens=self.tokens, loss_fn_inputs=dict(self.fields))

    def canonical_bytes(self) -> bytes:
        """A byte string that identifies the record's content (field names sorted,
        little-endian arrays, lengths prefixed): what the dataset commitment hashes."""
        parts = [struct.pack("<Q", len(self.tokens)), _le(self.tokens)]
        for name in sorted(self.fields):
            encoded = name.encode("ascii")
            parts += [struct.pack("<H", len(encoded)), encoded, _le(self.fields[name])]
        return b"".join(parts)

    def digest(self) -> bytes:
        """SHA-256 of :meth:`canonical_bytes` (finds exact duplicates)."""
        return hashlib.sha256(self.canonical_bytes()).digest()


def make_record(
    tokens: object, fields: Mapping[str, object] | None = None, *, index: int
) -> Record:
    """Validate one record; ``index`` is its position in the dataset (for errors).

    Raises:
        InvalidBatchError: (``records[i].tokens`` / ``records[i].fields.<name>``) not a
            1-D integer array of 1 to :data:`MAX_RECORD_TOKENS` non-negative ids below
            2³¹; an unknown field; a field of another length; a float that is not
            finite in float32; a negative weight.
    """
    base = f"records[{index}]"
    token_array = _ints(tokens, field=f"{base}.tokens")
    if not 1 <= len(token_array) <= MAX_RECORD_TOKENS:
        raise InvalidBatchError(
            f"{base}.tokens", f"must have 1 to {MAX_RECORD_TOKENS} tokens, got {len(token_array)}"
        )
    checked: dict[str, np.ndarray] = {}
    for name, value in (fields or {}).items():
        field = f"{base}.fields.{name}"
        dtype = FIELD_DTYPES.get(name)
        if dtype is None:
            raise InvalidBatchError(field, f"unknown field; allowed: {', '.join(FIELD_DTYPES)}")
        array = _ints(value, field=field) if dtype.kind == "i" else _floats(value, field=field)
        if len(array) != len(token_array):
            raise InvalidBatchError(
                field, f"has length {len(array)} but tokens has {len(token_array)}"
            )
        if name == "weights" and bool((array < 0).any()):
            raise InvalidBatchError(field, "weights must be non-negative")
        checked[name] = _frozen(array)
    return Record(tokens=_frozen(token_array), fields=checked)


def _ints(value: object, *, field: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidBatchError(field, f"must be a 1-D sequence of integers ({exc})") from None
    if array.ndim != 1:
        raise InvalidBatchError(
            field, f"must be a 1-D sequence of integers, got shape {array.shape}"
        )
    if array.size and array.dtype.kind not in "iu":
        raise InvalidBatchError(field, f"must contain integers, got dtype {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > _MAX_TOKEN_ID):
        raise InvalidBatchError(field, f"token ids must be in [0, {_MAX_TOKEN_ID}]")
    return array.astype(np.int64, copy=True)


def _floats(value: object, *, field: str) -> np.ndarray:
    try:
        wide = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidBatchError(field, f"must be a 1-D sequence of numbers ({exc})") from None
    if wide.ndim != 1:
        raise InvalidBatchError(field, f"must be a 1-D sequence of numbers, got shape {wide.shape}")
    with np.errstate(over="ignore"):
        stored = wide.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(stored))
    if bad.size:
        raise InvalidBatchError(
            field,
            f"value {wide[bad[0]]!r} at position {int(bad[0])} is not a finite float32 "
            "(NaN, infinity, or beyond ±3.4e38)",
        )
    return stored


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _le(array: np.ndarray) -> bytes:
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


__all__ = ["FIELD_DTYPES", "MAX_RECORD_TOKENS", "Record", "make_record"]
