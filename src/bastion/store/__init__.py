"""Durable data: SQLAlchemy 2 Core tables and Alembic migrations. SQLite is the embedded default;
PostgreSQL arrives with the distributed-state issue. Storage knows nothing about policy."""

from .database import open_database
from .schema import events_table, metadata

__all__ = ["events_table", "metadata", "open_database"]
