"""organization secrets are bound to the hosts they may be sent to

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 23:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing secrets start unbound: the next workflow save or call that uses one binds it.
    with op.batch_alter_table('organization_secrets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allowed_hosts', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('organization_secrets', schema=None) as batch_op:
        batch_op.drop_column('allowed_hosts')
