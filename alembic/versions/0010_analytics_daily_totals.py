"""analytics_daily_totals: the Analytics API's bill (grouping 'main') summed per integration, UTC day and
dimension (model, API key, actor), what the dashboard's overview reads, filled here from the rows already stored

Revision ID: 0010_analytics_daily_totals
Revises: 0009_daily_model_totals

Written by hand (the table is described in worker/storage/tables.py; worker/storage/analytics_totals.py keeps
it in step from then on and fills it here, one integration at a time).
"""

from alembic import op
import sqlalchemy as sa

import worker.storage.types


revision = '0010_analytics_daily_totals'
down_revision = '0009_daily_model_totals'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('analytics_daily_totals',
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('dimension', sa.String(length=10), nullable=False),
    sa.Column('key', sa.String(length=500), nullable=False),
    sa.Column('part', sa.String(length=5), nullable=False),
    sa.Column('cost_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('list_cost_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_read_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_write_tokens', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('integration_id', 'day', 'dimension', 'key', 'part')
    )
    with op.batch_alter_table('analytics_daily_totals', schema=None) as batch_op:
        batch_op.create_index('ix_analytics_daily_totals_day', ['dimension', 'part', 'day'], unique=False)

    from worker.storage import analytics_totals  # the code that keeps the table in step from now on

    conn = op.get_bind()
    for name, part in (('analytics_cost_rows', 'cost'), ('analytics_usage_rows', 'usage')):
        rows = sa.table(name, sa.column('integration_id'), sa.column('day', sa.Date()), sa.column('grouping'))
        days: dict = {}
        for iid, day in conn.execute(sa.select(rows.c.integration_id, rows.c.day).where(
                rows.c.grouping == 'main').distinct()):
            days.setdefault(iid, []).append(day)
        for iid in sorted(days):
            analytics_totals.refresh(conn, iid, days[iid], part)


def downgrade() -> None:
    with op.batch_alter_table('analytics_daily_totals', schema=None) as batch_op:
        batch_op.drop_index('ix_analytics_daily_totals_day')
    op.drop_table('analytics_daily_totals')
