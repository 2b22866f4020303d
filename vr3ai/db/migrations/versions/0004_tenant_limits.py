"""per-tenant limits on organizations, recording size per run

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 23:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# (column, default): existing organizations get the same defaults as new ones.
_LIMITS = (
    ('max_telephony_configurations', 10),
    ('max_workflows', 100),
    ('max_phone_numbers', 200),
    ('max_secrets', 50),
    ('max_definition_bytes', 262144),
    ('max_recording_mb', 2048),
)


def upgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        for name, default in _LIMITS:
            batch_op.add_column(sa.Column(name, sa.Integer(), server_default=sa.text(str(default)), nullable=False))
    with op.batch_alter_table('workflow_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recording_bytes', sa.Integer(), server_default=sa.text('0'), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('workflow_runs', schema=None) as batch_op:
        batch_op.drop_column('recording_bytes')
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        for name, _ in reversed(_LIMITS):
            batch_op.drop_column(name)
