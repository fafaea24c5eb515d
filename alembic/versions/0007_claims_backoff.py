"""integrations: when the lease was taken (for "held by ... since ..."), and the retry backoff of a failing
integration (consecutive failed attempts, earliest next attempt)

Revision ID: 0007_claims_backoff
Revises: 0006_watch

Written by hand.
"""

from alembic import op
import sqlalchemy as sa

import worker.storage.types

revision = '0007_claims_backoff'
down_revision = '0006_watch'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_since', worker.storage.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('failed_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False))
        batch_op.add_column(sa.Column('retry_at', worker.storage.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.drop_column('retry_at')
        batch_op.drop_column('failed_attempts')
        batch_op.drop_column('lease_since')
