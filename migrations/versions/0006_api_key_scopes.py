"""API keys get scopes: ``train``, ``privacy-officer``, ``admin``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 10:00:00.000000

``api_keys.scopes`` holds a key's scopes, space-separated
(:mod:`server.services.scopes`). Keys issued before this revision become
``train`` only: they keep training, pulling artifacts and reading budgets and audit
reports, but can no longer create budgets or change caps over HTTP — that is what
the scopes are for, and granting ``privacy-officer`` to every old key would keep
the hole open without anyone noticing. The operator issues a ``privacy-officer``
key where one is needed (``tensafe admin create-key TENANT --scope privacy-officer``)
and the admin CLI keeps managing budgets as before; the migration logs a warning
saying so when it narrows active keys.

A plain ``ALTER TABLE ADD COLUMN`` with a constant default (never a batch table
copy). Downgrading drops the column: every key then may do everything again, as
before this revision.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("tensafe.server.migration")


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("scopes", sa.String(length=200), nullable=False, server_default="train"),
    )
    active = (
        op.get_bind()
        .execute(sa.text("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL"))
        .scalar_one()
    )
    if active:
        log.warning(
            "migration 0006: %d existing API key(s) now have scope 'train' only: they keep "
            "training but can no longer create privacy budgets or change caps; issue a "
            "privacy-officer key with 'tensafe admin create-key TENANT_ID --scope "
            "privacy-officer' (see docs/operations.md, 'Roles')",
            active,
        )


def downgrade() -> None:
    op.drop_column("api_keys", "scopes")
