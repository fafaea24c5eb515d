"""events: a covering index for reconcile instead of (day, source)

Revision ID: 0004_events_speed
Revises: 0003_reconcile_runs

Written by hand (the table is described in worker/reconcile/store.py on the shared metadata).
Reconciliation sums one source's events of a period per (day, raw_model). `ix_events_reconcile`
holds them in that order with every summed column, so the database aggregates while it scans the
index: no sort of a year of events, no table reads. The distinct sources of a period are found by
probing it per source. The old (day, source) index served none of this, so it goes: an import
maintains one secondary index, as before.
"""

from alembic import op

revision = '0004_events_speed'
down_revision = '0003_reconcile_runs'
branch_labels = None
depends_on = None

RECONCILE_COLUMNS = [
    'source', 'day', 'raw_model', 'seen_count', 'cost_usd',
    'uncached_input_tokens', 'output_tokens', 'cache_read_tokens',
    'cache_write_5m_tokens', 'cache_write_1h_tokens', 'cache_write_unsplit_tokens',
]


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_reconcile', RECONCILE_COLUMNS, unique=False)
        batch_op.drop_index('ix_events_day_source')


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_day_source', ['day', 'source'], unique=False)
        batch_op.drop_index('ix_events_reconcile')
