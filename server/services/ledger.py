"""The privacy ledger in SQL: its HMAC key, appending a row, and reading rows back.

``ledger_events`` is the one record of every noisy step, refusal and budget change
(the ``dp_steps`` view of migration 0004 is derived from it). Rows form one
HMAC-SHA256 chain per (tenant, dataset) (:mod:`tensafe.audit.ledger`); the head of
each chain is kept on its ``privacy_budgets`` row and moves in the transaction that
appends, under that row's lock (:func:`append_event`).

The HMAC key is derived (HKDF-SHA256) from a dedicated 256-bit secret kept by the
key provider: stored only wrapped by the KEK (the ``tenant_keys`` row of the reserved
owner ``__ledger__``), never in clear in the database.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.models import LedgerEventRow, PrivacyBudgetRow, utcnow
from tensafe.artifacts import TenantKeyring
from tensafe.audit import ChainHead, LedgerEvent, append
from tensafe.privacy.budget import StepCharge

#: The reserved key owner whose wrapped secret the ledger HMAC key is derived from.
LEDGER_KEY_OWNER = "__ledger__"
_HKDF_INFO = b"tensafe ledger hmac-sha256 v1"

#: Row kinds that are noisy steps of a run: its own, and those a ``load_state`` carried in.
NOISY_KINDS = ("dp_step", "dp_step_carried")


def derive_ledger_key(keyring: TenantKeyring) -> bytes:
    """The ledger's HMAC key: HKDF-SHA256 of the KEK-wrapped ``__ledger__`` secret
    (version 1, created on first use)."""
    keyring.current_key(LEDGER_KEY_OWNER)
    material = keyring.export_tenant_key(LEDGER_KEY_OWNER, version=1).material
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(material)


def event_mapping(row: LedgerEventRow) -> dict[str, object]:
    """Every :class:`LedgerEvent` field of a stored row, by name."""
    return {name: getattr(row, name) for name in LedgerEvent.__dataclass_fields__}


def event_of(row: LedgerEventRow) -> LedgerEvent:
    """The :class:`LedgerEvent` a stored row holds (raises ConfigError if malformed)."""
    return LedgerEvent.from_row(event_mapping(row))


def dataset_rows(session: Session, tenant_id: str, dataset_id: str) -> list[LedgerEventRow]:
    """One dataset's chain, in ``seq`` order."""
    return list(
        session.scalars(
            select(LedgerEventRow)
            .where(LedgerEventRow.tenant_id == tenant_id, LedgerEventRow.dataset_id == dataset_id)
            .order_by(LedgerEventRow.seq, LedgerEventRow.id)
        )
    )


def run_noisy_rows(session: Session, run_id: str) -> list[LedgerEventRow]:
    """The run's noisy steps, own (``dp_step``) and carried (``dp_step_carried``), in
    ``seq`` order: its whole privacy history. A run's rows all lie in the chain of
    the one dataset it is charged to."""
    return list(
        session.scalars(
            select(LedgerEventRow)
            .where(LedgerEventRow.run_id == run_id, LedgerEventRow.kind.in_(NOISY_KINDS))
            .order_by(LedgerEventRow.seq, LedgerEventRow.id)
        )
    )


def charge_fields(charge: StepCharge) -> dict[str, object]:
    """The fields of a ``dp_step`` row that a budget charge fixes: its kind, the run's
    step number, the step's, run's and dataset's (conservative) ε and the cap."""
    return {
        "kind": "dp_step",
        "step": charge.step,
        "epsilon_step": charge.epsilon_step,
        "epsilon_run_total": charge.epsilon_run_total,
        "epsilon_dataset_total": charge.epsilon_dataset_total,
        "cap": charge.cap,
    }


def append_event(
    session: Session, budget: PrivacyBudgetRow, fields: Mapping[str, object], key: bytes
) -> LedgerEvent:
    """Append the next row of ``budget``'s chain and move its head (flushed, in the
    caller's transaction). The caller holds the budget row's lock.

    Raises:
        ConfigError: a field is invalid for the row's kind (``field`` names it).
    """
    event = append(ChainHead(seq=budget.head_seq, link=budget.head_link), fields, key)
    session.add(LedgerEventRow(**event.to_row()))
    budget.head_seq = event.seq
    budget.head_link = event.link
    budget.updated_at = utcnow()
    session.flush()
    return event


__all__ = [
    "LEDGER_KEY_OWNER",
    "NOISY_KINDS",
    "append_event",
    "charge_fields",
    "dataset_rows",
    "derive_ledger_key",
    "event_mapping",
    "event_of",
    "run_noisy_rows",
]
