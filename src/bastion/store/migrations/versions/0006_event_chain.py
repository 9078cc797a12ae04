"""events: resource column, hash chain (chain, seq, prev_hash, hash), indexes for the Monitor API filters

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("resource", sa.String(256)))
        # Rows written before this revision have no chain: `bastion events verify` counts them as unchained.
        batch.add_column(sa.Column("chain", sa.String(26)))
        batch.add_column(sa.Column("seq", sa.Integer))
        batch.add_column(sa.Column("prev_hash", sa.String(64)))
        batch.add_column(sa.Column("hash", sa.String(64)))
    op.create_index("ix_events_actor", "events", ["actor"])
    op.create_index("ix_events_resource", "events", ["resource"])
    op.create_index("ix_events_chain_seq", "events", ["chain", "seq"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_events_chain_seq", "events")
    op.drop_index("ix_events_resource", "events")
    op.drop_index("ix_events_actor", "events")
    with op.batch_alter_table("events") as batch:
        for name in ("hash", "prev_hash", "seq", "chain", "resource"):
            batch.drop_column(name)
