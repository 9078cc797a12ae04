"""Admin sessions: opaque ids in a cookie, stored only as keyed digests.

A session has a ``stage``: ``mfa`` (the first factor passed, a second one is due), ``enrol`` (the first
factor passed, the account has no MFA and ``require_mfa`` asks for one) or ``full``. Only a full session
reaches the admin API; the others reach the few ``/auth`` routes that complete them. Every change of stage
issues a new id (the old one stops working: no session fixation, OWASP Session Management Cheat Sheet).

A session ends after ``session_idle`` without a request or ``session_max`` after it began, whichever is
first; when an account is disabled, locked, has its MFA reset or its password changed; and on sign-out.
``mfa_at`` is when the last second factor was checked: sensitive actions need it recent (step-up).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, select, update

from ..store.schema import admin_accounts_table, admin_sessions_table
from .admins import AccountSettings, AdminKeys

__all__ = ["AdminSessions", "Session"]

STAGES = ("mfa", "enrol", "full")


@dataclass(frozen=True, slots=True)
class Session:
    digest: str
    admin_id: str
    name: str
    email: str
    role: str
    stage: str
    created_at: float
    last_seen_at: float
    expires_at: float
    mfa_at: float | None
    has_mfa: bool

    @property
    def actor(self) -> str:
        return f"admin:{self.name}"


class AdminSessions:
    def __init__(
        self,
        engine: Engine,
        keys: AdminKeys,
        settings: AccountSettings,
        *,
        emit: Callable[..., None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.settings = settings
        self._emit = emit or (lambda *_a, **_k: None)
        self.clock = clock

    def create(
        self,
        admin_id: str,
        stage: str,
        *,
        source_ip: str | None,
        mfa_at: float | None = None,
        created_at: float | None = None,
    ) -> str:
        """A new session id (returned once, for the cookie; only its digest is stored)."""
        assert stage in STAGES
        session_id = "bas_" + secrets.token_urlsafe(32)
        now = self.clock()
        start = now if created_at is None else created_at
        with self.engine.begin() as conn:
            conn.execute(
                admin_sessions_table.insert().values(
                    digest=self.keys.session_digest(session_id),
                    admin_id=admin_id,
                    stage=stage,
                    created_at=start,
                    last_seen_at=now,
                    expires_at=start + self.settings.session_max,
                    mfa_at=mfa_at,
                    source_ip=source_ip,
                )
            )
            # Expired sessions of anyone are swept here, so the table stays small without a timer.
            conn.execute(delete(admin_sessions_table).where(admin_sessions_table.c.expires_at < now))
        return session_id

    def lookup(self, session_id: str, *, touch: bool = True) -> Session | None:
        """The live session with this id (its idle clock restarted), or None."""
        if not session_id.startswith("bas_") or len(session_id) > 64:
            return None
        digest = self.keys.session_digest(session_id)
        s, a = admin_sessions_table.c, admin_accounts_table.c
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(
                    admin_sessions_table,
                    a.name,
                    a.email,
                    a.role,
                    a.status,
                    a.totp_secret,
                    a.locked_until,
                )
                .join(admin_accounts_table, s.admin_id == a.id)
                .where(s.digest == digest)
            ).first()
            if row is None:
                return None
            m: Any = row._mapping
            idle = now - m["last_seen_at"] > self.settings.session_idle
            ended = idle or now >= m["expires_at"]
            unusable = m["status"] != "active" or (m["locked_until"] is not None and m["locked_until"] > now)
            if ended or unusable:
                conn.execute(delete(admin_sessions_table).where(s.digest == digest))
                if ended:
                    self._emit(
                        "admin_auth.session_expired",
                        severity="info",
                        actor=f"admin:{m['name']}",
                        reason="idle" if idle else "absolute",
                    )
                return None
            if touch:
                conn.execute(update(admin_sessions_table).where(s.digest == digest).values(last_seen_at=now))
        return Session(
            digest=digest,
            admin_id=m["admin_id"],
            name=m["name"],
            email=m["email"],
            role=m["role"],
            stage=m["stage"],
            created_at=m["created_at"],
            last_seen_at=now if touch else m["last_seen_at"],
            expires_at=m["expires_at"],
            mfa_at=m["mfa_at"],
            has_mfa=m["totp_secret"] is not None,
        )

    def advance(self, session: Session, stage: str, *, mfa_at: float | None, source_ip: str | None) -> str:
        """Replace the session with a new id at ``stage`` (the absolute limit still counts from the
        original sign-in)."""
        self.end(session)
        return self.create(
            session.admin_id, stage, source_ip=source_ip, mfa_at=mfa_at, created_at=session.created_at
        )

    def stepped_up(self, session: Session) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(admin_sessions_table)
                .where(admin_sessions_table.c.digest == session.digest)
                .values(mfa_at=self.clock())
            )

    def end(self, session: Session) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(admin_sessions_table).where(admin_sessions_table.c.digest == session.digest))

    def csrf_token(self, session_id: str) -> str:
        return self.keys.csrf_token(session_id)
