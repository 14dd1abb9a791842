"""A shard: a run of consecutive records as a few flat tensors (sealed as one artifact).

A dataset is stored as shards of at most a few thousand records, each sealed on its
own (AES-256-GCM, :mod:`tensafe.artifacts`), so an upload needs one shard of memory and
a step reads only the shards its drawn records live in. In a shard, records are laid
out CSR-style:

* ``tokens`` (int64) — every record's tokens, concatenated; ``offsets`` (int64,
  ``n + 1``) — record ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``;
* ``field.<name>`` — each per-token field, concatenated the same way (all records of
  a dataset carry the same fields: the first record fixes them);
* ``units`` (int64, optional) — each record's privacy-unit index (0, 1, 2, … in order
  of first appearance in the dataset; the unit ids the client gave are never stored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tensafe.datasets.records import FIELD_DTYPES, Record
from tensafe.errors import ArtifactFormatError, InvalidBatchError

#: Records per shard by default.
DEFAULT_SHARD_RECORDS = 4096


def check_schema(record: Record, *, schema: tuple[str, ...], index: int) -> None:
    """Every record of a dataset carries the same fields as the first.

    Raises:
        InvalidBatchError: (``records[i].fields``) another set of fields.
    """
    names = tuple(sorted(record.fields))
    if names != schema:
        raise InvalidBatchError(
            f"records[{index}].fields",
            f"has fields {list(names)} but the dataset's records have {list(schema)} "
            "(every record carries the same fields)",
        )


def pack_shard(
    records: Sequence[Record], *, schema: tuple[str, ...], units: Sequence[int] | None
) -> dict[str, np.ndarray]:
    """The shard's tensors (see the module docstring).

    Raises:
        ValueError: no records, or ``units`` of another length.
    """
    if not records:
        raise ValueError("a shard holds at least one record")
    if units is not None and len(units) != len(records):
        raise ValueError("units must give one unit per record")
    lengths = np.fromiter((len(r.tokens) for r in records), dtype=np.int64, count=len(records))
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tensors = {"tokens": np.concatenate([r.tokens for r in records]), "offsets": offsets}
    for name in schema:
        tensors[f"field.{name}"] = np.concatenate([r.fields[name] for r in records])
    if units is not None:
        tensors["units"] = np.asarray(units, dtype=np.int64)
    return tensors


@dataclass(frozen=True, eq=False)
class Shard:
    """Read access to an unpacked shard (see :func:`open_shard`)."""

    tokens: np.ndarray
    offsets: np.ndarray
    fields: Mapping[str, np.ndarray]
    units: np.ndarray | None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def record(self, i: int) -> Record:
        """Record ``i`` of the shard (views into the shard's arrays)."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return Record(
            tokens=self.tokens[lo:hi],
            fields={name: values[lo:hi] for name, values in self.fields.items()},
        )

    def unit(self, i: int) -> int | None:
        return None if self.units is None else int(self.units[i])


def open_shard(tensors: Mapping[str, np.ndarray]) -> Shard:
    """A :class:`Shard` over tensors from :func:`pack_shard` (after decryption).

    Raises:
        ArtifactFormatError: missing or inconsistent tensors.
    """
    try:
        tokens, offsets = np.asarray(tensors["tokens"]), np.asarray(tensors["offsets"])
    except KeyError as exc:
        raise ArtifactFormatError(f"dataset shard lacks {exc}") from None
    n = len(offsets) - 1
    if n < 1 or offsets[0] != 0 or offsets[-1] != len(tokens) or bool((np.diff(offsets) < 1).any()):
        raise ArtifactFormatError("dataset shard offsets are inconsistent")
    fields: dict[str, np.ndarray] = {}
    for key, values in tensors.items():
        if key.startswith("field."):
            name = key.removeprefix("field.")
            if name not in FIELD_DTYPES or len(values) != len(tokens):
                raise ArtifactFormatError(f"dataset shard field {name!r} is inconsistent")
            fields[name] = np.asarray(values)
    units = tensors.get("units")
    if units is not None and len(units) != n:
        raise ArtifactFormatError("dataset shard units are inconsistent")
    return Shard(
        tokens=tokens,
        offsets=offsets,
        fields=fields,
        units=None if units is None else np.asarray(units),
    )


__all__ = ["DEFAULT_SHARD_RECORDS", "Shard", "check_schema", "open_shard", "pack_shard"]
