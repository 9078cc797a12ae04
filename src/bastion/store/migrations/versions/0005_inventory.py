"""inventory_observed and route_traffic: the API inventory (undeclared endpoints seen, declared routes'
last traffic)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inventory_observed",
        sa.Column("method", sa.String(16), primary_key=True),
        sa.Column("template", sa.String(1200), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "route_traffic",
        sa.Column("route_id", sa.String(512), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("route_traffic")
    op.drop_table("inventory_observed")
