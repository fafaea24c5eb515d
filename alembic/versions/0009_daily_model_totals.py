"""daily_model_totals: the legacy reports summed per integration, UTC day and model (what `report`, the HTTP
API's `spend` and the dashboard read), filled here from the rows already stored

Revision ID: 0009_daily_model_totals
Revises: 0008_analytics

Written by hand (the table is described in worker/storage/tables.py; worker/storage/totals.py keeps it in
step from then on). Amounts are summed with Decimal here, as SQLite has no exact SUM.
"""

from decimal import Decimal

from alembic import op
import sqlalchemy as sa

import worker.storage.types


revision = '0009_daily_model_totals'
down_revision = '0008_analytics'
branch_labels = None
depends_on = None


def upgrade() -> None:
    totals = op.create_table('daily_model_totals',
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('cost_usd', worker.storage.types.ExactDecimal(), nullable=False),
    sa.Column('input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_read_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_write_tokens', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('integration_id', 'day', 'model')
    )
    with op.batch_alter_table('daily_model_totals', schema=None) as batch_op:
        batch_op.create_index('ix_daily_model_totals_day', ['day'], unique=False)

    conn = op.get_bind()
    cost = sa.table('cost_rows', sa.column('integration_id'), sa.column('day', sa.Date()), sa.column('model'),
                    sa.column('amount_usd', worker.storage.types.ExactDecimal()))
    usage = sa.table('usage_rows', *[sa.column(n) for n in (
        'integration_id', 'model', 'uncached_input_tokens', 'output_tokens', 'cache_read_input_tokens',
        'cache_creation_5m_input_tokens', 'cache_creation_1h_input_tokens')], sa.column('day', sa.Date()))
    ids = [row[0] for row in conn.execute(sa.text('SELECT id FROM integrations ORDER BY id'))]
    for iid in ids:  # one integration at a time: a year of a large organization is a million rows
        sums: dict = {}
        for day, model, amount in conn.execute(sa.select(cost.c.day, cost.c.model, cost.c.amount_usd).where(
                cost.c.integration_id == iid)):
            acc = sums.setdefault((day, model), [Decimal(0), 0, 0, 0, 0])
            acc[0] = worker.storage.types.EXACT.add(acc[0], amount)
        u = usage.c
        for day, model, a, b, cr, cw5, cw1 in conn.execute(sa.select(
                u.day, u.model, sa.func.sum(u.uncached_input_tokens), sa.func.sum(u.output_tokens),
                sa.func.sum(u.cache_read_input_tokens), sa.func.sum(u.cache_creation_5m_input_tokens),
                sa.func.sum(u.cache_creation_1h_input_tokens)).where(u.integration_id == iid).group_by(u.day, u.model)):
            acc = sums.setdefault((day, model), [Decimal(0), 0, 0, 0, 0])
            acc[1:] = [int(a), int(b), int(cr), int(cw5) + int(cw1)]
        if sums:
            conn.execute(sa.insert(totals), [
                {'integration_id': iid, 'day': day, 'model': model, 'cost_usd': v[0], 'input_tokens': v[1],
                 'output_tokens': v[2], 'cache_read_tokens': v[3], 'cache_write_tokens': v[4]}
                for (day, model), v in sums.items()])


def downgrade() -> None:
    with op.batch_alter_table('daily_model_totals', schema=None) as batch_op:
        batch_op.drop_index('ix_daily_model_totals_day')
    op.drop_table('daily_model_totals')
