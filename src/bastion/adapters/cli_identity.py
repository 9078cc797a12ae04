"""``bastion consumers | keys | clients | credentials``: manage identities in the configured store.

Changes go straight to the store (the running gateways pick them up within
``identity.refresh_interval``) and are recorded as events with the actor ``cli:<user>``. A key or
client secret is printed once, by the command that creates it; nothing else ever shows it again.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import LoadedConfig
from ..config.units import parse_duration
from ..identity.credentials import Peppers
from ..identity.index import check_pepper
from ..identity.manage import IdentityAdmin, IdentityError
from ..identity.signing import PepperMismatch
from .cli import CONFIG_OPTION, _load, main

if TYPE_CHECKING:
    from sqlalchemy import Engine

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment (a container without /etc/passwd entry)
        return "cli"


@contextlib.contextmanager
def _store(loaded: LoadedConfig) -> Iterator[tuple[Engine, Callable[..., None]]]:
    """The configured store and an emitter of events into it, for one command (``bastion admins`` too).
    An ``IdentityError`` from the command is printed and exits 1; the store is closed either way."""
    from ..events.writer import EventWriter, new_event
    from ..store.database import open_database

    engine = open_database(loaded.settings.storage.database)
    writer = EventWriter(engine)
    writer.start()

    def emit(type: str, **fields: Any) -> None:
        writer.emit(new_event(type, **fields))

    try:
        yield engine, emit
    except IdentityError as exc:
        click.echo(f"bastion: {exc.message}", err=True)
        sys.exit(1)
    finally:
        writer.close()
        engine.dispose()


@contextlib.contextmanager
def _admin(config_path: Path) -> Iterator[IdentityAdmin]:
    loaded = _load(config_path)
    ident = loaded.settings.identity
    with _store(loaded) as (engine, emit):
        peppers = Peppers(ident.pepper.reveal()) if ident.pepper is not None else None
        if peppers is not None and not check_pepper(engine, peppers.check_value):
            raise IdentityError(409, "pepper_mismatch", str(PepperMismatch()))
        yield IdentityAdmin(engine, peppers, max_key_ttl=ident.max_key_ttl, emit=emit)


def _duration(name: str) -> Callable[[click.Context, click.Parameter, str | None], float | None]:
    def convert(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise click.BadParameter(f"{exc} (e.g. 30d, 12h, 90m)", param_hint=name) from None

    return convert


def _echo(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text(data))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    out = StringIO()
    Console(file=out, width=200).print(table)
    return out.getvalue().rstrip()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        import datetime as dt

        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


# -- consumers --------------------------------------------------------------------------------------


@main.group()
def consumers() -> None:
    """Client applications and tenants: their scopes, address lists and status."""


@consumers.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, help="A scope the consumer may hold (repeat).")
@click.option("--allow-ip", "allow_ips", multiple=True, help="Only from this address or CIDR (repeat).")
@click.option("--quota", help="Its own quota, e.g. 50000/month (default: consumers_defaults.quota).")
@CONFIG_OPTION
@JSON_OPTION
def consumers_create(
    name: str,
    scopes: tuple[str, ...],
    allow_ips: tuple[str, ...],
    quota: str | None,
    config_path: Path,
    as_json: bool,
) -> None:
    """Create a consumer."""
    with _admin(config_path) as admin:
        out = admin.create_consumer(name, scopes, ip_allow=allow_ips, quota=quota, actor=_actor())
    _echo(out, as_json, lambda c: f"created consumer {c['name']} (scopes: {' '.join(c['scopes']) or '-'})")


@consumers.command("list")
@CONFIG_OPTION
@JSON_OPTION
def consumers_list(config_path: Path, as_json: bool) -> None:
    """List consumers."""
    with _admin(config_path) as admin:
        rows = admin.list_consumers()
    _echo(rows, as_json, lambda r: _table(r, ["name", "status", "scopes", "ip_allow", "created_at"]))


@consumers.command("show")
@click.argument("name")
@CONFIG_OPTION
@JSON_OPTION
def consumers_show(name: str, config_path: Path, as_json: bool) -> None:
    """Show one consumer and its keys."""
    with _admin(config_path) as admin:
        out = admin.get_consumer(name)
        out["keys"] = admin.list_keys(name)
    _echo(
        out,
        as_json,
        lambda c: (
            f"{c['name']} ({c['status']}), scopes: {' '.join(c['scopes']) or '-'}\n"
            + _table(c["keys"], ["id", "scopes", "expires_at", "last_used_at", "revoked_at"])
        ),
    )


@consumers.command("disable")
@click.argument("name")
@CONFIG_OPTION
@JSON_OPTION
def consumers_disable(name: str, config_path: Path, as_json: bool) -> None:
    """Disable a consumer: its keys and tokens stop working at once."""
    with _admin(config_path) as admin:
        out = admin.set_consumer_active(name, False, actor=_actor())
    _echo(out, as_json, lambda c: f"disabled consumer {c['name']}")


@consumers.command("enable")
@click.argument("name")
@CONFIG_OPTION
@JSON_OPTION
def consumers_enable(name: str, config_path: Path, as_json: bool) -> None:
    """Enable a disabled consumer."""
    with _admin(config_path) as admin:
        out = admin.set_consumer_active(name, True, actor=_actor())
    _echo(out, as_json, lambda c: f"enabled consumer {c['name']}")


@consumers.command("set-quota")
@click.argument("name")
@click.argument("quota")
@CONFIG_OPTION
@JSON_OPTION
def consumers_set_quota(name: str, quota: str, config_path: Path, as_json: bool) -> None:
    """Give a consumer its own quota (N/day or N/month), or `default` for consumers_defaults.quota."""
    with _admin(config_path) as admin:
        out = admin.set_consumer_quota(name, None if quota == "default" else quota, actor=_actor())
    _echo(out, as_json, lambda c: f"consumer {c['name']}: quota {c['quota'] or 'default'}")


# -- keys -------------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys: create (shown once), list, rotate with a grace period, revoke."""


