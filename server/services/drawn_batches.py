"""Batches the server draws for a run on a server-held dataset, and the rules that make
the client unable to choose, repeat or add records.

* :func:`draw` — Poisson sampling with the run's rate over the dataset's records, or
  over its privacy units (each drawn unit contributing at most k of its records), from
  the OS CSPRNG (:mod:`tensafe.datasets.sampling`). The draw is kept on the run
  (``training_runs.pending_draw``) until exactly one ``optim_step`` consumes it; another
  draw before that step is refused, so a client cannot redraw until it likes a batch.
* Each drawn record belongs to a **group** — its privacy unit, or itself — and a group is
  one contribution: all datums of a group are clipped together (:func:`group_datums`),
  and a group may be used by one ``forward_backward`` of the logical batch only.
* :func:`drawn_datums` is the SFT path (train on the drawn records as they are);
  :func:`client_datums` is the RL path (the client built the datums — e.g. completions of
  the drawn prompts — and names each one's ``record_id``): a record that was not drawn,
  a datum without a record, or a group used before is refused, naming the datum.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.errors import ConflictError, ValidationError
from server.services.dataset_reader import DatasetReader
from tensafe.datasets import SecureUniforms, UniformSource, draw_units, poisson_sample
from tensafe.losses.batch import Datum


@dataclass(frozen=True)
class PendingDraw:
    """A drawn logical batch: its records (indices, sorted; with privacy units, unit by
    unit) and each one's group."""

    batch_id: str
    records: tuple[int, ...]
    groups: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"batch_id": self.batch_id, "records": list(self.records),
                "groups": list(self.groups)}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PendingDraw:
        return cls(
            batch_id=str(data["batch_id"]),
            records=tuple(int(r) for r in data["records"]),  # type: ignore[attr-defined]
            groups=tuple(int(g) for g in data["groups"]),  # type: ignore[attr-defined]
        )

    def group_of(self) -> dict[int, int]:
        return dict(zip(self.records, self.groups, strict=True))


def draw(
    reader: DatasetReader,
    *,
    rate: float,
    max_records_per_unit: int,
    source: UniformSource | None = None,
) -> PendingDraw:
    """Draw the next logical batch of a run (see the module docstring)."""
    source = source or SecureUniforms()
    batch_id = "batch_" + secrets.token_hex(12)
    if reader.dataset.privacy_unit == "unit":
        drawn = draw_units(
            reader.unit_records(),
            rate,
            max_records_per_unit=max_records_per_unit,
            source=source,
        )
        # a unit's records stay together (units in order, records in order within)
        pairs = [(int(r), unit) for unit, records in drawn for r in records]
        return PendingDraw(batch_id, tuple(r for r, _ in pairs), tuple(u for _, u in pairs))
    records = tuple(int(r) for r in poisson_sample(len(reader), rate, source=source))
    return PendingDraw(batch_id, records, records)


def drawn_datums(reader: DatasetReader, pending: PendingDraw) -> tuple[list[Datum], list[int]]:
    """The drawn records as datums, and each one's group (SFT: train on them as they are)."""
    datums = [r.to_datum() for r in reader.records(pending.records)]
    return datums, list(pending.groups)


def client_datums(
    record_ids: Sequence[int | None], pending: PendingDraw, *, used_groups: set[int]
) -> list[int]:
    """The group of each client-built datum, checked against the draw.

    Raises:
        ValidationError: (``data[i].record_id``) missing, or a record that was not drawn.
        ConflictError: (``data[i].record_id``) its group was already used by an earlier
            ``forward_backward`` of this logical batch.
    """
    group_of = pending.group_of()
    groups = []
    for i, record in enumerate(record_ids):
        field = f"data[{i}].record_id"
        if record is None:
            raise ValidationError(
                "this run trains on a server-held dataset: every datum names the drawn "
                "record it belongs to",
                field=field,
            )
        group = group_of.get(record)
        if group is None:
            raise ValidationError(
                f"record {record} was not drawn in batch {pending.batch_id}", field=field
            )
        if group in used_groups:
            raise ConflictError(
                f"record {record} (privacy unit {group}) was already used by a "
                "forward_backward of this batch: all datums of a unit come in one call",
                field=field,
            )
        groups.append(group)
    return groups


def split_by_group(
    datums: Sequence[Datum],
    groups: Sequence[int],
    *,
    max_batch: int,
    max_tokens: int | None = None,
) -> list[tuple[list[Datum], list[int]]]:
    """Consecutive engine calls of at most ``max_batch`` datums (and at most
    ``max_tokens`` tokens, when given) that never split a group.

    Raises:
        ValidationError: (``dp_config.max_records_per_unit``) one group alone is larger
            than ``max_batch`` datums or ``max_tokens`` tokens.
    """
    tokens_limit = max_tokens if max_tokens is not None else sum(len(d.tokens) for d in datums)
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    calls: list[tuple[list[Datum], list[int]]] = []
    datums_now: list[Datum] = []
    groups_now: list[int] = []
    tokens_now = 0
    for group, members in by_group.items():
        tokens = sum(len(datums[i].tokens) for i in members)
        if len(members) > max_batch or tokens > tokens_limit:
            raise ValidationError(
                f"privacy unit {group} has {len(members)} datums of {tokens} tokens; at most "
                f"{max_batch} datums and {tokens_limit} tokens fit one forward_backward",
                field="dp_config.max_records_per_unit",
            )
        if datums_now and (
            len(datums_now) + len(members) > max_batch or tokens_now + tokens > tokens_limit
        ):
            calls.append((datums_now, groups_now))
            datums_now, groups_now, tokens_now = [], [], 0
        datums_now += [datums[i] for i in members]
        groups_now += [group] * len(members)
        tokens_now += tokens
    if datums_now:
        calls.append((datums_now, groups_now))
    return calls


def check_draw(pending: PendingDraw | None, batch_id: str | None) -> PendingDraw:
    """The run's pending draw, matching ``batch_id`` when one is named.

    Raises:
        ConflictError: (``drawn_batch_id``) no batch drawn, or another one.
    """
    if pending is None:
        raise ConflictError(
            "no batch is drawn: call draw_batch first (the server draws every logical batch "
            "of a run on a server-held dataset)",
            field="drawn_batch_id",
        )
    if batch_id is not None and batch_id != pending.batch_id:
        raise ConflictError(
            f"batch {batch_id} is not the run's drawn batch ({pending.batch_id})",
            field="drawn_batch_id",
        )
    return pending


def unique_groups(groups: Sequence[int]) -> set[int]:
    return set(np.unique(np.asarray(groups, dtype=np.int64)).tolist()) if groups else set()


__all__ = [
    "PendingDraw",
    "check_draw",
    "client_datums",
    "draw",
    "drawn_datums",
    "split_by_group",
    "unique_groups",
]
