"""Ledger format 3: ``privacy_audit`` rows (the outcome of an empirical privacy audit).

Revision ID: 0007
Revises: 0009 (main's head when this landed: 0006 → 0010 → 0009 → 0007 → 0008)
Create Date: 2026-12-07 10:00:00.000000

Adds the format-3 columns of ``ledger_events`` (:mod:`tensafe.audit.ledger`):
``audit_method``, ``audit_canaries``, ``audit_guesses``, ``audit_correct``,
``audit_confidence``, ``epsilon_lower_bound``, ``audit_scores`` (JSON: every canary's
score) and ``audit_test_fault``; all nullable and null on every other kind of row.
Rows written before keep their links: null format-3 fields are left out of the
canonical bytes. Plain ``ALTER TABLE ADD COLUMN`` (never a batch table copy, which
would trip the append-only triggers on SQLite). The ``dp_steps`` view is unchanged
(it selects noisy-step kinds only). Downgrading is refused once a ``privacy_audit``
row exists: its link covers these columns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("audit_method", sa.String(length=32)),
    ("audit_canaries", sa.BigInteger()),
    ("audit_guesses", sa.BigInteger()),
    ("audit_correct", sa.BigInteger()),
    ("audit_confidence", sa.Double()),
    ("epsilon_lower_bound", sa.Double()),
    ("audit_scores", sa.JSON()),
    ("audit_test_fault", sa.String(length=16)),
)


def upgrade() -> None:
    for name, type_ in _COLUMNS:
        op.add_column("ledger_events", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    used = (
        op.get_bind()
        .execute(sa.text("SELECT COUNT(*) FROM ledger_events WHERE kind = 'privacy_audit'"))
        .scalar_one()
    )
    if used:
        raise RuntimeError(
            "cannot downgrade below 0007: privacy_audit rows use format-3 fields their links cover"
        )
    for name, _ in reversed(_COLUMNS):
        op.drop_column("ledger_events", name)
