"""``bastion admins add | list | disable | enable | reset-mfa``: admin accounts in the configured store.

The way in for the first admin, and the way back for one who lost their phone. Changes are events with the
actor ``cli:<user>``. A generated password is printed once, by ``add``; nothing prints it again. Admin
accounts need ``identity.pepper`` (TOTP secrets are encrypted under a key derived from it).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..identity.admins import ROLES, AdminAccounts, AdminKeys
from .cli import CONFIG_OPTION, _load, main
from .cli_identity import JSON_OPTION, _actor, _echo, _store, _table


@contextlib.contextmanager
def _accounts(config_path: Path) -> Iterator[AdminAccounts]:
    from ..config.models import AdminAccountSettings

    loaded = _load(config_path)
    pepper = loaded.settings.identity.pepper
    if pepper is None:
        click.echo("bastion: admin accounts need identity.pepper in the configuration", err=True)
        sys.exit(1)
    admin = loaded.settings.admin
    settings = admin.accounts if admin is not None else AdminAccountSettings()
    with _store(loaded) as (engine, emit):
        yield AdminAccounts(engine, AdminKeys(pepper.reveal()), settings, emit=emit)


def _account_text(row: dict[str, Any]) -> str:
    mfa = "enrolled" if row["mfa"] else "not enrolled"
    return f"admin {row['name']} <{row['email']}>: role {row['role']}, {row['status']}, MFA {mfa}"


@main.group()
def admins() -> None:
    """People who use the admin API and console: roles, passwords, MFA."""


@admins.command("add")
@click.argument("name")
@click.option("--email", required=True, help="The account's address (sign-in and one-time codes).")
@click.option("--role", type=click.Choice(ROLES), required=True, help="viewer, operator or admin.")
@click.option(
    "--passwordless", is_flag=True, help="No password: the account signs in with emailed one-time codes."
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input instead of generating one."
)
@CONFIG_OPTION
@JSON_OPTION
def admins_add(
    name: str,
    email: str,
    role: str,
    passwordless: bool,
    password_stdin: bool,
    config_path: Path,
    as_json: bool,
) -> None:
    """Create an admin account. A generated password is printed once; MFA is enrolled at first sign-in."""
    if passwordless and password_stdin:
        raise click.UsageError("--passwordless and --password-stdin exclude each other")
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    with _accounts(config_path) as accounts:
        record, generated = accounts.create(
            name,
            email,
            role,
            password=password,
            generate=not passwordless and password is None,
            actor=_actor(),
        )

    def text(data: dict[str, Any]) -> str:
        lines = [_account_text(data["admin"])]
        if data["password"] is not None:
            lines += [
                f"password: {data['password']}",
                "This is the only time the password is shown. Hand it over safely; TOTP is enrolled at the "
                "first sign-in.",
            ]
        return "\n".join(lines)

    _echo({"admin": record, "password": generated}, as_json, text)


@admins.command("list")
@CONFIG_OPTION
@JSON_OPTION
def admins_list(config_path: Path, as_json: bool) -> None:
    """List admin accounts (never a password hash or an MFA secret)."""
    with _accounts(config_path) as accounts:
        rows = accounts.list_all()
    _echo(
        rows,
        as_json,
        lambda r: _table(r, ["name", "email", "role", "status", "mfa", "password", "last_sign_in_at"]),
    )


@admins.command("disable")
@click.argument("name")
@CONFIG_OPTION
@JSON_OPTION
def admins_disable(name: str, config_path: Path, as_json: bool) -> None:
    """Disable an account: its sessions end at once."""
    with _accounts(config_path) as accounts:
        out = accounts.set_active(name, False, actor=_actor())
    _echo(out, as_json, _account_text)


@admins.command("enable")
@click.argument("name")
@CONFIG_OPTION
@JSON_OPTION
def admins_enable(name: str, config_path: Path, as_json: bool) -> None:
    """Enable a disabled account (and lift a lockout)."""
    with _accounts(config_path) as accounts:
        out = accounts.set_active(name, True, actor=_actor())
    _echo(out, as_json, _account_text)


@admins.command("reset-mfa")
@click.argument("name")
@CONFIG_OPTION
@JSON_OPTION
def admins_reset_mfa(name: str, config_path: Path, as_json: bool) -> None:
    """Remove an account's TOTP and recovery codes (a lost phone); it enrols again at its next sign-in."""
    with _accounts(config_path) as accounts:
        out = accounts.reset_mfa(name, actor=_actor())
    _echo(out, as_json, _account_text)
