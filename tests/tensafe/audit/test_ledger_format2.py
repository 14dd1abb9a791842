"""Ledger format 2: model step, exact run ε and carried steps — backward compatible."""

from __future__ import annotations

import json

import pytest

from tensafe.audit.ledger import (
    FORMAT_2_FIELDS,
    GENESIS,
    OPTIONAL_FIELDS,
    ChainHead,
    LedgerEvent,
    append,
    canonical_bytes,
    compute_link,
    verify_chain,
)
from tensafe.errors import ConfigError
from tests.tensafe.audit.test_ledger import KAT_FIELDS, KAT_HEAD, KAT_KEY, KAT_LINK

# Links of format-1 rows, computed with the code before format 2 existed (commit e6ee2d4).
REFUSAL_FIELDS = KAT_FIELDS | {"kind": "step_refused", "epsilon_requested": 8.5, "step": 43}
REFUSAL_LINK = "187684857e4535529916a91de5af754bc1bcc45868f7dc847ce609000f179132"
BUDGET_FIELDS = {
    k: v
    for k, v in KAT_FIELDS.items()
    if k in {"tenant_id", "dataset_id", "delta", "accountant", "epsilon_dataset_total", "cap",
             "library_versions", "created_at"}
} | {"kind": "budget_changed", "actor": "admin", "reason": "r"}  # fmt: skip
BUDGET_LINK = "c4783cb8889f8a114f16fe5be45fa4ca3becc9df3a1a4e95ae183f7d75972b3d"

CARRIED_FIELDS: dict[str, object] = {
    "kind": "dp_step_carried",
    "tenant_id": "t",
    "dataset_id": "d",
    "run_id": "target",
    "origin_run_id": "source",
    "origin_seq": 12,
    "noise_multiplier": 1.1,
    "sample_rate": 0.004,
    "max_grad_norm": 1.0,
    "dataset_size": 50000,
    "delta": 1e-05,
    "accountant": "prv",
    "epsilon_dataset_total": 2.5,
    "cap": 8.0,
    "library_versions": {},
    "created_at": "2026-03-02T09:00:07.000000Z",
}


@pytest.mark.parametrize(
    ("fields", "head", "link"),
    [
        (KAT_FIELDS, KAT_HEAD, KAT_LINK),
        (REFUSAL_FIELDS, KAT_HEAD, REFUSAL_LINK),
        (BUDGET_FIELDS, GENESIS, BUDGET_LINK),
    ],
)
def test_format_1_rows_keep_their_links(
    fields: dict[str, object], head: ChainHead, link: str
) -> None:
    event = append(head, fields, KAT_KEY)
    assert event.link == link
    assert all(getattr(event, name) is None for name in FORMAT_2_FIELDS)
    # A stored format-1 row has no format-2 keys at all: it still reads and verifies.
    stored = {k: v for k, v in event.to_row().items() if k not in FORMAT_2_FIELDS}
    assert verify_chain([stored], KAT_KEY, start=head).ok


