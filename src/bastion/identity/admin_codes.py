"""Passwordless sign-in for admin accounts: a one-time code sent by email, and with it a sign-in link
(NIST SP 800-63B §5.1.3's out-of-band authenticator, used here in place of the password).

* The code has ``code_digits`` digits from :mod:`secrets`, lives ``code_ttl``, works once (a conditional
  UPDATE marks it used, so two requests cannot both spend it), and allows ``code_attempts`` tries; a new
  code replaces any earlier one for the address. Only a keyed digest is stored.
* No account enumeration: an unknown or disabled address gets exactly the same answer, is recorded the
  same way (a row without a code) and counts against the same limits; the mail goes out from a worker
  thread, so the answer's timing does not depend on whether one is sent.
* Limits: ``codes_per_address`` and ``codes_per_ip`` codes per ``code_window``, counted in the store (so
  shared by every instance). Beyond them, :class:`CodeLimited` (the caller answers 429).
* The link (when ``external_url`` is set and ``magic_links`` is on) belongs to the same sign-in request as
  the code: the same row, expiry, tries and send limits, and spending either spends both. Its token is
  ``<row id>.<256 random bits>`` (the id only says which row to look at). The URL is built from the
  configured ``external_url``, never from the request (a forged Host header cannot point it elsewhere).
  Opening it signs nobody in (mail scanners fetch links): the console page it opens has a button that
  posts the token (``/console/sign-in/link``).
* Stored: ``code_digest`` holds two 128-bit keyed digests (HMAC-SHA-256 under the code key, truncated),
  the code's then the link's, so the link needs no new column (an email without a link: the code's
  only). A row written before links existed holds the code's full digest: its first half is the same
  value, and no token can match its second half without the pepper. Neither the code nor the token is
  stored, logged or put in an event.
* Mail goes through SMTP with the alert channel's rules: ``smtps://`` is implicit TLS, ``smtp://`` to any
  host but loopback must offer STARTTLS or nothing is sent, certificates are verified.
"""

from __future__ import annotations

import hmac
import re
import secrets
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

from sqlalchemy import Engine, func, select, update

from ..smtp import SmtpEndpoint
from ..store.schema import admin_sign_in_codes_table
from .admins import AccountSettings, AdminAccounts, SignInFailed, new_id, normalize_email

__all__ = ["LINK_PATH", "AdminMailer", "CodeLimited", "SignInCodes", "link_token_shape"]

LINK_PATH = "/console/sign-in/link"  # on the admin listener: a page whose button completes the sign-in
TAG = 32  # hex characters of each stored digest (128 bits)
_LINK_TOKEN = re.compile(r"([0-9A-HJKMNP-TV-Z]{26})\.([A-Za-z0-9_-]{43})")


def link_token_shape(token: str) -> bool:
    """Whether ``token`` looks like a link token (checked before anything is looked up)."""
    return _LINK_TOKEN.fullmatch(token) is not None


class EmailSettings(Protocol):
    """``admin.accounts.email`` (config.models.AdminEmailSettings)."""

    smtp: str
    sender: str
    username: str | None
    password: Any  # a config Secret: .reveal() gives the value
    timeout: float


