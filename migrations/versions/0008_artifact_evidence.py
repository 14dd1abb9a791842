"""Signed evidence bundles: ``artifacts.evidence``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:00:00.000000

The DSSE envelope (JSON text) signed when the checkpoint was saved
(:mod:`server.services.evidence`); null for artifacts saved before this revision and
for dataset shards. A plain ``ALTER TABLE ADD COLUMN``; downgrading drops it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("artifacts", sa.Column("evidence", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("artifacts", "evidence")
