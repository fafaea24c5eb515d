"""analytics: the Usage and Cost Analytics API's rows, names, state and checkpoints; integrations.source;
day_digests (a re-read day that did not change is recognised without reading it back)

Revision ID: 0008_analytics
Revises: 0007_claims_backoff

Written by hand (the tables are described in worker/storage/tables.py). Existing integrations keep
syncing the legacy reports only (`source` 'legacy'); `integrations set-source` adds the Analytics API.
"""

from alembic import op
import sqlalchemy as sa

import worker.storage.types


revision = '0008_analytics'
down_revision = '0007_claims_backoff'
branch_labels = None
depends_on = None

_GRAIN = ('grouping', 'model', 'workspace_id', 'api_key_id', 'actor_type', 'actor_id', 'service_tier',
          'context_window', 'inference_geo', 'speed', 'product', 'other')


def _dimensions() -> list[sa.Column]:
    lengths = {'grouping': 20, 'model': 200, 'workspace_id': 100, 'api_key_id': 100, 'actor_type': 50,
               'actor_id': 500, 'service_tier': 50, 'context_window': 50, 'inference_geo': 50, 'speed': 20,
               'product': 100}
    return [sa.Column(name, sa.String(length=n), nullable=False) for name, n in lengths.items()] + [
        sa.Column('other', sa.Text(), nullable=False)]


def upgrade() -> None:
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=10), server_default='legacy', nullable=False))

    op.create_table('day_digests',
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('scope', sa.String(length=20), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('digest', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'],
                            name=op.f('fk_day_digests_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('integration_id', 'kind', 'scope', 'day', name=op.f('pk_day_digests')),
    )
    op.create_table('analytics_cost_rows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    *_dimensions(),
    sa.Column('cost_type', sa.String(length=100), nullable=False),
    sa.Column('token_type', sa.String(length=200), nullable=False),
    sa.Column('amount_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('list_amount_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('currency', sa.String(length=10), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'],
                            name=op.f('fk_analytics_cost_rows_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analytics_cost_rows')),
    sa.UniqueConstraint('integration_id', 'day', *_GRAIN, 'cost_type', 'token_type',
                        name='uq_analytics_cost_rows_grain'),
    )
    op.create_table('analytics_usage_rows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    *_dimensions(),
    sa.Column('uncached_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_read_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_creation_5m_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_creation_1h_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('web_search_requests', sa.BigInteger(), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'],
                            name=op.f('fk_analytics_usage_rows_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analytics_usage_rows')),
    sa.UniqueConstraint('integration_id', 'day', *_GRAIN, name='uq_analytics_usage_rows_grain'),
    )
    op.create_table('analytics_names',
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('id', sa.String(length=500), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=True),
    sa.Column('email', sa.String(length=500), nullable=True),
    sa.Column('workspace_id', sa.String(length=100), nullable=True),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('updated_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'],
                            name=op.f('fk_analytics_names_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('integration_id', 'kind', 'id', name=op.f('pk_analytics_names')),
    )
    op.create_table('analytics_state',
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('refreshed_at', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('names_refreshed_at', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'],
                            name=op.f('fk_analytics_state_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('integration_id', name=op.f('pk_analytics_state')),
    )
    op.create_table('analytics_checkpoints',
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('stream', sa.String(length=30), nullable=False),
    sa.Column('first_day', sa.Date(), nullable=False),
    sa.Column('checkpoint', sa.Date(), nullable=False),
    sa.Column('synced_until', sa.Date(), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'],
                            name=op.f('fk_analytics_checkpoints_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('integration_id', 'stream', name=op.f('pk_analytics_checkpoints')),
    )


def downgrade() -> None:
    for table in ('analytics_checkpoints', 'analytics_state', 'analytics_names', 'analytics_usage_rows',
                  'analytics_cost_rows', 'day_digests'):
        op.drop_table(table)
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.drop_column('source')
