"""Records: validation in the stored dtype, errors naming the record, canonical bytes,
shards and the content commitment."""

from __future__ import annotations

import numpy as np
import pytest

from tensafe.datasets import Commitment, check_schema, make_record, open_shard, pack_shard
from tensafe.errors import InvalidBatchError


def sft(n: int, *, weight: float = 1.0, index: int = 0):  # type: ignore[no-untyped-def]
    tokens = list(range(1, n + 1))
    return make_record(
        tokens, {"target_tokens": [*tokens[1:], 0], "weights": [weight] * n}, index=index
    )


@pytest.mark.parametrize(
    ("tokens", "fields", "field", "message"),
    [
        ([], {}, "records[7].tokens", "1 to"),
        ([1, 2], {"weights": [1.0, 1e39]}, "records[7].fields.weights", "1e+39"),
        ([1, 2], {"weights": [1.0, float("nan")]}, "records[7].fields.weights", "finite"),
        ([1, 2], {"advantages": [float("inf"), 0]}, "records[7].fields.advantages", "finite"),
        ([1, 2], {"weights": [1.0, -1.0]}, "records[7].fields.weights", "non-negative"),
        ([1, 2], {"weights": [1.0]}, "records[7].fields.weights", "length 1"),
        ([1, 2], {"labels": [1, 2]}, "records[7].fields.labels", "unknown"),
        ([1.5, 2], {}, "records[7].tokens", "integers"),
        ([-1, 2], {}, "records[7].tokens", "token ids"),
        ([2**40], {}, "records[7].tokens", "token ids"),
        ([[1, 2]], {}, "records[7].tokens", "1-D"),
        ([1, 2], {"target_tokens": [1.0, 2.5]}, "records[7].fields.target_tokens", "integers"),
    ],
)
def test_bad_records_are_refused_naming_the_record(
    tokens: object, fields: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(InvalidBatchError) as info:
        make_record(tokens, fields, index=7)
    assert info.value.field == field and message in str(info.value)


def test_values_are_stored_in_the_dtype_they_are_used_in() -> None:
    record = make_record([1, 2], {"weights": [0.1, 3e38], "target_tokens": [2, 3]}, index=0)
    assert record.tokens.dtype == np.int64 and record.fields["weights"].dtype == np.float32
    assert record.fields["target_tokens"].dtype == np.int64
    assert not record.tokens.flags.writeable
    datum = record.to_datum()
    assert list(datum.tokens) == [1, 2] and set(datum.loss_fn_inputs) == {
        "weights",
        "target_tokens",
    }


def test_canonical_bytes_name_the_content() -> None:
    a, b = sft(4), sft(4)
    assert a.canonical_bytes() == b.canonical_bytes() and a.digest() == b.digest()
    assert sft(4, weight=0.5).digest() != a.digest()
    assert make_record([1, 2, 3, 4], index=0).digest() != a.digest()  # no fields ≠ fields


def test_the_commitment_depends_on_content_order_and_grouping_only() -> None:
    records = [sft(n, index=i) for i, n in enumerate((3, 5, 2))]

    def commit(order: list[int], units: list[int | None]) -> str:
        c = Commitment()
        for i, unit in zip(order, units, strict=True):
            c.add(records[i], unit=unit)
        return c.hexdigest()

    same = commit([0, 1, 2], [None] * 3)
    assert same == commit([0, 1, 2], [None] * 3)
    assert same != commit([1, 0, 2], [None] * 3)
    assert same != commit([0, 1], [None] * 2)
    grouped = commit([0, 1, 2], [0, 0, 1])
    assert grouped != same and grouped != commit([0, 1, 2], [0, 1, 1])


def test_a_shard_round_trips_its_records_and_units() -> None:
    records = [sft(n, index=i) for i, n in enumerate((3, 1, 6))]
    schema = ("target_tokens", "weights")
    tensors = pack_shard(records, schema=schema, units=[4, 4, 9])
    shard = open_shard(tensors)
    assert len(shard) == 3 and [shard.unit(i) for i in range(3)] == [4, 4, 9]
    for i, record in enumerate(records):
        got = shard.record(i)
        assert got.canonical_bytes() == record.canonical_bytes()
    with pytest.raises(InvalidBatchError, match="same fields"):
        check_schema(make_record([1], index=5), schema=schema, index=5)
    broken = dict(tensors, offsets=np.array([0, 5, 4, 10]))
    with pytest.raises(Exception, match="offsets"):
        open_shard(broken)
