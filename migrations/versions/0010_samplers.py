"""Samplers: what a tenant samples from (a run's weights, a checkpoint, a base model).

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-04 19:00:00.000000

``samplers`` keeps one row per sampler a tenant created (``POST /v1/samplers``): its
source and what it names. Samples themselves are not stored. A sampler of a run is
deleted with the run; one of a checkpoint survives the checkpoint's deletion and then
answers 404 for it. Downgrading drops the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "samplers",
        sa.Column("sampler_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("base_model", sa.String(length=500), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("artifact_id", sa.String(length=64), nullable=True),
        sa.Column("model_path", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.tenant_id"],
            name=op.f("fk_samplers_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["training_runs.run_id"],
            name=op.f("fk_samplers_run_id_training_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sampler_id", name=op.f("pk_samplers")),
    )
    op.create_index(op.f("ix_samplers_tenant_id"), "samplers", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_samplers_tenant_id"), table_name="samplers")
    op.drop_table("samplers")
