"""events table

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("route", sa.String(256)),
        sa.Column("method", sa.String(16)),
        sa.Column("path", sa.String(2048)),
        sa.Column("source_ip", sa.String(64)),
        sa.Column("actor", sa.String(256)),
        sa.Column("reason", sa.String(64)),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_events_time", "events", ["time"])
    op.create_index("ix_events_type", "events", ["type"])
    op.create_index("ix_events_source_ip", "events", ["source_ip"])


def downgrade() -> None:
    op.drop_table("events")
