"""Ledger format 2: the per-run fields a noisy step's ledger row can carry.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 21:10:00.000000

``model_step``, ``epsilon_run_exact`` (the run's exact ε, what the client is told),
``origin_run_id``/``origin_seq`` (a step carried into a run by ``load_state``, kind
``dp_step_carried``); all nullable. Rows written before keep them null and their
links unchanged: null format-2 fields are left out of the canonical bytes
(:mod:`tensafe.audit.ledger`). Plain ``ALTER TABLE ADD COLUMN`` (never a batch table
copy, which would trip the append-only triggers on SQLite).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("model_step", sa.BigInteger()),
    ("epsilon_run_exact", sa.Double()),
    ("origin_run_id", sa.String(length=64)),
    ("origin_seq", sa.BigInteger()),
)


def upgrade() -> None:
    for name, type_ in _COLUMNS:
        op.add_column("ledger_events", sa.Column(name, type_, nullable=True))
    op.create_index("ix_ledger_events_run_id", "ledger_events", ["run_id"], unique=False)


def downgrade() -> None:
    conn = op.get_bind()
    used = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM ledger_events WHERE model_step IS NOT NULL "
            "OR epsilon_run_exact IS NOT NULL OR origin_run_id IS NOT NULL"
        )
    ).scalar_one()
    if used:
        raise RuntimeError(
            "cannot downgrade below 0003: ledger rows use format-2 fields their links cover"
        )
    op.drop_index("ix_ledger_events_run_id", table_name="ledger_events")
    for name, _ in reversed(_COLUMNS):
        op.drop_column("ledger_events", name)
