"""``bastion audit`` and ``bastion scan``: the secure development lifecycle (P21).

Exit statuses are for CI and pre-commit: ``scan`` exits 1 when it finds anything and 0 when the tree is
clean; ``audit`` exits 1 on any ``fail`` or a score under ``--fail-under``. Both exit 2 when they cannot do
their job (bad arguments, an unreadable config, no git history, an unreachable store when one is needed),
so a broken run is never read as a clean one nor as a finding.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..config import LoadedConfig
from .cli import _load, main

FORMATS = click.Choice(["text", "json", "sarif"])


def _load_or_exit(path: Path) -> LoadedConfig:
    return _load(path, exit_status=2)  # 1 means "found something"


def _fail(message: str) -> None:
    click.echo(f"bastion: {message}", err=True)
    sys.exit(2)


def _print(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


# -- audit -------------------------------------------------------------------------------------------


@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="BASTION_CONFIG",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Path to bastion.yaml (or set BASTION_CONFIG).",
)
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--fail-under",
    type=click.IntRange(0, 100),
    default=None,
    help="Exit 1 when the score is below this (0-100), besides on any fail.",
)
def audit(config_path: Path, fmt: str, as_json: bool, fail_under: int | None) -> None:
    """Score a configuration (and its store, when reachable) against practices P1-P20. Exit 1 on any
    fail or a score under --fail-under, 0 otherwise."""
    from . import audit as posture

    if as_json and fmt not in ("text", "json"):
        raise click.UsageError("--json and --format are two ways to say the same thing: give one")
    fmt = "json" if as_json else fmt
    loaded = _load_or_exit(config_path)
    store, detail = posture.read_store(loaded, now=time.time())
    report = posture.audit(loaded, store, detail)
    if fmt == "json":
        _print(report.document())
    elif fmt == "sarif":
        _print(posture.to_sarif(report, __version__))
    else:
        click.echo(posture.to_text(report))
    below = fail_under is not None and report.score < fail_under
    if below and fmt == "text":
        click.echo(f"bastion: the score {report.score} is under --fail-under {fail_under}", err=True)
    sys.exit(1 if report.failed or below else 0)


# -- scan --------------------------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--git", "history", is_flag=True, help="Also scan every commit of every ref (git log --all).")
@click.option("--revoke", is_flag=True, help="Revoke the live Bastion keys found (needs -c).")
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="BASTION_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Look Bastion keys up in this config's store (or set BASTION_CONFIG).",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--format", "fmt", type=FORMATS, default=None, help="text (default), json or sarif.")
def scan(
    paths: tuple[Path, ...],
    history: bool,
    revoke: bool,
    config_path: Path | None,
    as_json: bool,
    fmt: str | None,
) -> None:
    """Find leaked credentials (Bastion API keys, Twilio credentials, private keys) in files and, with
    --git, in a repository's history. Exit 1 when anything is found, 0 when clean."""
    from .scan import GitError, scan_git_history, scan_tree, to_json, to_sarif

    if as_json and fmt not in (None, "json"):
        raise click.UsageError("--json and --format are two ways to say the same thing: give one")
    fmt = "json" if as_json else (fmt or "text")
    if revoke and config_path is None:
        raise click.UsageError("--revoke needs -c/--config: the store the keys are revoked in")
    if history and (len(paths) != 1 or not paths[0].is_dir()):
        raise click.UsageError("--git takes one PATH: a directory inside the repository")
    loaded = _load_or_exit(config_path) if config_path is not None else None
    digest = None
    if loaded is not None and loaded.settings.identity.pepper is not None:
        from ..identity.credentials import Peppers

        digest = Peppers(loaded.settings.identity.pepper.reveal()).key_digest
    found = [f for p in paths for f in scan_tree(p, digest=digest)]
    if history:
        try:
            found.extend(scan_git_history(paths[0], digest=digest))
        except GitError as exc:
            _fail(str(exc))
    revoked: list[str] = []
    if loaded is not None:
        found, revoked = _with_store(loaded, found, revoke)
    if fmt == "json":
        _print(to_json(found))
    elif fmt == "sarif":
        _print(to_sarif(found, __version__))
    else:
        for f in found:
            where = f" (commit {f.commit[:12]})" if f.commit else ""
            key = f" {f.key_id}" if f.key_id else ""
            status = f" [{f.status}]" if f.kind == "bastion_api_key" and loaded is not None else ""
            click.echo(f"{f.path}:{f.line}: {f.kind}{key}{status}{where}")
        for key_id in revoked:
            click.echo(f"revoked {key_id}")
        click.echo(f"{len(found)} finding(s)" if found else "no credentials found", err=True)
    sys.exit(1 if found else 0)


