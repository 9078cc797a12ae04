"""Open the configured database and bring its schema up to date with Alembic."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event

__all__ = ["SchemaError", "known_revisions", "migrate", "open_database", "schema_status"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL lets the admin API read while the event writer writes; busy_timeout lets several gateway
    # worker processes share one file without "database is locked" errors.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class SchemaError(Exception):
    """The database's schema is not the one this Bastion knows (behind, or from a newer version)."""


def open_database(url: str, *, migrate_schema: bool = True) -> Engine:
    """An engine for ``url``. With ``migrate_schema``: SQLite (the embedded default) is upgraded in place;
    PostgreSQL (shared by several gateways, upgraded deliberately with ``bastion db upgrade``) is only
    checked, and a schema that is behind or unknown raises :class:`SchemaError`."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
    else:  # PostgreSQL: connections are checked before use, so a database restart costs no request an error
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    if migrate_schema:
        if url.startswith("sqlite"):
            migrate(engine)
        else:
            current, head = schema_status(engine)
            if current != head:
                engine.dispose()
                if current is not None and current not in known_revisions():
                    raise SchemaError(
                        f"the database schema is at revision {current}, which this version of Bastion does "
                        "not know (a newer version upgraded it); run that version, or restore the database"
                    )
                raise SchemaError(
                    f"the database schema is at {current or 'no revision'}, this Bastion needs {head}: "
                    "run `bastion db upgrade -c <config>` first"
                )
    return engine


def known_revisions() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}


def schema_status(engine: Engine) -> tuple[str | None, str]:
    """``(the database's revision or None, this code's head revision)``."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head


def migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
