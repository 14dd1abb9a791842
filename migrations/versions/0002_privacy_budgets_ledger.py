"""Privacy budgets per (tenant, dataset) and the append-only, HMAC-chained ledger.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:00:00.000000

``ledger_events`` refuses UPDATE and DELETE with triggers on PostgreSQL (plpgsql
``RAISE EXCEPTION``) and SQLite (``RAISE(ABORT, ...)``); the ORM refuses them too
(``server.db.models._refuse_ledger_changes``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MESSAGE = "ledger_events is append-only: UPDATE and DELETE are refused"


def upgrade() -> None:
    op.create_table(
        "privacy_budgets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.String(length=200), nullable=False),
        sa.Column("epsilon_cap", sa.Double(), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("accountant", sa.String(length=16), nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_link", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_budgets")),
        sa.UniqueConstraint(
            "tenant_id", "dataset_id", name=op.f("uq_privacy_budgets_tenant_id_dataset_id")
        ),
    )
    op.create_index(
        op.f("ix_privacy_budgets_tenant_id"), "privacy_budgets", ["tenant_id"], unique=False
    )
    op.create_table(
        "ledger_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("noise_multiplier", sa.Double(), nullable=True),
        sa.Column("sample_rate", sa.Double(), nullable=True),
        sa.Column("max_grad_norm", sa.Double(), nullable=True),
        sa.Column("dataset_size", sa.BigInteger(), nullable=True),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("accountant", sa.String(length=16), nullable=False),
        sa.Column("epsilon_step", sa.Double(), nullable=True),
        sa.Column("epsilon_run_total", sa.Double(), nullable=True),
        sa.Column("epsilon_dataset_total", sa.Double(), nullable=False),
        sa.Column("epsilon_requested", sa.Double(), nullable=True),
        sa.Column("cap", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("library_versions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("prev_link", sa.String(length=64), nullable=False),
        sa.Column("link", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_events")),
        sa.UniqueConstraint(
            "tenant_id", "dataset_id", "seq", name=op.f("uq_ledger_events_tenant_id_dataset_id_seq")
        ),
    )
    op.create_index(
        "ix_ledger_events_tenant_id_dataset_id_run_id",
        "ledger_events",
        ["tenant_id", "dataset_id", "run_id"],
        unique=False,
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION ledger_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{_MESSAGE}'; END; $$"
        )
        op.execute(
            "CREATE TRIGGER ledger_events_no_update BEFORE UPDATE OR DELETE ON ledger_events "
            "FOR EACH ROW EXECUTE FUNCTION ledger_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER ledger_events_no_truncate BEFORE TRUNCATE ON ledger_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_append_only()"
        )
    elif dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER ledger_events_no_{action.lower()} BEFORE {action} "
                f"ON ledger_events BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ledger_events_no_truncate ON ledger_events")
        op.execute("DROP TRIGGER IF EXISTS ledger_events_no_update ON ledger_events")
        op.execute("DROP FUNCTION IF EXISTS ledger_events_append_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS ledger_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS ledger_events_no_delete")
    op.drop_index("ix_ledger_events_tenant_id_dataset_id_run_id", table_name="ledger_events")
    op.drop_table("ledger_events")
    op.drop_index(op.f("ix_privacy_budgets_tenant_id"), table_name="privacy_budgets")
    op.drop_table("privacy_budgets")
