"""Initial schema: tenants, API keys, wrapped tenant keys, runs, operations, artifacts, dp_steps.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 03:46:41.756575
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('tenant_keys',
    sa.Column('tenant_id', sa.String(length=256), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('record', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_tenant_keys'))
    )
    op.create_table('tenants',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_tenants')),
    sa.UniqueConstraint('name', name=op.f('uq_tenants_name'))
    )
    op.create_table('api_keys',
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('hash_scheme', sa.String(length=32), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.tenant_id'], name=op.f('fk_api_keys_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key_id', name=op.f('pk_api_keys'))
    )
    op.create_index(op.f('ix_api_keys_tenant_id'), 'api_keys', ['tenant_id'], unique=False)

    op.create_table('training_runs',
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('model_ref', sa.String(length=500), nullable=False),
    sa.Column('dp_enabled', sa.Boolean(), nullable=False),
    sa.Column('model_name', sa.String(length=500), nullable=True),
    sa.Column('arch', sa.String(length=100), nullable=True),
    sa.Column('vocab_size', sa.Integer(), nullable=True),
    sa.Column('trainable_params', sa.BigInteger(), nullable=True),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('pending_examples', sa.Integer(), nullable=False),
    sa.Column('next_seq', sa.Integer(), nullable=False),
    sa.Column('last_checkpoint_artifact_id', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.tenant_id'], name=op.f('fk_training_runs_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_training_runs')),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name=op.f('uq_training_runs_tenant_id_idempotency_key'))
    )
    op.create_index(op.f('ix_training_runs_tenant_id'), 'training_runs', ['tenant_id'], unique=False)

    op.create_table('artifacts',
    sa.Column('artifact_id', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('path', sa.String(length=300), nullable=False),
    sa.Column('storage_key', sa.String(length=500), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('dp_seq', sa.Integer(), nullable=False),
    sa.Column('base_model', sa.String(length=500), nullable=False),
    sa.Column('shape_signature', sa.String(length=64), nullable=False),
    sa.Column('include_optimizer', sa.Boolean(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=False),
    sa.Column('future_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.run_id'], name=op.f('fk_artifacts_run_id_training_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.tenant_id'], name=op.f('fk_artifacts_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('artifact_id', name=op.f('pk_artifacts')),
    sa.UniqueConstraint('path', name=op.f('uq_artifacts_path'))
    )
    op.create_index(op.f('ix_artifacts_expires_at'), 'artifacts', ['expires_at'], unique=False)
    op.create_index(op.f('ix_artifacts_run_id'), 'artifacts', ['run_id'], unique=False)
    op.create_index(op.f('ix_artifacts_tenant_id'), 'artifacts', ['tenant_id'], unique=False)

    op.create_table('dp_steps',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('model_step', sa.Integer(), nullable=True),
    sa.Column('future_id', sa.String(length=64), nullable=True),
    sa.Column('origin_run_id', sa.String(length=64), nullable=True),
    sa.Column('origin_seq', sa.Integer(), nullable=True),
    sa.Column('noise_multiplier', sa.Double(), nullable=False),
    sa.Column('sample_rate', sa.Double(), nullable=False),
    sa.Column('max_grad_norm', sa.Double(), nullable=False),
    sa.Column('dataset_size', sa.BigInteger(), nullable=False),
    sa.Column('expected_batch_size', sa.Double(), nullable=False),
    sa.Column('delta', sa.Double(), nullable=False),
    sa.Column('accountant', sa.String(length=16), nullable=False),
    sa.Column('epsilon', sa.Double(), nullable=True),
    sa.Column('dataset_id', sa.String(length=200), nullable=True),
    sa.Column('library_versions', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.run_id'], name=op.f('fk_dp_steps_run_id_training_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.tenant_id'], name=op.f('fk_dp_steps_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dp_steps')),
    sa.UniqueConstraint('run_id', 'origin_run_id', 'origin_seq', name=op.f('uq_dp_steps_run_id_origin_run_id_origin_seq')),
    sa.UniqueConstraint('run_id', 'seq', name=op.f('uq_dp_steps_run_id_seq'))
    )
    op.create_index(op.f('ix_dp_steps_run_id'), 'dp_steps', ['run_id'], unique=False)
    op.create_index(op.f('ix_dp_steps_tenant_id'), 'dp_steps', ['tenant_id'], unique=False)

    op.create_table('operations',
    sa.Column('future_id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('operation', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('request', sa.JSON(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.run_id'], name=op.f('fk_operations_run_id_training_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.tenant_id'], name=op.f('fk_operations_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('future_id', name=op.f('pk_operations')),
    sa.UniqueConstraint('run_id', 'idempotency_key', name=op.f('uq_operations_run_id_idempotency_key')),
    sa.UniqueConstraint('run_id', 'seq', name=op.f('uq_operations_run_id_seq'))
    )
    op.create_index(op.f('ix_operations_run_id'), 'operations', ['run_id'], unique=False)
    op.create_index(op.f('ix_operations_status'), 'operations', ['status'], unique=False)
    op.create_index(op.f('ix_operations_tenant_id'), 'operations', ['tenant_id'], unique=False)



def downgrade() -> None:
    op.drop_index(op.f('ix_operations_tenant_id'), table_name='operations')
    op.drop_index(op.f('ix_operations_status'), table_name='operations')
    op.drop_index(op.f('ix_operations_run_id'), table_name='operations')

    op.drop_table('operations')
    op.drop_index(op.f('ix_dp_steps_tenant_id'), table_name='dp_steps')
    op.drop_index(op.f('ix_dp_steps_run_id'), table_name='dp_steps')

    op.drop_table('dp_steps')
    op.drop_index(op.f('ix_artifacts_tenant_id'), table_name='artifacts')
    op.drop_index(op.f('ix_artifacts_run_id'), table_name='artifacts')
    op.drop_index(op.f('ix_artifacts_expires_at'), table_name='artifacts')

    op.drop_table('artifacts')
    op.drop_index(op.f('ix_training_runs_tenant_id'), table_name='training_runs')

    op.drop_table('training_runs')
    op.drop_index(op.f('ix_api_keys_tenant_id'), table_name='api_keys')

    op.drop_table('api_keys')
    op.drop_table('tenants')
    op.drop_table('tenant_keys')
