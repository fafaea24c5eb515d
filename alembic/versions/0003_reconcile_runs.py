"""reconcile_runs: the summary of each `cost-worker reconcile` (latest drift per integration)

Revision ID: 0003_reconcile_runs
Revises: 0002_events

Written by hand (the table is described in worker/storage/tables.py).
"""

from alembic import op
import sqlalchemy as sa

import worker.storage.types


revision = '0003_reconcile_runs'
down_revision = '0002_events'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reconcile_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('finished_at', worker.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=True),
    sa.Column('sources', sa.Text(), nullable=False),
    sa.Column('since', sa.Date(), nullable=False),
    sa.Column('until', sa.Date(), nullable=False),
    sa.Column('group_by', sa.String(length=20), nullable=False),
    sa.Column('tolerance_pct', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('billed_cost_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('tracked_cost_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('delta_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('unexplained_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('drift_rows', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconcile_runs'))
    )
    with op.batch_alter_table('reconcile_runs', schema=None) as batch_op:
        batch_op.create_index('ix_reconcile_runs_integration_id', ['integration_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reconcile_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_reconcile_runs_integration_id')

    op.drop_table('reconcile_runs')
