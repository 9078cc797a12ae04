"""Alembic environment: Bastion always passes an open connection (``store.database.migrate``)."""

from alembic import context

from bastion.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via the alembic CLI, which Bastion does not use
    raise RuntimeError("run migrations through bastion.store.database.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
