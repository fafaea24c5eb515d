"""initial schema

Revision ID: 0001_initial
Revises: 
"""

from alembic import op
import sqlalchemy as sa

import worker.storage.types


revision = '0001_initial'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('integrations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('tier', sa.String(length=20), nullable=False),
    sa.Column('organization_id', sa.String(length=100), nullable=False),
    sa.Column('organization_name', sa.String(length=300), nullable=False),
    sa.Column('key_ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('key_hint', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('last_success_at', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('backfill_start', sa.Date(), nullable=False),
    sa.Column('backfill_end', sa.Date(), nullable=False),
    sa.Column('cost_checkpoint', sa.Date(), nullable=False),
    sa.Column('usage_checkpoint', sa.Date(), nullable=False),
    sa.Column('backfill_done', sa.Boolean(), nullable=False),
    sa.Column('last_daily_slot', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=100), nullable=True),
    sa.Column('lease_expires_at', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_integrations')),
    sqlite_autoincrement=True
    )
    op.create_table('rate_buckets',
    sa.Column('bucket', sa.String(length=200), nullable=False),
    sa.Column('tat', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('bucket', name=op.f('pk_rate_buckets'))
    )
    op.create_table('cost_rows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('workspace_id', sa.String(length=100), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('cost_type', sa.String(length=100), nullable=False),
    sa.Column('token_type', sa.String(length=200), nullable=False),
    sa.Column('service_tier', sa.String(length=50), nullable=False),
    sa.Column('context_window', sa.String(length=50), nullable=False),
    sa.Column('inference_geo', sa.String(length=50), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('extra', sa.Text(), nullable=False),
    sa.Column('amount_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('currency', sa.String(length=10), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_cost_rows_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cost_rows')),
    sa.UniqueConstraint('integration_id', 'day', 'workspace_id', 'model', 'cost_type', 'token_type', 'service_tier', 'context_window', 'inference_geo', 'description', 'extra', name='uq_cost_rows_grain')
    )
    op.create_table('revisions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('grain', sa.Text(), nullable=False),
    sa.Column('previous', sa.Text(), nullable=True),
    sa.Column('current', sa.Text(), nullable=True),
    sa.Column('changed_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_revisions_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_revisions'))
    )
    with op.batch_alter_table('revisions', schema=None) as batch_op:
        batch_op.create_index('ix_revisions_integration_day', ['integration_id', 'day'], unique=False)

    op.create_table('sync_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('window_start', sa.Date(), nullable=False),
    sa.Column('window_end', sa.Date(), nullable=False),
    sa.Column('started_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('pages', sa.Integer(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('rate_limited', sa.Integer(), nullable=False),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('waited_seconds', sa.Float(), nullable=False),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_sync_runs_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_runs'))
    )
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.create_index('ix_sync_runs_integration_started', ['integration_id', 'started_at'], unique=False)

    op.create_table('usage_rows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('workspace_id', sa.String(length=100), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('service_tier', sa.String(length=50), nullable=False),
    sa.Column('context_window', sa.String(length=50), nullable=False),
    sa.Column('api_key_id', sa.String(length=100), nullable=False),
    sa.Column('inference_geo', sa.String(length=50), nullable=False),
    sa.Column('extra_key', sa.Text(), nullable=False),
    sa.Column('uncached_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_read_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_creation_5m_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_creation_1h_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('web_search_requests', sa.BigInteger(), nullable=False),
    sa.Column('extra_counts', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_usage_rows_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_rows')),
    sa.UniqueConstraint('integration_id', 'day', 'workspace_id', 'model', 'service_tier', 'context_window', 'api_key_id', 'inference_geo', 'extra_key', name='uq_usage_rows_grain')
    )


def downgrade() -> None:
    op.drop_table('usage_rows')
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_runs_integration_started')

    op.drop_table('sync_runs')
    with op.batch_alter_table('revisions', schema=None) as batch_op:
        batch_op.drop_index('ix_revisions_integration_day')

    op.drop_table('revisions')
    op.drop_table('cost_rows')
    op.drop_table('rate_buckets')
    op.drop_table('integrations')
