"""Table definitions. Changing them means adding an Alembic revision in ``migrations/versions``;
``tests/integration/test_store.py`` checks that the migrations produce exactly these tables."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, MetaData, String, Table, Text

__all__ = ["events_table", "metadata"]

metadata = MetaData()

events_table = Table(
    "events",
    metadata,
    Column("id", String(26), primary_key=True),  # ULID: sorts by time, used as the page cursor
    Column("time", Float, nullable=False),
    Column("type", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("request_id", String(128)),
    Column("route", String(256)),
    Column("method", String(16)),
    Column("path", String(2048)),
    Column("source_ip", String(64)),
    Column("actor", String(256)),
    Column("reason", String(64)),
    Column("data", Text, nullable=False),  # JSON, already redacted
    Index("ix_events_time", "time"),
    Index("ix_events_type", "type"),
    Index("ix_events_source_ip", "source_ip"),
)
