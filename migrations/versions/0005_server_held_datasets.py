"""Server-held datasets: ``datasets`` (one row per immutable version),
``dataset_shards`` (where each sealed shard lives), and ``training_runs.pending_draw``
(the batch the server drew for a run, until one ``optim_step`` consumes it); the ledger's
step rows gain ``sampling`` and ``privacy_unit`` and its budget rows ``sampling_policy``
(format 2, nullable: older links keep); ``privacy_budgets.sampling_policy`` (existing
budgets keep today's behaviour: ``any``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("training_runs", sa.Column("pending_draw", sa.JSON(), nullable=True))
    op.add_column("ledger_events", sa.Column("sampling", sa.String(16), nullable=True))
    op.add_column("ledger_events", sa.Column("privacy_unit", sa.String(16), nullable=True))
    op.add_column("ledger_events", sa.Column("sampling_policy", sa.String(16), nullable=True))
    op.add_column(
        "privacy_budgets",
        sa.Column("sampling_policy", sa.String(16), nullable=False, server_default="any"),
    )
    op.create_table(
        "datasets",
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("privacy_unit", sa.String(length=16), nullable=False),
        sa.Column("num_records", sa.BigInteger(), nullable=False),
        sa.Column("num_units", sa.BigInteger(), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=True),
        sa.Column("commitment", sa.String(length=64), nullable=True),
        sa.Column("key_owner", sa.String(length=256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.tenant_id"],
            name=op.f("fk_datasets_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dataset_id", name=op.f("pk_datasets")),
        sa.UniqueConstraint(
            "tenant_id", "name", "version", name=op.f("uq_datasets_tenant_id_name_version")
        ),
    )
    op.create_index(op.f("ix_datasets_tenant_id"), "datasets", ["tenant_id"], unique=False)
    op.create_index(
        "ix_datasets_tenant_id_commitment", "datasets", ["tenant_id", "commitment"], unique=False
    )
    op.create_table(
        "dataset_shards",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("first_record", sa.BigInteger(), nullable=False),
        sa.Column("num_records", sa.BigInteger(), nullable=False),
        sa.Column("artifact_id", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=500), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.dataset_id"],
            name=op.f("fk_dataset_shards_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_shards")),
        sa.UniqueConstraint("dataset_id", "index", name=op.f("uq_dataset_shards_dataset_id_index")),
    )
    op.create_index(
        op.f("ix_dataset_shards_dataset_id"), "dataset_shards", ["dataset_id"], unique=False
    )


def downgrade() -> None:
    used = op.get_bind().execute(
        sa.text(
            "SELECT COUNT(*) FROM ledger_events WHERE sampling IS NOT NULL "
            "OR privacy_unit IS NOT NULL OR sampling_policy IS NOT NULL"
        )
    ).scalar_one()
    if used:
        raise RuntimeError(
            "cannot downgrade below 0005: ledger rows use format-2 fields their links cover"
        )
    op.drop_index(op.f("ix_dataset_shards_dataset_id"), table_name="dataset_shards")
    op.drop_table("dataset_shards")
    op.drop_index("ix_datasets_tenant_id_commitment", table_name="datasets")
    op.drop_index(op.f("ix_datasets_tenant_id"), table_name="datasets")
    op.drop_table("datasets")
    op.drop_column("privacy_budgets", "sampling_policy")
    op.drop_column("ledger_events", "sampling_policy")
    op.drop_column("ledger_events", "privacy_unit")
    op.drop_column("ledger_events", "sampling")
    op.drop_column("training_runs", "pending_draw")
