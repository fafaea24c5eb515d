"""events: tracked Claude calls imported for reconciliation

Revision ID: 0002_events
Revises: 0001_initial

Written by hand (the table is described in worker/reconcile/store.py on the shared metadata).
"""

from alembic import op
import sqlalchemy as sa

import worker.storage.types


revision = '0002_events'
down_revision = '0001_initial'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=100), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=True),
    sa.Column('occurred_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('raw_model', sa.Text(), nullable=False),
    sa.Column('model', sa.Text(), nullable=True),
    sa.Column('uncached_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_read_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_write_5m_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_write_1h_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_write_unsplit_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost_usd', worker.storage.types.ExactDecimal(), nullable=True),
    sa.Column('workspace_id', sa.Text(), nullable=True),
    sa.Column('api_key_id', sa.Text(), nullable=True),
    sa.Column('customer', sa.Text(), nullable=True),
    sa.Column('extra', sa.Text(), nullable=False),
    sa.Column('seen_count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('source', 'event_id', name='uq_events_source_event_id')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_day_source', ['day', 'source'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_day_source')

    op.drop_table('events')
