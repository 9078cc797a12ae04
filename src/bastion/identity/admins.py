"""Admin accounts (P12): people who manage the gateway, with roles, argon2id passwords and TOTP MFA.

Theory of operation
-------------------
* An account has a ``role`` — ``viewer`` (reads everything but secrets), ``operator`` (also manages
  consumers, keys, clients and public keys) or ``admin`` (also manages admin accounts) — and a ``status``.
* Passwords are hashed with argon2id (argon2-cffi's RFC 9106 profile) and checked for strength
  (:mod:`bastion.identity.admin_passwords`). An account may have no password: it signs in with a one-time
  code sent by email (:mod:`bastion.identity.admin_codes`).
* TOTP (RFC 6238, pyotp): enrolment stores a *pending* secret and returns the ``otpauth://`` URI and a QR
  code (SVG); the first valid code confirms it and returns ten recovery codes, shown once. TOTP secrets are
  encrypted at rest (Fernet under a key derived from ``identity.pepper``); recovery codes are stored as
  keyed digests and each works once. A TOTP code is accepted at most once: the last accepted time step is
  stored and only a later step is accepted (RFC 6238 §5.2), with a conditional UPDATE so two concurrent
  requests cannot both use it.
* Lockout: every failed sign-in step (password, code, second factor) counts against the account; after
  ``lockout_failures`` within ``lockout_within`` the account refuses every sign-in for ``lockout_for``, the
  right password included. Callers answer the same for an unknown account, a wrong password, a disabled
  or a locked one (:class:`SignInFailed`), and an unknown address costs the same argon2 work.

Every change is an event (``admin_account.*``, ``admin_auth.*``) with the acting principal as ``actor``;
no event, error or row ever holds a password, a code, a TOTP secret or a session id in clear.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Protocol

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, Engine, and_, delete, or_, select, update

from ..core.events import make_event_id
from ..store.schema import admin_accounts_table, admin_recovery_codes_table, admin_sessions_table
from .admin_passwords import PasswordTooWeak, check_password_strength
from .manage import IdentityError

__all__ = [
    "ROLES",
    "AdminAccounts",
    "AdminKeys",
    "SignInFailed",
    "role_rank",
]

Emit = Callable[..., None]
ROLES = ("viewer", "operator", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
EMAIL = re.compile(r"[^@\s<>,;\"']{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
RESERVED_NAMES = frozenset({"token", "system", "cli"})  # actors Bastion uses itself
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: codes are typed from paper
TOTP_ISSUER = "Bastion"


class AccountSettings(Protocol):
    """What the admin-account services read from ``admin.accounts`` (config.models.AdminAccountSettings;
    identity/ does not import config/, so the shape is declared here)."""

    min_password_length: int
    session_idle: float
    session_max: float
    lockout_failures: int
    lockout_within: float
    lockout_for: float
    code_digits: int
    code_ttl: float
    code_attempts: int
    codes_per_address: int
    codes_per_ip: int
    code_window: float


def role_rank(role: str) -> int:
    """viewer 0 < operator 1 < admin 2; anything else -1 (never enough)."""
    return _RANK.get(role, -1)


class SignInFailed(Exception):
    """A sign-in step failed. The client is told nothing more (no account enumeration); ``reason`` is for
    the event log only: unknown_account, bad_password, no_password, disabled, locked, bad_code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _derive(pepper: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"bastion/" + purpose).derive(pepper)


