"""sync_runs: a partial index on the `running` records every poll looks for

Revision ID: 0005_sync_runs_running
Revises: 0004_events_speed

Written by hand. `reap_abandoned_runs` runs at every poll of every replica; without this index it
scans the whole table, which grows by one row per integration and day.
"""

from alembic import op
import sqlalchemy as sa

revision = '0005_sync_runs_running'
down_revision = '0004_events_speed'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.create_index('ix_sync_runs_running', ['integration_id'], unique=False,
                              sqlite_where=sa.text("outcome = 'running'"),
                              postgresql_where=sa.text("outcome = 'running'"))


def downgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_runs_running')
