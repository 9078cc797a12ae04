"""admin accounts (P12): admin_accounts, admin_recovery_codes, admin_sessions, admin_sign_in_codes

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_accounts",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("email", sa.String(254), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text),
        sa.Column("totp_secret", sa.Text),
        sa.Column("totp_pending", sa.Text),
        sa.Column("totp_last_step", sa.Integer),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("failures_since", sa.Float),
        sa.Column("locked_until", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("last_sign_in_at", sa.Float),
    )
    op.create_table(
        "admin_recovery_codes",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("admin_id", sa.String(26), sa.ForeignKey("admin_accounts.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float),
    )
    op.create_index("ix_admin_recovery_codes_admin", "admin_recovery_codes", ["admin_id"])
    op.create_table(
        "admin_sessions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("admin_id", sa.String(26), sa.ForeignKey("admin_accounts.id"), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_seen_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("mfa_at", sa.Float),
        sa.Column("source_ip", sa.String(64)),
    )
    op.create_index("ix_admin_sessions_admin", "admin_sessions", ["admin_id"])
    op.create_table(
        "admin_sign_in_codes",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("address_digest", sa.String(64), nullable=False),
        sa.Column("admin_id", sa.String(26)),
        sa.Column("code_digest", sa.String(64)),
        sa.Column("source_ip", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("used_at", sa.Float),
    )
    op.create_index("ix_admin_sign_in_codes_address", "admin_sign_in_codes", ["address_digest"])
    op.create_index("ix_admin_sign_in_codes_source_ip", "admin_sign_in_codes", ["source_ip"])


def downgrade() -> None:
    for index, table in (
        ("ix_admin_sign_in_codes_source_ip", "admin_sign_in_codes"),
        ("ix_admin_sign_in_codes_address", "admin_sign_in_codes"),
        ("ix_admin_sessions_admin", "admin_sessions"),
        ("ix_admin_recovery_codes_admin", "admin_recovery_codes"),
    ):
        op.drop_index(index, table)
    for table in ("admin_sign_in_codes", "admin_sessions", "admin_recovery_codes", "admin_accounts"):
        op.drop_table(table)