class AdminKeys:
    """Keys for the admin plane, each derived from ``identity.pepper`` with HKDF for one purpose only."""

    def __init__(self, pepper: str) -> None:
        raw = pepper.encode("utf-8")
        self.totp = Fernet(base64.urlsafe_b64encode(_derive(raw, b"admin-totp-encryption/v1")))
        self._recovery = _derive(raw, b"admin-recovery-code-digest/v1")
        self._session = _derive(raw, b"admin-session-digest/v1")
        self._csrf = _derive(raw, b"admin-csrf/v1")
        self._code = _derive(raw, b"admin-sign-in-code-digest/v1")
        self._address = _derive(raw, b"admin-address-digest/v1")

    @staticmethod
    def _mac(key: bytes, value: str) -> str:
        return hmac.new(key, value.encode("utf-8", "surrogateescape"), sha256).hexdigest()

    def recovery_digest(self, code: str) -> str:
        return self._mac(self._recovery, normalize_recovery_code(code))

    def session_digest(self, session_id: str) -> str:
        return self._mac(self._session, session_id)

    def csrf_token(self, session_id: str) -> str:
        """Bound to the session (a synchronizer token that needs no storage): a new session, a new token."""
        mac = hmac.new(self._csrf, session_id.encode("utf-8", "surrogateescape"), sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def code_digest(self, address_digest: str, code: str) -> str:
        return self._mac(self._code, f"{address_digest}:{code}")

    def address_digest(self, email: str) -> str:
        return self._mac(self._address, normalize_email(email))


def normalize_email(email: str) -> str:
    return email.strip().lower()


def normalize_recovery_code(code: str) -> str:
    return re.sub(r"[\s-]", "", code).lower()


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


def new_id(now: float) -> str:
    return make_event_id(int(now * 1000), secrets.token_bytes(10))


def generate_password() -> str:
    """A random password for an account created without one (shown once): 24 characters, ~143 bits."""
    return secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class Enrolment:
    otpauth_uri: str
    qr_svg: str


class AdminAccounts:
    def __init__(
        self,
        engine: Engine,
        keys: AdminKeys,
        settings: AccountSettings,
        *,
        emit: Emit | None = None,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.settings = settings
        self._emit = emit or (lambda *_a, **_k: None)
        self.clock = clock
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 "low memory" profile (64 MiB, t=3)
        self._dummy_hash: str | None = None

    # -- plumbing -----------------------------------------------------------------------------------
    def emit(self, event_type: str, *, severity: str = "notice", **fields: Any) -> None:
        self._emit(event_type, severity=severity, **fields)

    def _row(self, conn: Connection, name_or_id: str) -> Mapping[str, Any]:
        a = admin_accounts_table.c
        row = conn.execute(select(admin_accounts_table).where(a.name == name_or_id)).first()
        if row is None:
            row = conn.execute(select(admin_accounts_table).where(a.id == name_or_id)).first()
        if row is None:
            raise IdentityError(404, "not_found", "No such admin account.")
        return row._mapping

    def by_email(self, conn: Connection, email: str) -> Mapping[str, Any] | None:
        row = conn.execute(
            select(admin_accounts_table).where(admin_accounts_table.c.email == normalize_email(email))
        ).first()
        return row._mapping if row is not None else None

    def _check_password(self, password: str, name: str, email: str) -> None:
        try:
            check_password_strength(
                password,
                user_inputs=(name, email),
                min_length=self.settings.min_password_length,
            )
        except PasswordTooWeak as exc:
            raise IdentityError(400, "weak_password", str(exc)) from None

    # -- accounts -----------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        email: str,
        role: str,
        *,
        password: str | None = None,
        generate: bool = False,
        actor: str,
    ) -> tuple[dict[str, Any], str | None]:
        """A new active account: ``(record, generated password or None)``. Without a password (and
        without ``generate``) the account signs in with email codes only."""
        if not NAME.fullmatch(name) or name.lower() in RESERVED_NAMES:
            raise IdentityError(
                400,
                "invalid_name",
                "admin names are 1-64 letters, digits, '.', '_', '@' or '-' (not token, system or cli)",
            )
        address = normalize_email(email)
        if len(address) > 254 or not EMAIL.fullmatch(address):
            raise IdentityError(400, "invalid_email", "expected an email address such as ops@example.com")
        if role not in ROLES:
            raise IdentityError(400, "invalid_role", "role must be viewer, operator or admin")
        generated = None
        if password is None and generate:
            password = generated = generate_password()
        if password is not None:
            self._check_password(password, name, address)
        now = self.clock()
        row = {
            "id": new_id(now),
            "name": name,
            "email": address,
            "role": role,
            "status": "active",
            "password_hash": self.hasher.hash(password) if password is not None else None,
            "totp_secret": None,
            "totp_pending": None,
            "totp_last_step": None,
            "failures": 0,
            "failures_since": None,
            "locked_until": None,
            "created_at": now,
            "created_by": actor,
            "updated_at": now,
            "last_sign_in_at": None,
        }
        a = admin_accounts_table.c
        with self.engine.begin() as conn:
            clash = conn.execute(select(a.id).where(or_(a.name == name, a.email == address))).first()
            if clash is not None:
                raise IdentityError(409, "conflict", "an admin account with this name or address exists")
            conn.execute(admin_accounts_table.insert().values(**row))
        self.emit(
            "admin_account.created",
            actor=actor,
            resource=f"admin:{name}",
            data={"role": role, "password": password is not None},
        )
        return account_out(row), generated

    def list_all(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(admin_accounts_table).order_by(admin_accounts_table.c.name)).all()
        return [account_out(r._mapping) for r in rows]

    def get(self, name_or_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return account_out(self._row(conn, name_or_id))

    def _change(self, name_or_id: str, actor: str, event: str, **values: Any) -> dict[str, Any]:
        now = self.clock()
        with self.engine.begin() as conn:
            row = self._row(conn, name_or_id)
            conn.execute(
                update(admin_accounts_table)
                .where(admin_accounts_table.c.id == row["id"])
                .values(updated_at=now, **values)
            )
            if event in (
                "admin_account.disabled",
                "admin_account.mfa_reset",
                "admin_account.password_changed",
            ):
                # whoever held a session as this account holds it no longer
                conn.execute(delete(admin_sessions_table).where(admin_sessions_table.c.admin_id == row["id"]))
            if event == "admin_account.mfa_reset":
                conn.execute(
                    delete(admin_recovery_codes_table).where(
                        admin_recovery_codes_table.c.admin_id == row["id"]
                    )
                )
            out = account_out({**row, **values, "updated_at": now})
        data = {k: v for k, v in values.items() if k in ("role", "status")}
        self.emit(event, actor=actor, resource=f"admin:{row['name']}", data=data)
        return out

    def set_active(self, name_or_id: str, active: bool, *, actor: str) -> dict[str, Any]:
        status = "active" if active else "disabled"
        extra: dict[str, Any] = {"failures": 0, "locked_until": None} if active else {}
        event = "admin_account.enabled" if active else "admin_account.disabled"
        return self._change(name_or_id, actor, event, status=status, **extra)

    def set_role(self, name_or_id: str, role: str, *, actor: str) -> dict[str, Any]:
        if role not in ROLES:
            raise IdentityError(400, "invalid_role", "role must be viewer, operator or admin")
        return self._change(name_or_id, actor, "admin_account.role_changed", role=role)

    def reset_mfa(self, name_or_id: str, *, actor: str) -> dict[str, Any]:
        """Remove TOTP and recovery codes (a lost phone): the account enrols again at its next sign-in."""
        return self._change(
            name_or_id,
            actor,
            "admin_account.mfa_reset",
            totp_secret=None,
            totp_pending=None,
            totp_last_step=None,
        )

    def set_password(
        self, name_or_id: str, new: str, *, actor: str, current: str | None = None
    ) -> dict[str, Any]:
        """Change the password; with ``current`` (self-service) that must be the present password. Every
        session of the account ends."""
        with self.engine.connect() as conn:
            row = self._row(conn, name_or_id)
        if current is not None and not self._verify_hash(row, current):
            self.count_failure(row, "bad_password", source_ip=None)
            raise IdentityError(400, "invalid_password", "the current password is not right")
        self._check_password(new, row["name"], row["email"])
        return self._change(
            row["id"], actor, "admin_account.password_changed", password_hash=self.hasher.hash(new)
        )

    # -- sign-in: the first factor -------------------------------------------------------------------
    def _verify_hash(self, row: Mapping[str, Any] | None, password: str) -> bool:
        """argon2 work whether or not there is an account or a hash, so timing tells nothing."""
        stored = row["password_hash"] if row is not None else None
        if stored is None:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
            stored = self._dummy_hash
        try:
            ok: bool = self.hasher.verify(stored, password[:1024])
        except (VerificationError, InvalidHashError):
            ok = False
        return ok and row is not None and row["password_hash"] is not None

    def sign_in_password(self, email: str, password: str, *, source_ip: str | None) -> Mapping[str, Any]:
        """The account whose password this is, or :class:`SignInFailed` (the same for every reason)."""
        with self.engine.connect() as conn:
            row = self.by_email(conn, email) if len(email) <= 254 else None
        ok = self._verify_hash(row, password)
        if row is None:
            self.emit(
                "admin_auth.sign_in_failed",
                severity="warning",
                source_ip=source_ip,
                reason="unknown_account",
                data={"method": "password"},
            )
            raise SignInFailed("unknown_account")
        self._usable(row, source_ip, "password")
        if not ok:
            reason = "no_password" if row["password_hash"] is None else "bad_password"
            self.count_failure(row, reason, source_ip=source_ip, method="password")
        if self.hasher.check_needs_rehash(row["password_hash"]):
            with self.engine.begin() as conn:
                conn.execute(
                    update(admin_accounts_table)
                    .where(admin_accounts_table.c.id == row["id"])
                    .values(password_hash=self.hasher.hash(password))
                )
        return row

    def _usable(self, row: Mapping[str, Any], source_ip: str | None, method: str) -> None:
        """Disabled or locked accounts fail every step, whatever was presented."""
        reason = None
        if row["status"] != "active":
            reason = "disabled"
        elif row["locked_until"] is not None and row["locked_until"] > self.clock():
            reason = "locked"
        if reason is not None:
            self.emit(
                "admin_auth.sign_in_failed",
                severity="warning",
                actor=f"admin:{row['name']}",
                source_ip=source_ip,
                reason=reason,
                data={"method": method},
            )
            raise SignInFailed(reason)

    def count_failure(
        self, row: Mapping[str, Any], reason: str, *, source_ip: str | None, method: str = "password"
    ) -> None:
        """Count a failure against the account (locking it at the limit) and raise SignInFailed."""
        now = self.clock()
        s = self.settings
        a = admin_accounts_table.c
        with self.engine.begin() as conn:
            current = conn.execute(select(a.failures, a.failures_since).where(a.id == row["id"])).first()
            failures, since = (current[0], current[1]) if current is not None else (0, None)
            if since is None or now - since > s.lockout_within:
                failures, since = 0, now
            failures += 1
            locked = failures >= s.lockout_failures
            conn.execute(
                update(admin_accounts_table)
                .where(a.id == row["id"])
                .values(
                    failures=0 if locked else failures,
                    failures_since=None if locked else since,
                    locked_until=now + s.lockout_for if locked else row["locked_until"],
                )
            )
            if locked:
                conn.execute(delete(admin_sessions_table).where(admin_sessions_table.c.admin_id == row["id"]))
        actor = f"admin:{row['name']}"
        self.emit(
            "admin_auth.sign_in_failed",
            severity="warning",
            actor=actor,
            source_ip=source_ip,
            reason=reason,
            data={"method": method, "failures": failures},
        )
        if locked:
            self.emit(
                "admin_auth.locked",
                severity="error",
                actor=actor,
                source_ip=source_ip,
                resource=f"admin:{row['name']}",
                reason=reason,
                data={"failures": failures, "locked_for": s.lockout_for},
            )
        raise SignInFailed(reason)

    def account_for_sign_in(self, admin_id: str, *, source_ip: str | None, method: str) -> Mapping[str, Any]:
        """The account behind a verified code or session step, if it may still sign in."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(admin_accounts_table).where(admin_accounts_table.c.id == admin_id)
            ).first()
        if row is None:
            raise SignInFailed("unknown_account")
        self._usable(row._mapping, source_ip, method)
        return row._mapping

    def signed_in(self, row: Mapping[str, Any], *, source_ip: str | None, method: str) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(admin_accounts_table)
                .where(admin_accounts_table.c.id == row["id"])
                .values(failures=0, failures_since=None, last_sign_in_at=now)
            )
        self.emit(
            "admin_auth.signed_in",
            severity="notice",
            actor=f"admin:{row['name']}",
            source_ip=source_ip,
            data={"method": method, "role": row["role"]},
        )

    # -- the second factor: TOTP and recovery codes ---------------------------------------------------
    def begin_totp(self, admin_id: str) -> Enrolment:
        """A new pending TOTP secret: the URI (for authenticator apps) and its QR code. The account keeps
        its present factor (if any) until a code from the new one confirms it."""
        with self.engine.begin() as conn:
            row = self._row(conn, admin_id)
            if row["totp_secret"] is not None:
                raise IdentityError(
                    409, "mfa_already_enrolled", "TOTP is already enrolled; an admin can reset it"
                )
            secret = pyotp.random_base32()  # 160 bits, RFC 4226 §4's recommended length
            conn.execute(
                update(admin_accounts_table)
                .where(admin_accounts_table.c.id == row["id"])
                .values(totp_pending=self.keys.totp.encrypt(secret.encode()).decode())
            )
        uri = pyotp.TOTP(secret).provisioning_uri(name=row["email"], issuer_name=TOTP_ISSUER)
        svg = segno.make(uri, error="m").svg_inline(scale=4, title="TOTP enrolment")
        return Enrolment(otpauth_uri=uri, qr_svg=svg)

    def _secret(self, token: str | None) -> str | None:
        if token is None:
            return None
        try:
            return self.keys.totp.decrypt(token.encode()).decode()
        except InvalidToken:  # another pepper: the factor cannot be used (an admin resets it)
            return None

    def _totp_step(self, secret: str, code: str, last_step: int | None) -> int | None:
        """The time step a valid, unused code belongs to (the current one or one either side, for clock
        drift; RFC 6238 §5.2), else None. Every candidate is compared, in constant time."""
        if not re.fullmatch(r"\d{6}", code):
            return None
        totp = pyotp.TOTP(secret)
        now = self.clock()
        found = None
        for offset in (-1, 0, 1):
            at = now + offset * totp.interval
            if hmac.compare_digest(totp.at(at), code):
                step = totp.timecode(at)
                if last_step is None or step > last_step:
                    found = step
        return found

    def confirm_totp(self, admin_id: str, code: str, *, actor: str, source_ip: str | None) -> list[str]:
        """Confirm a pending enrolment with its first code; returns the recovery codes (shown once)."""
        with self.engine.connect() as conn:
            row = self._row(conn, admin_id)
        pending = self._secret(row["totp_pending"])
        if pending is None:
            raise IdentityError(409, "no_enrolment", "start a TOTP enrolment first")
        step = self._totp_step(pending, code.strip(), None)
        if step is None:
            self.emit(
                "admin_auth.mfa_failed",
                severity="warning",
                actor=actor,
                source_ip=source_ip,
                reason="bad_code",
                data={"factor": "totp_enrolment"},
            )
            self.count_failure(row, "bad_code", source_ip=source_ip, method="totp_enrolment")
        with self.engine.begin() as conn:
            conn.execute(
                update(admin_accounts_table)
                .where(admin_accounts_table.c.id == row["id"])
                .values(
                    totp_secret=row["totp_pending"],
                    totp_pending=None,
                    totp_last_step=step,
                    updated_at=self.clock(),
                )
            )
            codes = self._store_recovery_codes(conn, row["id"])
        self.emit(
            "admin_account.mfa_enrolled",
            actor=actor,
            resource=f"admin:{row['name']}",
            source_ip=source_ip,
            data={"factor": "totp", "recovery_codes": len(codes)},
        )
        return codes

    def _store_recovery_codes(self, conn: Connection, admin_id: str) -> list[str]:
        r = admin_recovery_codes_table
        conn.execute(delete(r).where(r.c.admin_id == admin_id))
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
        now = self.clock()
        for code in codes:
            conn.execute(
                r.insert().values(
                    digest=self.keys.recovery_digest(code), admin_id=admin_id, created_at=now, used_at=None
                )
            )
        return codes

    def new_recovery_codes(self, admin_id: str, *, actor: str) -> list[str]:
        with self.engine.begin() as conn:
            row = self._row(conn, admin_id)
            if row["totp_secret"] is None:
                raise IdentityError(409, "no_mfa", "enrol TOTP first")
            codes = self._store_recovery_codes(conn, row["id"])
        self.emit(
            "admin_account.recovery_codes_created",
            actor=actor,
            resource=f"admin:{row['name']}",
            data={"count": len(codes)},
        )
        return codes

    def verify_second_factor(
        self,
        admin_id: str,
        *,
        code: str | None = None,
        recovery_code: str | None = None,
        source_ip: str | None,
    ) -> str:
        """Check a TOTP code or a recovery code: the factor used (``totp`` | ``recovery_code``), or
        :class:`SignInFailed` after counting the failure (and locking at the limit)."""
        row = self.account_for_sign_in(admin_id, source_ip=source_ip, method="mfa")
        actor = f"admin:{row['name']}"
        a = admin_accounts_table.c
        if code is not None:
            secret = self._secret(row["totp_secret"])
            step = self._totp_step(secret, code.strip(), row["totp_last_step"]) if secret else None
            if step is not None:
                with self.engine.begin() as conn:
                    won = conn.execute(
                        update(admin_accounts_table)
                        .where(a.id == row["id"])
                        .where(or_(a.totp_last_step.is_(None), a.totp_last_step < step))
                        .values(totp_last_step=step)
                    ).rowcount
                if won == 1:
                    return "totp"
        elif recovery_code is not None:
            r = admin_recovery_codes_table.c
            digest = self.keys.recovery_digest(recovery_code)
            with self.engine.begin() as conn:
                used = conn.execute(
                    update(admin_recovery_codes_table)
                    .where(and_(r.digest == digest, r.admin_id == row["id"], r.used_at.is_(None)))
                    .values(used_at=self.clock())
                ).rowcount
                left = len(
                    conn.execute(select(r.digest).where(r.admin_id == row["id"], r.used_at.is_(None))).all()
                )
            if used == 1:
                self.emit(
                    "admin_account.recovery_code_used",
                    severity="warning",
                    actor=actor,
                    resource=f"admin:{row['name']}",
                    source_ip=source_ip,
                    data={"left": left},
                )
                return "recovery_code"
        self.emit(
            "admin_auth.mfa_failed",
            severity="warning",
            actor=actor,
            source_ip=source_ip,
            reason="bad_code",
            data={"factor": "recovery_code" if code is None else "totp"},
        )
        self.count_failure(row, "bad_code", source_ip=source_ip, method="mfa")
        raise AssertionError("unreachable")  # pragma: no cover - count_failure raises


def account_out(row: Mapping[str, Any]) -> dict[str, Any]:
    """An account as shown to admins: never a hash, a secret or a counter an attacker could use."""
    return {
        "id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "role": row["role"],
        "status": row["status"],
        "password": row["password_hash"] is not None,
        "mfa": row["totp_secret"] is not None,
        "locked_until": row["locked_until"],
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "updated_at": row["updated_at"],
        "last_sign_in_at": row["last_sign_in_at"],
    }