class CodeLimited(Exception):
    """Too many codes asked for this address or from this client address; ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many sign-in codes")
        self.retry_after = retry_after


class AdminMailer:
    """Sends sign-in codes; one SMTP session per message, in a worker thread."""

    def __init__(self, settings: EmailSettings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.endpoint = SmtpEndpoint.from_settings(settings, ssl_context)
        self.sender = settings.sender
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bastion-admin-mail")

    def submit(
        self, to: str, code: str, ttl: float, *, on_error: Callable[[str], None], link: str | None = None
    ) -> None:
        self._pool.submit(self._send_logged, to, code, ttl, on_error, link)

    def _send_logged(
        self, to: str, code: str, ttl: float, on_error: Callable[[str], None], link: str | None
    ) -> None:
        try:
            self.send(to, code, ttl, link=link)
        except Exception as exc:  # the error's class only: a server's reply may quote the message
            on_error(type(exc).__name__)

    def message(self, to: str, code: str, ttl: float, *, link: str | None = None) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = "Your Bastion sign-in code"
        msg["From"] = self.sender
        msg["To"] = to
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or "bastion")
        minutes = max(1, int(ttl // 60))
        opened = (
            f"Or open this link and press Sign in (it replaces the code):\n\n    {link}\n\n" if link else ""
        )
        msg.set_content(
            f"Your Bastion admin sign-in code is:\n\n    {code}\n\n{opened}"
            f"It works once, for {minutes} minute(s). If you did not ask for it, tell your Bastion "
            "administrators: someone knows your address and is trying to sign in.\n"
        )
        return msg

    def send(self, to: str, code: str, ttl: float, *, link: str | None = None) -> None:
        message = self.message(to, code, ttl, link=link)
        self.endpoint.send(message, from_addr=self.sender, to_addrs=[to])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class SignInCodes:
    def __init__(
        self,
        engine: Engine,
        accounts: AdminAccounts,
        settings: AccountSettings,
        mailer: AdminMailer | None,
        *,
        link_base: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``link_base``: the admin listener's external URL (``admin.accounts.external_url``) when sign-in
        links are on; None: the email carries the code only."""
        self.engine = engine
        self.accounts = accounts
        self.keys = accounts.keys
        self.settings = settings
        self.mailer = mailer
        self.link_base = link_base.rstrip("/") if link_base else None
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.mailer is not None

    def request(self, email: str, *, source_ip: str) -> None:
        """Send a code if ``email`` belongs to an active account; the same outcome either way (or
        :class:`CodeLimited`, which depends only on how often this address and client asked)."""
        assert self.mailer is not None
        s = self.settings
        now = self.clock()
        address = self.keys.address_digest(email)
        c = admin_sign_in_codes_table.c
        window_start = now - s.code_window
        with self.engine.begin() as conn:
            by_address = conn.execute(
                select(func.count(), func.min(c.created_at)).where(
                    c.address_digest == address, c.created_at > window_start
                )
            ).first()
            by_ip = conn.execute(
                select(func.count(), func.min(c.created_at)).where(
                    c.source_ip == source_ip, c.created_at > window_start
                )
            ).first()
            assert by_address is not None and by_ip is not None
            for (count, oldest), limit in ((by_address, s.codes_per_address), (by_ip, s.codes_per_ip)):
                if count >= limit:
                    self.accounts.emit(
                        "admin_auth.code_limited",
                        severity="warning",
                        source_ip=source_ip,
                        reason="admin_rate_limited",
                        data={"per": "address" if limit == s.codes_per_address else "ip"},
                    )
                    raise CodeLimited(max(1, int(oldest + s.code_window - now) + 1))
            row = self.accounts.by_email(conn, email) if len(email) <= 254 else None
            active = row is not None and row["status"] == "active"
            code = str(secrets.randbelow(10**s.code_digits)).zfill(s.code_digits)
            row_id = new_id(now)
            link = None
            stored = self.keys.code_digest(address, code)[:TAG]
            if self.link_base is not None:
                secret = secrets.token_urlsafe(32)  # 256 bits
                link = f"{self.link_base}{LINK_PATH}?token={row_id}.{secret}"
                stored += self._link_tag(address, row_id, secret)
            # Earlier codes for this address stop working: only the newest one is live.
            conn.execute(
                update(admin_sign_in_codes_table)
                .where(c.address_digest == address, c.used_at.is_(None))
                .values(used_at=now)
            )
            conn.execute(
                admin_sign_in_codes_table.insert().values(
                    id=row_id,
                    address_digest=address,
                    admin_id=row["id"] if active and row is not None else None,
                    code_digest=stored if active else None,
                    source_ip=source_ip,
                    created_at=now,
                    expires_at=now + s.code_ttl,
                    attempts=0,
                    used_at=None,
                )
            )
        if active and row is not None:
            actor = f"admin:{row['name']}"

            def failed(error: str) -> None:
                self.accounts.emit(
                    "admin_auth.code_delivery_failed", severity="error", actor=actor, reason=error
                )

            self.mailer.submit(normalize_email(row["email"]), code, s.code_ttl, on_error=failed, link=link)
            self.accounts.emit(
                "admin_auth.code_sent",
                severity="info",
                actor=actor,
                source_ip=source_ip,
                data={"link": link is not None},
            )
        else:
            # The address is not logged (it may be a typo of someone's password); its digest's prefix
            # lets repeated probes of one address be grouped.
            self.accounts.emit(
                "admin_auth.code_not_sent",
                severity="info",
                source_ip=source_ip,
                reason="unknown_account" if row is None else "disabled",
                data={"address": address[:12]},
            )

    def verify(self, email: str, code: str, *, source_ip: str) -> Any:
        """The account row for a valid, live code; :class:`SignInFailed` for anything else."""
        s = self.settings
        now = self.clock()
        address = self.keys.address_digest(email)
        presented = self.keys.code_digest(address, code.strip())  # the same work for every address
        c = admin_sign_in_codes_table.c
        with self.engine.begin() as conn:
            live = conn.execute(
                select(admin_sign_in_codes_table)
                .where(c.address_digest == address, c.used_at.is_(None), c.expires_at > now)
                .order_by(c.created_at.desc())
                .limit(1)
            ).first()
            if live is None or live._mapping["admin_id"] is None:
                reason = "no_code"
            else:
                m = live._mapping
                # Count the attempt first, conditionally: concurrent guesses cannot exceed the limit.
                counted = conn.execute(
                    update(admin_sign_in_codes_table)
                    .where(c.id == m["id"], c.attempts < s.code_attempts, c.used_at.is_(None))
                    .values(attempts=c.attempts + 1)
                ).rowcount
                right = hmac.compare_digest(presented[:TAG], (m["code_digest"] or "")[:TAG])
                if counted != 1:
                    reason = "too_many_attempts"
                elif right:
                    spent = conn.execute(
                        update(admin_sign_in_codes_table)
                        .where(c.id == m["id"], c.used_at.is_(None))
                        .values(used_at=now)
                    ).rowcount
                    reason = "" if spent == 1 else "no_code"
                else:
                    reason = "bad_code"
                    if m["attempts"] + 1 >= s.code_attempts:  # that was the last try: the code is dead
                        conn.execute(
                            update(admin_sign_in_codes_table).where(c.id == m["id"]).values(used_at=now)
                        )
        if reason:
            admin_id = live._mapping["admin_id"] if live is not None else None
            if admin_id is not None and reason == "bad_code":
                row = self.accounts.account_for_sign_in(admin_id, source_ip=source_ip, method="email_code")
                self.accounts.count_failure(row, "bad_code", source_ip=source_ip, method="email_code")
            self.accounts.emit(
                "admin_auth.sign_in_failed",
                severity="warning",
                source_ip=source_ip,
                reason=reason,
                data={"method": "email_code"},
            )
            raise SignInFailed(reason)
        assert live is not None
        return self.accounts.account_for_sign_in(
            live._mapping["admin_id"], source_ip=source_ip, method="email_code"
        )

    def _link_tag(self, address: str, row_id: str, secret: str) -> str:
        # The code key, with a message no code digest can have (a code is digits only).
        return self.keys.code_digest(address, f"link:{row_id}:{secret}")[:TAG]

    def verify_link(self, token: str, *, source_ip: str) -> Any:
        """The account row for a valid, live link token; :class:`SignInFailed` for anything else (the
        reason, for the event log: ``unknown_link``, ``used_link``, ``expired_link``, ``bad_link``,
        ``too_many_attempts``). Spending the link spends the code of the same email, and the reverse."""
        s = self.settings
        now = self.clock()
        found = _LINK_TOKEN.fullmatch(token)
        c = admin_sign_in_codes_table.c
        m: Any = None
        if found is None:
            reason = "unknown_link"
        else:
            row_id, secret = found.group(1), found.group(2)
            with self.engine.begin() as conn:
                live = conn.execute(select(admin_sign_in_codes_table).where(c.id == row_id)).first()
                m = live._mapping if live is not None else None
                stored = (m["code_digest"] or "") if m is not None else ""
                if m is None or m["admin_id"] is None or len(stored) != 2 * TAG:
                    reason = "unknown_link"
                elif m["used_at"] is not None:
                    reason = "used_link"
                elif m["expires_at"] <= now:
                    reason = "expired_link"
                else:
                    counted = conn.execute(
                        update(admin_sign_in_codes_table)
                        .where(c.id == row_id, c.attempts < s.code_attempts, c.used_at.is_(None))
                        .values(attempts=c.attempts + 1)
                    ).rowcount
                    right = hmac.compare_digest(
                        self._link_tag(m["address_digest"], row_id, secret), stored[TAG:]
                    )
                    if counted != 1:
                        reason = "too_many_attempts"
                    elif right:
                        spent = conn.execute(
                            update(admin_sign_in_codes_table)
                            .where(c.id == row_id, c.used_at.is_(None))
                            .values(used_at=now)
                        ).rowcount
                        reason = "" if spent == 1 else "used_link"
                    else:
                        # A damaged link (the row id is not guessable): it counts as a try, not against
                        # the account's lockout.
                        reason = "bad_link"
                        if m["attempts"] + 1 >= s.code_attempts:
                            conn.execute(
                                update(admin_sign_in_codes_table).where(c.id == row_id).values(used_at=now)
                            )
        if reason:
            self.accounts.emit(
                "admin_auth.sign_in_failed",
                severity="warning",
                source_ip=source_ip,
                reason=reason,
                data={"method": "email_link"},
            )
            raise SignInFailed(reason)
        return self.accounts.account_for_sign_in(m["admin_id"], source_ip=source_ip, method="email_link")
