"""identity tables: consumers, api_keys, oauth_clients, signing_keys, revoked_tokens, identity_state

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consumers",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("ip_allow", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("consumer_id", sa.String(26), sa.ForeignKey("consumers.id"), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("permissions", sa.Text, nullable=False),
        sa.Column("ip_allow", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("last_used_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
        sa.Column("revoked_by", sa.String(256)),
        sa.Column("rotated_from", sa.String(16)),
        sa.Column("rotated_to", sa.String(16)),
    )
    op.create_index("ix_api_keys_consumer", "api_keys", ["consumer_id"])
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("consumer_id", sa.String(26), sa.ForeignKey("consumers.id"), nullable=False),
        sa.Column("auth_method", sa.String(32), nullable=False),
        sa.Column("secret_digest", sa.String(64)),
        sa.Column("jwks", sa.Text),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("revoked_at", sa.Float),
        sa.Column("revoked_by", sa.String(256)),
    )
    op.create_index("ix_oauth_clients_consumer", "oauth_clients", ["consumer_id"])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("private_key", sa.Text, nullable=False),
        sa.Column("public_jwk", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=False),
    )
    op.create_table(
        "identity_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("pepper_check", sa.String(64)),
    )
    op.execute("INSERT INTO identity_state (id, revision) VALUES (1, 0)")


def downgrade() -> None:
    for table in (
        "identity_state",
        "revoked_tokens",
        "signing_keys",
        "oauth_clients",
        "api_keys",
        "consumers",
    ):
        op.drop_table(table)