def _stored_pepper_check(engine: Any) -> str | None:
    """The store's pepper check value, read only (``check_pepper`` would record one if none is there)."""
    from sqlalchemy import select

    from ..store.schema import identity_state_table

    try:
        with engine.connect() as conn:
            t = identity_state_table.c
            return conn.execute(select(t.pepper_check).where(t.id == 1)).scalar_one_or_none()  # type: ignore[no-any-return]
    except Exception as exc:  # no such table: not a Bastion store (or never migrated)
        _fail(f"cannot read the store: {type(exc).__name__}")
    return None


def _with_store(loaded: LoadedConfig, found: list[Any], revoke: bool) -> tuple[list[Any], list[str]]:
    """Statuses from the store; with ``revoke``, each live key revoked, its event naming where it was
    found (path, line, commit: never the key)."""
    from ..events.writer import EventWriter, new_event
    from ..identity.credentials import Peppers
    from ..identity.manage import IdentityAdmin, IdentityError
    from ..store.database import open_database
    from .audit import store_absent
    from .cli_identity import _actor
    from .scan import look_up

    absent = store_absent(loaded.settings.storage.database)
    if absent is not None:
        _fail(f"cannot look keys up: {absent}")
    try:
        engine = open_database(loaded.settings.storage.database, migrate_schema=False)
        with engine.connect():
            pass
    except Exception as exc:  # unreachable database: one clear line, not a traceback
        _fail(f"cannot reach the database: {type(exc).__name__}")
    try:
        pepper = loaded.settings.identity.pepper
        stored = _stored_pepper_check(engine)
        if pepper is not None and stored is not None and stored != Peppers(pepper.reveal()).check_value:
            _fail("identity.pepper is not the one this store's keys were made with")
        found = look_up(found, engine, now=time.time())
        live = [f for f in found if f.kind == "bastion_api_key" and f.status == "live"]
        if not revoke or not live:
            return found, []
        places: dict[str, list[dict[str, Any]]] = {}
        for f in live:
            places.setdefault(f.key_id or "", []).append({"path": f.path, "line": f.line, "commit": f.commit})
        writer = EventWriter(engine)
        writer.start()
        # IdentityAdmin.revoke_key records the usual api_key.revoked event; wrapping its emitter adds where
        # the key was found to that event (one event per key, however many places), and nothing else.
        current: dict[str, Any] = {}

        def emit(type: str, **fields: Any) -> None:
            if type == "api_key.revoked" and current:
                fields["data"] = {**fields.get("data", {}), **current}
                fields["reason"] = "credential_leaked"
            writer.emit(new_event(type, **fields))

        admin = IdentityAdmin(engine, None, emit=emit)
        try:
            for key_id, where in places.items():
                current.clear()
                current.update(found_in=where[:20], found_count=len(where))
                admin.revoke_key(key_id, actor=_actor())
        except IdentityError as exc:
            _fail(exc.message)
        finally:
            writer.close()
        revoked = set(places)
        now_revoked = [
            replace(f, status="revoked") if f.status == "live" and f.key_id in revoked else f for f in found
        ]
        return now_revoked, sorted(revoked)
    finally:
        engine.dispose()