def test_canonical_bytes_leave_out_null_format_2_fields_only() -> None:
    old = append(KAT_HEAD, KAT_FIELDS, KAT_KEY)
    payload = json.loads(canonical_bytes(old))
    assert not set(FORMAT_2_FIELDS) & set(payload)
    assert payload["actor"] is None and payload["epsilon_requested"] is None  # others stay
    new = append(KAT_HEAD, KAT_FIELDS | {"model_step": 40, "epsilon_run_exact": 1.2}, KAT_KEY)
    unset = {name for name in OPTIONAL_FIELDS if getattr(new, name) is None}  # format 3 too
    expected = {k: v for k, v in new.to_row().items() if k != "link" and k not in unset}
    assert canonical_bytes(new) == json.dumps(
        expected, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")
    assert b'"epsilon_run_exact":1.2' in canonical_bytes(new)
    assert b'"model_step":40' in canonical_bytes(new)
    assert new.link != KAT_LINK


FORMAT_2_EDITS: list[tuple[dict[str, object], str, object]] = [
    (KAT_FIELDS | {"model_step": 40, "epsilon_run_exact": 1.2}, "model_step", 41),
    (KAT_FIELDS | {"model_step": 40, "epsilon_run_exact": 1.2}, "model_step", None),
    (KAT_FIELDS | {"model_step": 40, "epsilon_run_exact": 1.2}, "epsilon_run_exact", 1.1),
    (KAT_FIELDS | {"model_step": 40, "epsilon_run_exact": 1.2}, "epsilon_run_exact", None),
    (KAT_FIELDS, "model_step", 1),  # set on a format-1 row
    (KAT_FIELDS, "epsilon_run_exact", 0.5),
    (KAT_FIELDS | {"epsilon_run_exact": 1.2, "run_delta": 1e-6}, "run_delta", 2e-6),
    (KAT_FIELDS | {"epsilon_run_exact": 1.2, "run_delta": 1e-6}, "run_delta", None),
    (KAT_FIELDS | {"epsilon_run_exact": 1.2, "run_accountant": "rdp"}, "run_accountant", "prv"),
    (CARRIED_FIELDS, "origin_run_id", "other"),
    (CARRIED_FIELDS, "origin_seq", 13),
    (CARRIED_FIELDS, "run_id", "source"),
]


@pytest.mark.parametrize(("fields", "name", "value"), FORMAT_2_EDITS)
def test_editing_a_format_2_field_breaks_the_link(
    fields: dict[str, object], name: str, value: object
) -> None:
    first = append(GENESIS, BUDGET_FIELDS, KAT_KEY)
    second = append(ChainHead.after(first), fields, KAT_KEY)
    third = append(ChainHead.after(second), BUDGET_FIELDS, KAT_KEY)
    assert verify_chain([first, second, third], KAT_KEY).ok
    tampered = second.to_row() | {name: value}
    assert compute_link(KAT_KEY, first.link, LedgerEvent.from_row(tampered)) != second.link
    report = verify_chain([first.to_row(), tampered, third.to_row()], KAT_KEY)
    assert not report.ok and report.first_broken_seq == 2


def test_a_carried_row() -> None:
    event = append(GENESIS, CARRIED_FIELDS, KAT_KEY)
    assert (event.step, event.epsilon_step, event.epsilon_run_total) == (None, None, None)
    with_figures = CARRIED_FIELDS | {"epsilon_run_total": 0.0, "epsilon_run_exact": 1.5,
                                     "model_step": 12}  # fmt: skip
    assert append(GENESIS, with_figures, KAT_KEY).epsilon_run_exact == 1.5
    assert LedgerEvent.from_row(json.loads(json.dumps(event.to_row()))) == event


@pytest.mark.parametrize(
    ("fields", "change", "field"),
    [
        (CARRIED_FIELDS, {"origin_run_id": None}, "origin_run_id"),
        (CARRIED_FIELDS, {"origin_run_id": ""}, "origin_run_id"),
        (CARRIED_FIELDS, {"origin_seq": None}, "origin_seq"),
        (CARRIED_FIELDS, {"origin_seq": 0}, "origin_seq"),
        (CARRIED_FIELDS, {"run_id": None}, "run_id"),
        (CARRIED_FIELDS, {"sample_rate": None}, "sample_rate"),
        (CARRIED_FIELDS, {"step": 3}, "step"),
        (CARRIED_FIELDS, {"epsilon_step": 0.1}, "epsilon_step"),
        (CARRIED_FIELDS, {"epsilon_requested": 0.1}, "epsilon_requested"),
        (CARRIED_FIELDS, {"model_step": 0}, "model_step"),
        (KAT_FIELDS, {"origin_run_id": "x"}, "origin_run_id"),
        (KAT_FIELDS, {"origin_seq": 3}, "origin_seq"),
        (REFUSAL_FIELDS, {"origin_seq": 3}, "origin_seq"),
        (KAT_FIELDS, {"model_step": True}, "model_step"),
        (KAT_FIELDS, {"model_step": 0}, "model_step"),
        (KAT_FIELDS, {"epsilon_run_exact": float("nan")}, "epsilon_run_exact"),
        (KAT_FIELDS, {"epsilon_run_exact": -1.0}, "epsilon_run_exact"),
        (BUDGET_FIELDS, {"model_step": 3}, "model_step"),
        (BUDGET_FIELDS, {"epsilon_run_exact": 1.0}, "epsilon_run_exact"),
        (BUDGET_FIELDS, {"origin_seq": 1}, "origin_seq"),
        (KAT_FIELDS, {"run_delta": 1e-6}, "run_delta"),  # without epsilon_run_exact
        (KAT_FIELDS, {"run_accountant": "prv"}, "run_accountant"),
        (KAT_FIELDS, {"epsilon_run_exact": 1.0, "run_delta": 1.0}, "run_delta"),
        (KAT_FIELDS, {"epsilon_run_exact": 1.0, "run_delta": 0.0}, "run_delta"),
        (KAT_FIELDS, {"epsilon_run_exact": 1.0, "run_accountant": "gdp"}, "run_accountant"),
        (BUDGET_FIELDS, {"run_delta": 1e-6}, "run_delta"),
    ],
)
def test_invalid_format_2_fields_are_named(
    fields: dict[str, object], change: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        append(GENESIS, fields | change, KAT_KEY)
    assert info.value.field == field


def test_an_infinite_exact_epsilon_is_allowed_like_epsilon_step() -> None:
    event = append(GENESIS, KAT_FIELDS | {"epsilon_run_exact": float("inf")}, KAT_KEY)
    assert b'"epsilon_run_exact":Infinity' in canonical_bytes(event)


def test_run_delta_and_accountant_qualify_the_exact_epsilon() -> None:
    fields = KAT_FIELDS | {"epsilon_run_exact": 1.25, "run_delta": 1e-6, "run_accountant": "rdp"}
    event = append(GENESIS, fields, KAT_KEY)
    payload = json.loads(canonical_bytes(event))
    assert (payload["run_delta"], payload["run_accountant"]) == (1e-6, "rdp")
    assert b'"run_delta":1e-06' in canonical_bytes(event)
    assert verify_chain([event.to_row()], KAT_KEY).ok


def test_the_verifier_in_the_audit_guide_checks_format_2_rows() -> None:
    """docs/audit.md's dozen-line independent verifier is true for rows with and
    without format-2 fields."""
    from pathlib import Path

    guide = (Path(__file__).parents[3] / "docs" / "audit.md").read_text(encoding="utf-8")
    code = guide.split("An independent verifier", 1)[1].split("```python", 1)[1].split("```")[0]
    namespace: dict[str, object] = {}
    exec(code, namespace)  # the documented snippet itself
    verify = namespace["verify"]
    first = append(GENESIS, BUDGET_FIELDS, KAT_KEY)
    exact = {"epsilon_run_exact": 1.2, "run_delta": 1e-6, "run_accountant": "prv", "model_step": 3}
    second = append(ChainHead.after(first), KAT_FIELDS | exact, KAT_KEY)
    rows = [first.to_row(), second.to_row()]
    assert verify(rows, KAT_KEY) == "ok"  # type: ignore[operator]
    rows[1] = rows[1] | {"run_delta": 2e-6}
    assert verify(rows, KAT_KEY) == "broken at seq 2"  # type: ignore[operator]