def _key_created(data: dict[str, Any]) -> str:
    return (
        f"{data['key']}\n\nkey id {data['id']}, expires {_cell(data['expires_at'])}.\n"
        "This is the only time the key is shown: store it in your secret manager now."
    )


@keys.command("create")
@click.option("--consumer", required=True, help="The consumer the key belongs to.")
@click.option(
    "--scope", "scopes", multiple=True, help="A scope for the key (repeat); default: all of the consumer's."
)
@click.option(
    "--ttl",
    callback=_duration("--ttl"),
    help="Lifetime, e.g. 30d (default and maximum: identity.max_key_ttl).",
)
@click.option("--allow-ip", "allow_ips", multiple=True, help="Only from this address or CIDR (repeat).")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    help="Only this 'METHOD /path' (repeat), e.g. 'GET /v1/orders/*'.",
)
@click.option("--name", default="", help="A label for the key.")
@CONFIG_OPTION
@JSON_OPTION
def keys_create(
    consumer: str,
    scopes: tuple[str, ...],
    ttl: float | None,
    allow_ips: tuple[str, ...],
    permissions: tuple[str, ...],
    name: str,
    config_path: Path,
    as_json: bool,
) -> None:
    """Create an API key and print it once."""
    with _admin(config_path) as admin:
        out, key = admin.create_key(
            consumer,
            scopes or None,
            ttl=ttl,
            permissions=permissions,
            ip_allow=allow_ips,
            name=name,
            actor=_actor(),
        )
    _echo({"id": out["id"], "key": key, "expires_at": out["expires_at"]}, as_json, _key_created)


@keys.command("list")
@click.option("--consumer", help="Only this consumer's keys.")
@CONFIG_OPTION
@JSON_OPTION
def keys_list(consumer: str | None, config_path: Path, as_json: bool) -> None:
    """List keys (never the keys themselves: ids, scopes, dates)."""
    with _admin(config_path) as admin:
        rows = admin.list_keys(consumer)
    _echo(
        rows,
        as_json,
        lambda r: _table(
            r, ["id", "consumer", "scopes", "expires_at", "last_used_at", "revoked_at", "rotated_to"]
        ),
    )


@keys.command("show")
@click.argument("key_id")
@CONFIG_OPTION
@JSON_OPTION
def keys_show(key_id: str, config_path: Path, as_json: bool) -> None:
    """Show one key's record."""
    with _admin(config_path) as admin:
        out = admin.get_key(key_id)
    _echo(out, as_json, lambda k: "\n".join(f"{f}: {_cell(v)}" for f, v in k.items()))


@keys.command("revoke")
@click.argument("key_id")
@CONFIG_OPTION
@JSON_OPTION
def keys_revoke(key_id: str, config_path: Path, as_json: bool) -> None:
    """Revoke a key at once."""
    with _admin(config_path) as admin:
        out = admin.revoke_key(key_id, actor=_actor())
    _echo(out, as_json, lambda k: f"revoked key {k['id']}")


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--grace", callback=_duration("--grace"), help="How long the old key keeps working (default 24h)."
)
@CONFIG_OPTION
@JSON_OPTION
def keys_rotate(key_id: str, grace: float | None, config_path: Path, as_json: bool) -> None:
    """Issue a new key; the old one keeps working for the grace period, then expires."""
    loaded = _load(config_path)
    grace = loaded.settings.identity.rotation_grace if grace is None else grace
    with _admin(config_path) as admin:
        out, key = admin.rotate_key(key_id, grace=grace, actor=_actor())
    _echo({"id": out["id"], "key": key, "expires_at": out["expires_at"]}, as_json, _key_created)


