"""``bastion events`` (query, ``--follow``, ``verify``, ``purge``) and ``bastion report``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..core.events import SEVERITIES, make_event_id
from .cli import _load, main

_COLUMNS = ("time", "type", "severity", "reason", "actor", "method", "path", "source_ip", "route")
# Writers flush every flush_interval (200 ms by default) and several processes write at once, so an event
# can land after a newer one: --follow looks back this far and prints each event once.
FOLLOW_LAG = 10.0


def _config_option(required: bool) -> Any:
    return click.option(
        "-c",
        "--config",
        "config_path",
        envvar="BASTION_CONFIG",
        required=required,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Path to bastion.yaml (or set BASTION_CONFIG).",
    )


def _engine(config_path: Path) -> tuple[Any, Any]:
    from ..store.database import SchemaError, open_database

    loaded = _load(config_path)
    try:
        engine = open_database(loaded.settings.storage.database)
        with engine.connect():
            pass
    except SchemaError as exc:
        click.echo(f"bastion: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # unreachable database: one clear line, not a traceback
        click.echo(f"bastion: cannot reach the database: {type(exc).__name__}", err=True)
        sys.exit(1)
    return loaded, engine


def _chain_key(loaded: Any) -> bytes | None:
    key = loaded.settings.events.chain_key
    return None if key is None else key.reveal().encode()


@main.group(invoke_without_command=True)
@_config_option(required=False)
@click.option("--type", "type_", help="Event type prefix, e.g. auth. or request.denied")
@click.option("--actor", help="consumer:shop (and its keys), admin:token, system…")
@click.option("--resource", help="e.g. api_key:<id> or consumer:<name>")
@click.option("--since", help="A duration such as 1h or 30m, or an ISO 8601 time.")
@click.option("--until", help="A duration such as 10m, or an ISO 8601 time.")
@click.option("--source-ip", help="Only events from this client address.")
@click.option("--severity", type=click.Choice(SEVERITIES), help="Exactly this severity.")
@click.option("--min-severity", type=click.Choice(SEVERITIES), help="This severity or worse.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Print new events as they are written (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def events(
    ctx: click.Context,
    config_path: Path | None,
    type_: str | None,
    actor: str | None,
    resource: str | None,
    since: str | None,
    until: str | None,
    source_ip: str | None,
    severity: str | None,
    min_severity: str | None,
    limit: int,
    follow: bool,
    as_json: bool,
) -> None:
    """Print events from the event log, newest first (or follow them live). Subcommands: verify, purge."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("Missing option '-c' / '--config' (or set BASTION_CONFIG).")
    from ..events.query import QueryError, event_filter, query_events

    now = time.time()
    try:
        flt = event_filter(
            now,
            since=since,
            until=until,
            type=type_,
            actor=actor,
            resource=resource,
            source_ip=source_ip,
            severity=severity,
            min_severity=min_severity,
        )
    except QueryError as exc:
        raise click.BadParameter(str(exc)) from None
    if follow and until:
        raise click.BadParameter("--follow shows new events; it cannot take --until")
    _, engine = _engine(config_path)
    try:
        if follow:
            _follow(engine, flt, as_json)
            return
        rows: list[dict[str, Any]] = []
        token = None
        while len(rows) < limit:
            page, token = query_events(engine, flt, page_size=min(1000, limit - len(rows)), page_token=token)
            rows.extend(page)
            if token is None:
                break
    finally:
        engine.dispose()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, separators=(",", ":")))
        return
    if not rows:
        click.echo("no events", err=True)
        return
    _table(rows)


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for col in _COLUMNS:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(c) or "") for c in _COLUMNS))
    Console(width=200).print(table)


def _line(row: dict[str, Any]) -> str:
    parts = [row["time"], row["type"], row["severity"]]
    parts += [
        f"{c}={row[c]}" for c in ("reason", "actor", "resource", "method", "path", "source_ip") if row.get(c)
    ]
    return " ".join(str(p) for p in parts)


