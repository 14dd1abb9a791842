"""Per-tenant DP policies, set by the privacy officer.

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-04 21:30:00.000000

``dp_policies`` keeps at most one row per tenant (``PUT /v1/dp_policy``): the dataset
whose budget new DP runs are charged to, σ or a target ε (+ planned steps), the
clipping norm C, an optional δ, and whether clients may tighten those settings. Runs
read it when they are created; the ledger is unchanged. Downgrading drops the table
(runs keep the settings they were created with).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dp_policies",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.String(length=200), nullable=False),
        sa.Column("noise_multiplier", sa.Double(), nullable=True),
        sa.Column("target_epsilon", sa.Double(), nullable=True),
        sa.Column("planned_steps", sa.BigInteger(), nullable=True),
        sa.Column("target_delta", sa.Double(), nullable=True),
        sa.Column("max_grad_norm", sa.Double(), nullable=False),
        sa.Column("client_overrides", sa.String(length=16), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.tenant_id"],
            name=op.f("fk_dp_policies_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_dp_policies")),
    )


def downgrade() -> None:
    op.drop_table("dp_policies")
