"""Registering a server-held dataset: records in what ``forward_backward`` takes, streamed
up in batches with a progress bar, in bounded memory (one batch at a time).

Accepted records (each item of the iterable): a :class:`~tg_tinker.types.Datum`; a
``(prompt_tokens, completion_tokens)`` pair (trained on the completion, as
:func:`~tg_tinker.data.datum_from_prompt_completion`); a :class:`~tg_tinker.types.BatchData`
(each row becomes a record: ``labels`` of ``-100`` become weight 0); a plain sequence of
token ids (a prompt, for flows that build their datums themselves); or a
:class:`~tg_tinker.types.DatasetRecord` / ``{"tokens": …, "fields": …}``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterable, Iterator
from itertools import islice
from typing import Any, TypeAlias
from urllib.parse import quote

import numpy as np

from tg_tinker._http import Request
from tg_tinker.data import datum_from_prompt_completion
from tg_tinker.errors import ValidationError
from tg_tinker.types import (
    BatchData,
    DatasetCreate,
    DatasetInfo,
    DatasetProgress,
    DatasetRecord,
    DatasetRecords,
    Datum,
)

RecordLike: TypeAlias = Any
"""Anything :func:`to_records` accepts (see the module docstring)."""

Progress: TypeAlias = Callable[[int], None]

#: Records sent per request by default.
DEFAULT_BATCH_RECORDS = 1024


def to_records(items: Iterable[RecordLike]) -> Iterator[DatasetRecord]:
    """Each accepted item as :class:`DatasetRecord`\\ s (a ``BatchData`` gives one per row).

    Raises:
        ValidationError: (``records[i]``) an item of no accepted kind.
    """
    for index, item in enumerate(items):
        if isinstance(item, BatchData):
            yield from _rows(item)
        else:
            yield _record(item, index)


def _record(item: RecordLike, index: int) -> DatasetRecord:
    if isinstance(item, DatasetRecord):
        return item
    if isinstance(item, Datum):
        fields = {k: v.data for k, v in item.loss_fn_inputs.items()}
        return DatasetRecord(tokens=item.model_input.to_ints(), fields=fields)
    if isinstance(item, dict):
        return DatasetRecord.model_validate(item)
    if isinstance(item, tuple) and len(item) == 2:
        return _record(datum_from_prompt_completion(item[0], item[1]), index)
    array = np.asarray(item) if isinstance(item, (list, np.ndarray)) else None
    if array is not None and array.ndim == 1 and (array.size == 0 or array.dtype.kind in "iu"):
        return DatasetRecord(tokens=array.tolist())
    raise ValidationError(
        "a record is a Datum, a (prompt, completion) pair, a BatchData, a list of token "
        f"ids, or a DatasetRecord; got {type(item).__name__}",
        field=f"records[{index}]",
    )


def _rows(batch: BatchData) -> Iterator[DatasetRecord]:
    for i, ids in enumerate(batch.input_ids):
        mask = batch.attention_mask[i] if batch.attention_mask is not None else [1] * len(ids)
        length = int(sum(mask))
        tokens = ids[:length]
        fields: dict[str, list[float] | list[int]] = {}
        if batch.labels is not None:
            labels = batch.labels[i][:length]
            fields["target_tokens"] = [max(int(t), 0) for t in labels]
            fields["weights"] = [0.0 if t == -100 else 1.0 for t in labels]
        yield DatasetRecord(tokens=tokens, fields=fields)


def batches(
    records: Iterable[DatasetRecord],
    units: Iterable[str | int] | None,
    *,
    size: int,
) -> Iterator[tuple[list[DatasetRecord], list[str | int] | None]]:
    """Consecutive batches of ``size`` records (with their units, aligned).

    Raises:
        ValidationError: (``privacy_units``) fewer or more units than records.
    """
    record_iter = iter(records)
    unit_iter = None if units is None else iter(units)
    while True:
        chunk = list(islice(record_iter, size))
        if unit_iter is None:
            if not chunk:
                return
            yield chunk, None
            continue
        unit_chunk = list(islice(unit_iter, len(chunk) or 1))
        if len(unit_chunk) != len(chunk):
            raise ValidationError("give exactly one privacy unit per record", field="privacy_units")
        if not chunk:
            return
        yield chunk, unit_chunk


class ProgressBar:
    """``records uploaded`` on stderr (tqdm's bar when tqdm is installed)."""

    def __init__(self, name: str) -> None:
        self._bar: Any = None
        self._name = name
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=f"uploading {name}", unit=" records", file=sys.stderr)
        except ImportError:
            pass

    def __call__(self, received: int) -> None:
        if self._bar is not None:
            self._bar.update(received - self._bar.n)
        else:
            print(f"\ruploading {self._name}: {received:,} records", end="", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)


Upload: TypeAlias = Generator[Request[Any], Any, DatasetInfo]


def upload(
    name: str,
    records: Iterable[RecordLike],
    privacy_units: Iterable[str | int] | None,
    *,
    batch_records: int,
    progress: Progress | None,
) -> Upload:
    """The requests of one registration, as a generator that is sent each answer and
    returns the dataset (so the sync and async clients drive the same steps)."""
    if not 1 <= batch_records <= 8192:
        raise ValidationError("must be between 1 and 8192", field="batch_records")
    body = DatasetCreate(name=name, privacy_units=privacy_units is not None)
    created: DatasetInfo = yield Request("POST", "/v1/datasets", response=DatasetInfo, body=body)
    path = f"/v1/datasets/{quote(created.dataset_id, safe='')}"
    offset = 0
    for chunk, units in batches(to_records(records), privacy_units, size=batch_records):
        sent = DatasetRecords(offset=offset, records=chunk, units=units)
        answer: DatasetProgress = yield Request(
            "POST", f"{path}/records", response=DatasetProgress, body=sent
        )
        offset = answer.received
        if progress is not None:
            progress(offset)
    done: DatasetInfo = yield Request("POST", f"{path}/commit", response=DatasetInfo)
    return done


__all__ = [
    "DEFAULT_BATCH_RECORDS",
    "ProgressBar",
    "RecordLike",
    "Upload",
    "batches",
    "to_records",
    "upload",
]
