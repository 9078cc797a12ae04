"""consumers.quota: a consumer's own quota (N/day or N/month), overriding consumers_defaults.quota

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consumers") as batch:
        batch.add_column(sa.Column("quota", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("consumers") as batch:
        batch.drop_column("quota")
