"""The hash-chained ledger: known answers, validation, and tamper detection."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tensafe.audit.ledger import (
    FORMAT_2_FIELDS,
    FORMAT_3_FIELDS,
    GENESIS,
    GENESIS_LINK,
    ChainHead,
    LedgerEvent,
    append,
    canonical_bytes,
    compute_link,
    utc_timestamp,
    verify_chain,
)
from tensafe.errors import ConfigError
from tests.tensafe.audit.simulate import KEY, RunSpec, new_ledger, raise_cap, run_steps

KAT_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
KAT_FIELDS: dict[str, object] = {
    "kind": "dp_step",
    "tenant_id": "tenant-ä",
    "dataset_id": "ds/1",
    "run_id": "run-7",
    "step": 42,
    "noise_multiplier": 1.1,
    "sample_rate": 0.004,
    "max_grad_norm": 1,  # an int is stored as the float 1.0
    "dataset_size": 50000,
    "delta": 1e-05,
    "accountant": "prv",
    "epsilon_step": 0.0123,
    "epsilon_run_total": 1.25,
    "epsilon_dataset_total": 2.5,
    "cap": 8.0,
    "library_versions": {"opacus": "1.6.0", "epsilon_schedule": "geometric:0.0025"},
    "created_at": "2026-03-02T09:00:07.000000Z",
}
KAT_HEAD = ChainHead(seq=41, link="ab" * 32)
KAT_CANONICAL = (
    '{"accountant":"prv","actor":null,"cap":8.0,"created_at":"2026-03-02T09:00:07.000000Z",'
    '"dataset_id":"ds/1","dataset_size":50000,"delta":1e-05,"epsilon_dataset_total":2.5,'
    '"epsilon_requested":null,"epsilon_run_total":1.25,"epsilon_step":0.0123,"kind":"dp_step",'
    '"library_versions":{"epsilon_schedule":"geometric:0.0025","opacus":"1.6.0"},'
    '"max_grad_norm":1.0,"noise_multiplier":1.1,"prev_link":"' + "ab" * 32 + '",'
    '"reason":null,"run_id":"run-7","sample_rate":0.004,"seq":42,"step":42,'
    '"tenant_id":"tenant-\\u00e4"}'
)
# Also checked with: openssl dgst -sha256 -mac HMAC -macopt hexkey:0001…1f
KAT_LINK = "10d8774bc074bddb61cecb9ec91a556316fbd41b2a5138b85504c091222b07b3"


# ------------------------------------------------------------- known answers


def test_canonical_bytes_and_link_known_answer() -> None:
    event = append(KAT_HEAD, KAT_FIELDS, KAT_KEY)
    assert event.seq == 42 and event.prev_link == "ab" * 32
    assert canonical_bytes(event).decode("ascii") == KAT_CANONICAL
    assert event.link == KAT_LINK
    assert compute_link(KAT_KEY, KAT_HEAD.link, event) == KAT_LINK


CHANGES: dict[str, object] = {
    "seq": 43,
    "kind": "step_refused",
    "tenant_id": "tenant-a",
    "dataset_id": "ds/2",
    "run_id": "run-8",
    "step": 43,
    "noise_multiplier": 1.1000000000000003,  # one ulp away
    "sample_rate": 0.005,
    "max_grad_norm": 2.0,
    "dataset_size": 50001,
    "delta": 1e-6,
    "accountant": "rdp",
    "epsilon_step": 0.0124,
    "epsilon_run_total": 1.26,
    "epsilon_dataset_total": 2.4,
    "epsilon_requested": 9.0,
    "cap": 8.5,
    "actor": "admin",
    "reason": "x",
    "library_versions": {"opacus": "1.6.1", "epsilon_schedule": "geometric:0.0025"},
    "created_at": "2026-03-02T09:00:07.000001Z",
    "prev_link": "ab" * 31 + "ac",
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_changing_any_field_changes_the_link(name: str) -> None:
    event = append(KAT_HEAD, KAT_FIELDS, KAT_KEY)
    row = event.to_row() | {name: CHANGES[name]}
    if name == "kind":  # a refusal also needs its requested ε
        row["epsilon_requested"] = 9.0
    if name == "epsilon_requested":
        row["kind"] = "step_refused"
    changed = LedgerEvent.from_row(row)
    assert compute_link(KAT_KEY, KAT_HEAD.link, changed) != KAT_LINK
    # The format-2 and -3 fields have tamper tests of their own (test_ledger_format2.py,
    # test_privacy_audit_ledger.py).
    assert set(CHANGES) | {"link", *FORMAT_2_FIELDS, *FORMAT_3_FIELDS} == {
        f.name for f in dataclasses.fields(LedgerEvent)
    }


def test_rows_survive_a_json_round_trip_bit_for_bit() -> None:
    event = append(KAT_HEAD, KAT_FIELDS | {"epsilon_dataset_total": 0.1 + 0.2}, KAT_KEY)
    again = LedgerEvent.from_row(json.loads(json.dumps(event.to_row())))
    assert again == event
    assert canonical_bytes(again) == canonical_bytes(event)
    assert verify_chain([again], KAT_KEY, start=KAT_HEAD).ok


def test_utc_timestamp_format() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    moment = datetime(2026, 1, 31, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert utc_timestamp(moment) == "2026-01-31T12:00:00.000005Z"
    assert utc_timestamp().endswith("Z")
    with pytest.raises(ConfigError):
        utc_timestamp(datetime(2026, 1, 1))
    assert UTC  # the module's clock is UTC


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "dp_stepp"}, "kind"),
        ({"run_id": None}, "run_id"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"epsilon_dataset_total": float("inf")}, "epsilon_dataset_total"),
        ({"delta": 1.0}, "delta"),
        ({"epsilon_requested": 3.0}, "epsilon_requested"),
        ({"created_at": "2026-03-02 09:00:07"}, "created_at"),
        ({"library_versions": {"opacus": 1}}, "library_versions"),
        ({"step": True}, "step"),
    ],
)
def test_invalid_rows_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        append(KAT_HEAD, KAT_FIELDS | change, KAT_KEY)
    assert info.value.field == field


def test_budget_rows_carry_no_run_fields() -> None:
    fields = {k: v for k, v in KAT_FIELDS.items() if k in {
        "tenant_id", "dataset_id", "delta", "accountant", "epsilon_dataset_total", "cap",
        "library_versions", "created_at",
    }}  # fmt: skip
    event = append(GENESIS, fields | {"kind": "budget_created"}, KAT_KEY)
    assert event.run_id is None and event.prev_link == GENESIS_LINK
    with pytest.raises(ConfigError) as info:
        append(GENESIS, fields | {"kind": "budget_changed", "step": 3}, KAT_KEY)
    assert info.value.field == "step"


def test_append_sets_the_chain_fields_itself_and_checks_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        append(KAT_HEAD, KAT_FIELDS | {"seq": 7}, KAT_KEY)
    assert info.value.field == "seq"
    for bad in (b"short", "a string key" * 4):
        with pytest.raises(ConfigError) as info:
            append(KAT_HEAD, KAT_FIELDS, bad)  # type: ignore[arg-type]
        assert info.value.field == "key"


# -------------------------------------------------------------------- tamper


@pytest.fixture(scope="module")
def chain() -> list[LedgerEvent]:
    """17 rows: creation, steps of two runs, a cap raise, more steps, a refusal."""
    ledger = new_ledger(cap=2.0, accountant="rdp")
    run_steps(ledger, [RunSpec("a", 1.0, 0.05, 4), RunSpec("b", 2.0, 0.05, 4)])
    raise_cap(ledger, 2.2, actor="admin", reason="more")
    run_steps(ledger, [RunSpec("c", 1.0, 0.05, 50)])
    assert {e.kind for e in ledger.events} == {
        "budget_created", "dp_step", "budget_changed", "step_refused",
    }  # fmt: skip
    assert verify_chain(ledger.events, KEY, expected_head=ledger.head).ok
    assert len(ledger.events) == 17
    return ledger.events


def rows(chain: list[LedgerEvent]) -> list[dict[str, object]]:
    return [e.to_row() for e in chain]


EDITS: dict[str, object] = {
    name: value for name, value in CHANGES.items() if name not in {"seq", "kind"}
} | {"link": "cd" * 32, "accountant": "prv"}  # the fixture's chain uses "rdp"


@pytest.mark.parametrize("name", sorted(EDITS))
def test_editing_any_field_of_a_row_names_that_row(chain: list[LedgerEvent], name: str) -> None:
    target = next(i for i, e in enumerate(chain) if e.kind == "dp_step" and i > 3)
    tampered = rows(chain)
    tampered[target][name] = EDITS[name]
    if name == "epsilon_requested":
        tampered[target]["kind"] = "step_refused"
    report = verify_chain(tampered, KEY)
    assert not report.ok
    assert report.first_broken_seq == chain[target].seq
    assert report.checked == target


def test_editing_the_kind_or_seq_of_a_row_is_detected(chain: list[LedgerEvent]) -> None:
    tampered = rows(chain)
    refusal = next(i for i, e in enumerate(chain) if e.kind == "step_refused")
    tampered[refusal]["kind"] = "dp_step"
    tampered[refusal]["epsilon_requested"] = None
    assert verify_chain(tampered, KEY).first_broken_seq == chain[refusal].seq
    tampered = rows(chain)
    tampered[5]["seq"] = 99
    assert verify_chain(tampered, KEY).first_broken_seq == chain[5].seq


def test_a_malformed_row_is_named(chain: list[LedgerEvent]) -> None:
    tampered = rows(chain)
    tampered[6]["sample_rate"] = "0.05"
    report = verify_chain(tampered, KEY)
    assert report.first_broken_seq == chain[6].seq
    assert "malformed" in (report.reason or "")


@pytest.mark.parametrize("index", [0, 5, 15])
def test_deleting_a_row_names_its_position(chain: list[LedgerEvent], index: int) -> None:
    tampered = chain[:index] + chain[index + 1 :]
    report = verify_chain(tampered, KEY, expected_head=ChainHead.after(chain[-1]))
    assert not report.ok
    assert report.first_broken_seq == chain[index].seq
    assert "deleted" in (report.reason or "")


def test_deleting_rows_at_the_end_needs_the_recorded_head(chain: list[LedgerEvent]) -> None:
    truncated = chain[:-2]
    assert verify_chain(truncated, KEY).ok  # a shorter chain is still a chain ...
    report = verify_chain(truncated, KEY, expected_head=ChainHead.after(chain[-1]))
    assert not report.ok  # ... which only the head kept elsewhere reveals
    assert report.first_broken_seq == chain[-2].seq


def test_swapping_two_rows_is_detected(chain: list[LedgerEvent]) -> None:
    swapped = list(chain)
    swapped[4], swapped[5] = swapped[5], swapped[4]
    assert verify_chain(swapped, KEY).first_broken_seq == chain[4].seq
    # Swapping contents but keeping the seq numbers in order (an UPDATE of seq).
    contents = rows(chain)
    contents[4]["seq"], contents[5]["seq"] = contents[5]["seq"], contents[4]["seq"]
    contents[4], contents[5] = contents[5], contents[4]
    assert verify_chain(contents, KEY).first_broken_seq == chain[4].seq


def test_inserting_a_row_is_detected(chain: list[LedgerEvent]) -> None:
    forged_fields = {
        k: v for k, v in chain[6].to_row().items() if k not in {"seq", "prev_link", "link"}
    }
    # Inserted with a renumbered tail, linked with a guessed key: its own link fails.
    forged = append(ChainHead.after(chain[5]), forged_fields, b"not the real key!" * 2)
    renumbered = [LedgerEvent.from_row(e.to_row() | {"seq": e.seq + 1}) for e in chain[6:]]
    report = verify_chain([*chain[:6], forged, *renumbered], KEY)
    assert report.first_broken_seq == forged.seq == chain[6].seq
    # Inserted as a duplicate seq: the chain breaks right there.
    report = verify_chain([*chain[:7], chain[6], *chain[7:]], KEY)
    assert report.first_broken_seq == chain[7].seq
    assert "duplicated" in (report.reason or "")


def test_the_wrong_key_fails_at_the_first_row(chain: list[LedgerEvent]) -> None:
    report = verify_chain(chain, bytes(32))
    assert (report.ok, report.first_broken_seq, report.checked) == (False, 1, 0)


def test_verification_can_continue_from_a_head(chain: list[LedgerEvent]) -> None:
    report = verify_chain(chain[7:], KEY, start=ChainHead.after(chain[6]))
    assert report.ok and report.checked == len(chain) - 7
    assert report.head == ChainHead.after(chain[-1])
