"""The ``bastion`` command line. Every store-touching command takes ``-c/--config`` (or
``BASTION_CONFIG``); data commands take ``--json``. Errors are one readable line each, exit status 1
for a bad config or bad arguments (click's own usage errors exit 2)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..config import ConfigError, LoadedConfig, load_config
from ..store.database import SchemaError

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    envvar="BASTION_CONFIG",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Path to bastion.yaml (or set BASTION_CONFIG).",
)


def _load(path: Path, *, exit_status: int = 1, defer_app_openapi: bool = True) -> LoadedConfig:
    """The config, or every problem on stderr and ``exit_status`` (audit and scan keep 1 for findings).
    A middleware config's ``openapi: app`` is left for the application (config/loader.py), except to serve."""
    try:
        return load_config(path, defer_app_openapi=defer_app_openapi)
    except ConfigError as exc:
        click.echo(f"bastion: the configuration has {len(exc.issues)} problem(s):", err=True)
        for issue in exc.issues:
            click.echo(f"  {issue}", err=True)
        sys.exit(exit_status)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bastion")
def main() -> None:
    """Bastion: an API security gateway."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"bastion {__version__}")


@main.command()
@CONFIG_OPTION
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Data-plane processes sharing the port (one per core).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
def serve(config_path: Path, workers: int, log_level: str) -> None:
    """Run the gateway (and its admin listener) until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's URL at INFO; a sink's or an alert channel's URL may carry a token.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    loaded = _load(config_path, defer_app_openapi=False)
    for w in loaded.warnings:
        click.echo(f"warning: {w}", err=True)
    from ..runtime.gateway import build_gateway, check_upstreams
    from .serve import run

    if workers > 1 and not loaded.settings.storage.state.startswith(("redis://", "rediss://")):
        replayed = [
            r.path
            for svc in loaded.settings.services
            for r in svc.routes
            if r.require_pkcv
            or any(m in ("hmac_signature", "pkcv") for m in r.auth_methods)
            or (r.twilio is not None and r.twilio.replay_window > 0)
        ]
        # Egress caps and the SMS pumping detector count per process in memory: N workers, N times the cap.
        counted = [
            e.listen_path
            for e in loaded.settings.egress
            if e.caps or (e.geo is not None and e.sms_pumping.enabled) or "pkcv" in e.auth_methods
        ]
        if replayed or counted:
            # Fail closed: each worker would remember only the messages it saw, so a replay sent to another
            # worker would pass (and each would count its own caps). Share the state: state: redis://.
            what = "has replay protection" if replayed else "has caps or SMS pumping detection"
            click.echo(
                f"bastion: {(replayed or counted)[0]} {what}, which the in-memory state keeps per process; "
                "run it with --workers 1, or share the state (storage.state: redis://)",
                err=True,
            )
            sys.exit(1)
    try:
        check_upstreams(loaded, middleware=False)
        build_gateway(loaded)  # route table errors before any listener opens
        run(loaded, workers=workers)
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(f"bastion: {issue}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"bastion: cannot start: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except SchemaError as exc:
        click.echo(f"bastion: {exc}", err=True)
        sys.exit(1)


@main.group()
def db() -> None:
    """The database schema: its status, and upgrades (PostgreSQL is upgraded only by this command)."""


@db.command("status")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def db_status(config_path: Path, as_json: bool) -> None:
    """Show the schema revision of the configured database and the one this Bastion needs."""
    from ..store.database import open_database, schema_status

    loaded = _load(config_path)
    engine = _engine(loaded, open_database)
    try:
        current, head = schema_status(engine)
    finally:
        engine.dispose()
    doc = {"current": current, "head": head, "up_to_date": current == head}
    if as_json:
        click.echo(json.dumps(doc))
    else:
        note = "" if current == head else " - upgrade needed"
        click.echo(f"schema: {current or 'empty'} (this Bastion: {head}){note}")


@db.command("upgrade")
@CONFIG_OPTION
def db_upgrade(config_path: Path) -> None:
    """Bring the configured database's schema up to this Bastion's version (Alembic migrations)."""
    from ..store.database import SchemaError, known_revisions, migrate, open_database, schema_status

    loaded = _load(config_path)
    engine = _engine(loaded, open_database)
    try:
        current, head = schema_status(engine)
        if current is not None and current not in known_revisions():
            raise SchemaError(f"the database is at revision {current}, newer than this Bastion ({head})")
        migrate(engine)
    except SchemaError as exc:
        click.echo(f"bastion: {exc}", err=True)
        sys.exit(1)
    finally:
        engine.dispose()
    click.echo(f"schema: {current or 'empty'} -> {head}")


def _engine(loaded: LoadedConfig, open_database: Any) -> Any:
    try:
        engine = open_database(loaded.settings.storage.database, migrate_schema=False)
        with engine.connect():
            pass
        return engine
    except Exception as exc:  # unreachable database: one clear line, not a traceback
        click.echo(f"bastion: cannot reach the database: {type(exc).__name__}", err=True)
        sys.exit(1)


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--middleware",
    is_flag=True,
    help="Check it for BastionMiddleware (services with upstream: app) rather than bastion serve.",
)
def check(config_path: Path, as_json: bool, middleware: bool) -> None:
    """Validate a configuration: exit 0 when it can run, 1 with every problem listed when not."""
    from ..runtime.gateway import build_gateway, check_upstreams
    from .checkup import posture_warnings

    try:
        loaded = load_config(config_path, defer_app_openapi=middleware)
        check_upstreams(loaded, middleware=middleware)
        gateway = build_gateway(loaded)
    except ConfigError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "errors": [_issue(i) for i in exc.issues]}, indent=2))
        else:
            click.echo(f"{config_path}: {len(exc.issues)} problem(s)", err=True)
            for issue in exc.issues:
                click.echo(f"  error: {issue}", err=True)
        sys.exit(1)
    warnings = [*loaded.warnings, *posture_warnings(loaded)]
    routes = sum(len(s.routes) for s in loaded.settings.services)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": True,
                    "services": len(loaded.settings.services),
                    "routes": routes,
                    "egress": len(loaded.settings.egress),
                    "warnings": [_issue(w) for w in warnings],
                },
                indent=2,
            )
        )
        return
    for w in warnings:
        click.echo(f"  warning: {w}", err=True)
    del gateway
    egress = f"{len(loaded.settings.egress)} egress route(s), " if loaded.settings.egress else ""
    click.echo(
        f"{config_path}: OK ({len(loaded.settings.services)} service(s), {routes} route(s), {egress}"
        f"{len(warnings)} warning(s))"
    )


