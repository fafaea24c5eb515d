"""watch: budget_states, spend_anomalies, watch_states and the notifications outbox

Revision ID: 0006_watch
Revises: 0005_sync_runs_running

Written by hand (the tables are described in worker/storage/tables.py).
"""

from alembic import op
import sqlalchemy as sa

import worker.storage.types


revision = '0006_watch'
down_revision = '0005_sync_runs_running'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('budget_states',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('period', sa.String(length=10), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('period_end', sa.Date(), nullable=False),
    sa.Column('limit_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('spend_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('forecast_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('evaluated_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_budget_states'))
    )
    op.create_table('spend_anomalies',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('scope', sa.String(length=20), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('cost_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('baseline_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('direction', sa.String(length=10), nullable=False),
    sa.Column('detected_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'],
                            name=op.f('fk_spend_anomalies_integration_id_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_spend_anomalies')),
    sa.UniqueConstraint('integration_id', 'day', 'scope', 'key', name='uq_spend_anomalies_grain')
    )
    op.create_table('watch_states',
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('state', sa.Text(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('changed_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('claimed_by', sa.String(length=100), nullable=True),
    sa.Column('claimed_until', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('subject', name=op.f('pk_watch_states'))
    )
    op.create_table('notifications',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_key', sa.String(length=300), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('claimed_by', sa.String(length=100), nullable=True),
    sa.Column('claimed_until', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sent_at', worker.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('event_key', 'target', name='uq_notifications_event')
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_due', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_due')
    op.drop_table('notifications')
    op.drop_table('watch_states')
    op.drop_table('spend_anomalies')
    op.drop_table('budget_states')
