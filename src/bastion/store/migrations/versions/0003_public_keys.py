"""public_keys: RSA public keys consumers register for Public Key Client Validation (PKCV)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "public_keys",
        sa.Column("id", sa.String(34), primary_key=True),
        sa.Column("consumer_id", sa.String(26), sa.ForeignKey("consumers.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("revoked_at", sa.Float),
        sa.Column("revoked_by", sa.String(256)),
    )
    op.create_index("ix_public_keys_consumer", "public_keys", ["consumer_id"])


def downgrade() -> None:
    op.drop_index("ix_public_keys_consumer", "public_keys")
    op.drop_table("public_keys")
