"""ARI endpoint URLs are stored with their port

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 23:55:00

A URL stored without a port used to connect to 80/443 (the scheme's default); new ones mean
Asterisk's 8088/8089. Existing rows get the port they really connected to written out (it is
already in ``endpoint_key``), so a working configuration keeps working and shows its port.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_configs = sa.table(
    'telephony_configurations',
    sa.column('id', sa.String),
    sa.column('ari_endpoint_url', sa.String),
    sa.column('endpoint_key', sa.String),
)


def _has_port(url: str) -> bool:
    netloc = url.split('://', 1)[-1]
    return netloc.rsplit(']', 1)[-1].count(':') == 1


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_configs.c.id, _configs.c.ari_endpoint_url, _configs.c.endpoint_key)).all()
    for row_id, url, key in rows:
        if url and not _has_port(url) and key:
            conn.execute(sa.update(_configs).where(_configs.c.id == row_id).values(ari_endpoint_url=key))


def downgrade() -> None:
    # Explicit ports connect to the same place under the old code too.
    pass
