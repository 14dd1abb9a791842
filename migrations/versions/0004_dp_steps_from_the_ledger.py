"""The ledger is the one record of noisy steps: ``dp_steps`` becomes a view over it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 15:30:00.000000

* ``ledger_events`` gains ``run_delta`` and ``run_accountant`` (ledger format 2,
  nullable): the δ and accountant of ``epsilon_run_exact`` — the run's own, which may
  differ from the budget's. Null fields stay out of the canonical bytes, so older
  links are unchanged.
* The ``dp_steps`` table is replaced by a read-only **view** of the ``dp_step`` and
  ``dp_step_carried`` rows of ``ledger_events``, with the table's columns and
  meaning: ``seq`` numbers a run's noisy steps 1, 2, 3, …; ``origin_seq`` is that
  number of the original step in its run (the ledger itself names it by its chain
  ``seq``); ``delta``/``accountant`` are the run's; ``epsilon`` is the run's exact ε
  after an own step (null on carried rows, as before).
* Rows the table held are not lost: when it is not empty it is renamed
  ``dp_steps_legacy``, and the server carries those rows into the ledger on its next
  start (or ``tensafe db upgrade``) — appending rows needs the ledger key, which a
  migration does not hold — then drops it
  (:func:`server.services.legacy_dp_steps.carry_over_legacy_dp_steps`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOISY = "('dp_step', 'dp_step_carried')"

DP_STEPS_VIEW = f"""
CREATE VIEW dp_steps AS
SELECT
    l.id AS id,
    l.run_id AS run_id,
    l.tenant_id AS tenant_id,
    l.dataset_id AS dataset_id,
    l.seq AS ledger_seq,
    ROW_NUMBER() OVER (PARTITION BY l.run_id ORDER BY l.seq, l.id) AS seq,
    l.kind AS kind,
    l.model_step AS model_step,
    l.origin_run_id AS origin_run_id,
    CASE WHEN l.origin_run_id IS NULL THEN NULL ELSE (
        SELECT COUNT(*) FROM ledger_events o
        WHERE o.run_id = l.origin_run_id AND o.kind IN {NOISY} AND o.seq <= l.origin_seq
    ) END AS origin_seq,
    l.noise_multiplier AS noise_multiplier,
    l.sample_rate AS sample_rate,
    l.max_grad_norm AS max_grad_norm,
    l.dataset_size AS dataset_size,
    l.sample_rate * l.dataset_size AS expected_batch_size,
    COALESCE(l.run_delta, l.delta) AS delta,
    COALESCE(l.run_accountant, l.accountant) AS accountant,
    CASE WHEN l.kind = 'dp_step' THEN l.epsilon_run_exact ELSE NULL END AS epsilon,
    l.library_versions AS library_versions,
    l.created_at AS created_at
FROM ledger_events l
WHERE l.kind IN {NOISY} AND l.run_id IS NOT NULL
"""


def upgrade() -> None:
    op.add_column("ledger_events", sa.Column("run_delta", sa.Double(), nullable=True))
    op.add_column("ledger_events", sa.Column("run_accountant", sa.String(16), nullable=True))
    conn = op.get_bind()
    held = conn.execute(sa.text("SELECT COUNT(*) FROM dp_steps")).scalar_one()
    if held:
        op.rename_table("dp_steps", "dp_steps_legacy")
    else:
        op.drop_table("dp_steps")
    op.execute(DP_STEPS_VIEW)


def downgrade() -> None:
    conn = op.get_bind()
    noisy = conn.execute(
        sa.text(f"SELECT COUNT(*) FROM ledger_events WHERE kind IN {NOISY}")
    ).scalar_one()
    if noisy:
        raise RuntimeError(
            "cannot downgrade below 0004: the ledger is the only record of the noisy steps"
        )
    op.execute("DROP VIEW dp_steps")
    op.create_table(
        "dp_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("model_step", sa.Integer(), nullable=True),
        sa.Column("future_id", sa.String(length=64), nullable=True),
        sa.Column("origin_run_id", sa.String(length=64), nullable=True),
        sa.Column("origin_seq", sa.Integer(), nullable=True),
        sa.Column("noise_multiplier", sa.Double(), nullable=False),
        sa.Column("sample_rate", sa.Double(), nullable=False),
        sa.Column("max_grad_norm", sa.Double(), nullable=False),
        sa.Column("dataset_size", sa.BigInteger(), nullable=False),
        sa.Column("expected_batch_size", sa.Double(), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("accountant", sa.String(length=16), nullable=False),
        sa.Column("epsilon", sa.Double(), nullable=True),
        sa.Column("dataset_id", sa.String(length=200), nullable=True),
        sa.Column("library_versions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["training_runs.run_id"],
            name=op.f("fk_dp_steps_run_id_training_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.tenant_id"],
            name=op.f("fk_dp_steps_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dp_steps")),
        sa.UniqueConstraint(
            "run_id",
            "origin_run_id",
            "origin_seq",
            name=op.f("uq_dp_steps_run_id_origin_run_id_origin_seq"),
        ),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_dp_steps_run_id_seq")),
    )
    op.create_index(op.f("ix_dp_steps_run_id"), "dp_steps", ["run_id"], unique=False)
    op.create_index(op.f("ix_dp_steps_tenant_id"), "dp_steps", ["tenant_id"], unique=False)
    op.drop_column("ledger_events", "run_accountant")
    op.drop_column("ledger_events", "run_delta")