def _follow(
    engine: Any,
    flt: Any,
    as_json: bool,
    *,
    poll: float = 0.5,
    page: int = 5000,
    polls: int | None = None,
    on_ready: Any = None,
) -> None:
    """Tail the log: each event written from now on, once. Every poll reads everything newer than the
    newest event seen (page by page, however many there are), then looks back FOLLOW_LAG seconds for
    events other writers flushed late (at most ``page`` of them: under a flood, a late one can be missed)."""
    from ..events.query import events_after, newest_id

    last = newest_id(engine)
    # What is already there (within the look-back) is history, not news.
    seen = {
        row["id"] for row in events_after(engine, flt, _id_floor(last, FOLLOW_LAG), up_to=last, limit=100_000)
    }
    click.echo("following new events (Ctrl-C stops)", err=True)
    sys.stderr.flush()
    if on_ready is not None:
        on_ready()

    def show(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["id"] not in seen:
                seen.add(row["id"])
                click.echo(json.dumps(row, separators=(",", ":")) if as_json else _line(row))

    try:
        while polls is None or polls > 0:
            polls = None if polls is None else polls - 1
            floor = _id_floor(last, FOLLOW_LAG)
            show(events_after(engine, flt, floor, up_to=last, limit=page))  # late arrivals
            while True:
                rows = events_after(engine, flt, last, limit=page)
                show(rows)
                if rows:
                    last = rows[-1]["id"]
                if len(rows) < page:
                    break
            floor = _id_floor(last, FOLLOW_LAG)
            seen = {i for i in seen if i > floor}
            sys.stdout.flush()
            time.sleep(poll)
    except KeyboardInterrupt:
        pass


def _id_floor(event_id: str, lag: float) -> str:
    """The smallest ULID of ``lag`` seconds before ``event_id`` was made ('' for '')."""
    if not event_id:
        return ""
    ms = 0
    for ch in event_id[:10]:
        ms = ms * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(ch)
    return make_event_id(max(0, ms - int(lag * 1000)), bytes(10))


@events.command("verify")
@_config_option(required=True)
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON document.")
def events_verify(config_path: Path, as_json: bool) -> None:
    """Check the event log's hash chains: exit 1 naming each edited, deleted or reordered row."""
    from ..events.chain import verify

    loaded, engine = _engine(config_path)
    try:
        result = verify(engine, _chain_key(loaded))
    finally:
        engine.dispose()
    if as_json:
        doc = {
            "ok": result.ok,
            "events": result.events,
            "chains": result.chains,
            "unchained": result.unchained,
            "keyed": loaded.settings.events.chain_key is not None,
            "problems": [
                {"chain": p.chain, "seq": p.seq, "event_id": p.event_id, "kind": p.kind, "detail": p.detail}
                for p in result.problems
            ],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        for problem in result.problems:
            click.echo(f"TAMPERED {problem.kind}: {problem}", err=True)
        keyed = "HMAC-SHA-256 with events.chain_key" if _chain_key(loaded) else "SHA-256 (no chain_key)"
        status = "OK" if result.ok else f"{len(result.problems)} problem(s)"
        extra = f", {result.unchained} written before the chain existed" if result.unchained else ""
        click.echo(f"{status}: {result.events} event(s) in {result.chains} chain(s), {keyed}{extra}")
    if not result.ok:
        sys.exit(1)


@events.command("purge")
@_config_option(required=True)
@click.option("--older-than", help="Override events.retention, e.g. 30d.")
def events_purge(config_path: Path, older_than: str | None) -> None:
    """Delete events older than events.retention now (gateways also do it every events.purge_interval)."""
    from ..config.units import parse_duration
    from ..events.chain import purge

    loaded, engine = _engine(config_path)
    try:
        retention = parse_duration(older_than) if older_than else loaded.settings.events.retention
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    try:
        done = purge(engine, time.time() - retention, key=_chain_key(loaded), now=time.time)
    finally:
        engine.dispose()
    click.echo(f"purged {done.count} event(s) older than {retention / 86400:g} day(s)")


@main.command()
@_config_option(required=True)
@click.option("--since", default="7d", show_default=True, help="A duration such as 7d, or an ISO 8601 time.")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html", show_default=True)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout."
)
def report(config_path: Path, since: str, fmt: str, output: Path | None) -> None:
    """An audit insight report: denied sources, auth failures, stale and expiring keys, alerts, undeclared
    endpoints."""
    from ..events.query import QueryError, parse_time
    from ..events.report import build_report
    from ..inventory.report import report as inventory_report

    now = time.time()
    try:
        start = parse_time(since, now)
    except QueryError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    loaded, engine = _engine(config_path)
    settings = loaded.settings
    try:
        # Endpoints a route has declared since they were observed are not "undeclared" any more.
        undeclared = inventory_report(
            settings.services, engine, unused_after=settings.inventory.unused_after, now=now
        )["undeclared"]
        text = build_report(
            engine,
            since=start,
            now=now,
            fmt=fmt,  # type: ignore[arg-type]
            undeclared=undeclared,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    finally:
        engine.dispose()
    if output is None:
        click.echo(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        click.echo(f"bastion: cannot write {output}: {exc.strerror}", err=True)
        sys.exit(1)
    click.echo(f"wrote {output}", err=True)