def _issue(issue: Any) -> dict[str, Any]:
    return {"file": issue.file, "line": issue.line, "path": issue.path, "message": issue.message}


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="The whole report as one JSON document.")
def inventory(config_path: Path, as_json: bool) -> None:
    """The API inventory: declared routes, endpoints called that no route declares, and unused routes."""
    from ..inventory.report import report
    from ..store.database import open_database

    loaded = _load(config_path)
    settings = loaded.settings
    engine = open_database(settings.storage.database)
    try:
        found = report(
            settings.services, engine, unused_after=settings.inventory.unused_after, now=time.time()
        )
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    declared = Table(title=f"Declared ({len(found['declared'])})")
    for col in ("service", "methods", "path", "auth", "scopes", "rate limit", "requests", "last seen"):
        declared.add_column(col, overflow="fold")
    for row in found["declared"]:
        auth = row["auth"] if isinstance(row["auth"], str) else ", ".join(row["auth"])
        declared.add_row(
            row["service"],
            " ".join(row["methods"]),
            row["path"],
            auth,
            " ".join(row["scopes"]),
            ", ".join(row["rate_limit"]),
            str(row["requests"]),
            _when(row["last_seen"]),
        )
    console.print(declared)
    undeclared = Table(title=f"Called but not declared ({len(found['undeclared'])})")
    for col in ("method", "path", "requests", "first seen", "last seen"):
        undeclared.add_column(col, overflow="fold")
    for row in found["undeclared"]:
        undeclared.add_row(
            row["method"], row["path"], str(row["count"]), _when(row["first_seen"]), _when(row["last_seen"])
        )
    console.print(undeclared)
    days = found["unused_after_seconds"] / 86400
    unused = Table(title=f"Unused: no traffic for {days:g} days ({len(found['unused'])})")
    for col in ("service", "methods", "path", "last seen"):
        unused.add_column(col, overflow="fold")
    for row in found["unused"]:
        unused.add_row(row["service"], " ".join(row["methods"]), row["path"], _when(row["last_seen"]))
    console.print(unused)


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Gateway port.")
@click.option("--admin-port", type=click.IntRange(1, 65535), default=8081, show_default=True)
@click.option("--upstream-port", type=click.IntRange(1, 65535), default=9000, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Stop after this many seconds (0: run until Ctrl-C).",
)
def demo(port: int, admin_port: int, upstream_port: int, duration: float) -> None:
    """Start a demo upstream and the gateway with examples/quickstart.yaml, and print requests to try."""
    from .demo import run_demo

    try:
        run_demo(port=port, admin_port=admin_port, upstream_port=upstream_port, duration=duration)
    except OSError as exc:
        click.echo(
            "bastion demo: cannot start: "
            + (f"{exc.strerror} (is a port in use? try --port)" if exc.strerror else str(exc)),
            err=True,
        )
        sys.exit(1)


# register admins, audit/scan, events/report, identities
from . import cli_admins, cli_audit, cli_events, cli_identity  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    main()