# -- OAuth clients ----------------------------------------------------------------------------------


@main.group()
def clients() -> None:
    """OAuth2 clients (client credentials grant) of consumers."""


@clients.command("create")
@click.option("--consumer", required=True, help="The consumer the client belongs to.")
@click.option(
    "--scope", "scopes", multiple=True, help="A scope for the client (repeat); default: the consumer's."
)
@click.option(
    "--jwks",
    "jwks_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The client's public JWKS file: private_key_jwt authentication (RFC 7523) instead of a secret.",
)
@CONFIG_OPTION
@JSON_OPTION
def clients_create(
    consumer: str, scopes: tuple[str, ...], jwks_file: Path | None, config_path: Path, as_json: bool
) -> None:
    """Create an OAuth client and print its secret once."""
    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read a JSON JWKS: {exc}", param_hint="--jwks") from None
    with _admin(config_path) as admin:
        out, secret = admin.create_client(consumer, scopes or None, jwks=jwks, actor=_actor())
    data: dict[str, Any] = {"client_id": out["client_id"], "client_secret": secret}
    _echo(
        data,
        as_json,
        lambda d: (
            f"client_id:     {d['client_id']}\n"
            + (
                f"client_secret: {d['client_secret']}\n\nThis is the only time the secret is shown."
                if d["client_secret"]
                else "authentication: private_key_jwt with the registered JWKS"
            )
        ),
    )


@clients.command("list")
@click.option("--consumer", help="Only this consumer's clients.")
@CONFIG_OPTION
@JSON_OPTION
def clients_list(consumer: str | None, config_path: Path, as_json: bool) -> None:
    """List OAuth clients."""
    with _admin(config_path) as admin:
        rows = admin.list_clients(consumer)
    _echo(
        rows, as_json, lambda r: _table(r, ["client_id", "consumer", "auth_method", "scopes", "revoked_at"])
    )


@clients.command("revoke")
@click.argument("client_id")
@CONFIG_OPTION
@JSON_OPTION
def clients_revoke(client_id: str, config_path: Path, as_json: bool) -> None:
    """Revoke a client: it can get no new tokens, and its tokens stop working."""
    with _admin(config_path) as admin:
        out = admin.revoke_client(client_id, actor=_actor())
    _echo(out, as_json, lambda c: f"revoked client {c['client_id']}")


# -- public keys for PKCV ---------------------------------------------------------------------------


@main.group()
def credentials() -> None:
    """Public keys consumers sign requests with (Public Key Client Validation, PKCV)."""


@credentials.command("add")
@click.option("--consumer", required=True, help="The consumer the key belongs to.")
@click.option(
    "--public-key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The RSA public key (PEM or DER; 2048+ bits, exponent 65537).",
)
@click.option("--name", default="", help="A label for the key.")
@CONFIG_OPTION
@JSON_OPTION
def credentials_add(consumer: str, key_file: Path, name: str, config_path: Path, as_json: bool) -> None:
    """Register a public key; its id (CR…) is the kid of the consumer's PKCV tokens."""
    try:
        raw = key_file.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read the file: {exc.strerror}", param_hint="--public-key") from None
    with _admin(config_path) as admin:
        out = admin.add_public_key(consumer, raw, name=name, actor=_actor())
    data = {"id": out["id"], "consumer": out["consumer"], "fingerprint": out["fingerprint"]}
    _echo(
        data,
        as_json,
        lambda d: f"id:          {d['id']}\nconsumer:    {d['consumer']}\nfingerprint: {d['fingerprint']}",
    )


@credentials.command("list")
@click.option("--consumer", help="Only this consumer's keys.")
@CONFIG_OPTION
@JSON_OPTION
def credentials_list(consumer: str | None, config_path: Path, as_json: bool) -> None:
    """List registered public keys."""
    with _admin(config_path) as admin:
        rows = admin.list_public_keys(consumer)
    _echo(rows, as_json, lambda r: _table(r, ["id", "consumer", "name", "fingerprint", "revoked_at"]))


@credentials.command("revoke")
@click.argument("credential_id")
@CONFIG_OPTION
@JSON_OPTION
def credentials_revoke(credential_id: str, config_path: Path, as_json: bool) -> None:
    """Revoke a public key: requests signed with it are refused at once."""
    with _admin(config_path) as admin:
        out = admin.revoke_public_key(credential_id, actor=_actor())
    _echo(out, as_json, lambda c: f"revoked credential {c['id']}")
