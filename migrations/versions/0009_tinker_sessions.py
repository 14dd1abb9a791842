"""Sessions of clients speaking the Tinker protocol (``/api/v1``).

Revision ID: 0009
Revises: 0010
Create Date: 2026-12-04 19:00:00.000000

``tinker_sessions`` holds one row per ``create_session`` of an official ``tinker``
client: its tenant, tags, user metadata (where ``tensafe.dp.*`` settings may be given
for the session's models) and heartbeat. A session's models are ordinary training
runs; nothing else changes. Downgrading drops the table (the runs stay).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tinker_sessions",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("user_metadata", sa.JSON(), nullable=False),
        sa.Column("sdk_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.tenant_id"],
            name=op.f("fk_tinker_sessions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_tinker_sessions")),
    )
    op.create_index(
        op.f("ix_tinker_sessions_tenant_id"), "tinker_sessions", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_tinker_sessions_tenant_id"), table_name="tinker_sessions")
    op.drop_table("tinker_sessions")
