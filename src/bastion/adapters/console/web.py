"""What every console page shares: rendering with the security headers, the caller and its role, CSRF-checked
forms, step-up, and the one-time notes that carry a message or a new secret across a redirect.

Secrets are shown once. A form that creates one (an API key, a client secret, a generated password) does
not render it: it stores it here, bound to the session that asked, and redirects (POST-redirect-GET) to
the page that takes it — once. A reload, another tab or another session finds nothing, and a secret
nobody came for is forgotten after ``NOTE_TTL`` seconds. The secret never goes in a URL or a cookie.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

import anyio.to_thread
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Engine

from ...identity.admins import role_rank
from ...identity.manage import IdentityAdmin, IdentityError
from ...runtime.gateway import Gateway
from ..admin_auth import AdminPlane, Principal
from .templates import environment

__all__ = ["CSP", "SECTIONS", "Console", "Secret", "security_headers"]

C = "/console"
MAX_FORM = 16 * 1024
NOTE_TTL = 120.0
MAX_NOTE_SESSIONS = 10_000
T = TypeVar("T")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

# (slug, label, least role): the navigation, in order.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("overview", "Overview", "viewer"),
    ("events", "Events", "viewer"),
    ("alerts", "Alerts", "viewer"),
    ("consumers", "Consumers", "viewer"),
    ("keys", "API keys", "viewer"),
    ("clients", "OAuth clients", "viewer"),
    ("inventory", "Inventory", "viewer"),
    ("posture", "Posture", "viewer"),
    ("admins", "Admins", "admin"),
)
SLUGS = frozenset(slug for slug, _, _ in SECTIONS)


def security_headers() -> dict[str, str]:
    return {
        "content-security-policy": CSP,
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-resource-policy": "same-origin",
    }


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret to show once: what it is, a sentence about it, the value."""

    title: str
    detail: str
    value: str


@dataclass(frozen=True, slots=True)
class Can:
    operate: bool  # operator or admin: change consumers, keys, clients
    administer: bool  # admin: admin accounts


@dataclass(slots=True)
class _Note:
    page: str
    expires: float
    message: str = ""
    problem: str = ""
    secret: Secret | None = None


class Notes:
    """One-time notes per session (keyed by the session's stored digest, never its id): added by a form
    handler, taken by the page it redirects to. Bounded in sessions and in notes per session."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._items: dict[str, list[_Note]] = {}
        self._lock = threading.Lock()

    def add(
        self, key: str, page: str, *, message: str = "", problem: str = "", secret: Secret | None = None
    ) -> None:
        now = self.clock()
        with self._lock:
            if len(self._items) >= MAX_NOTE_SESSIONS:
                self._expire(now)
                if len(self._items) >= MAX_NOTE_SESSIONS:
                    self._items.pop(next(iter(self._items)))  # the oldest session's notes
            notes = self._items.setdefault(key, [])
            notes.append(_Note(page, now + NOTE_TTL, message, problem, secret))
            del notes[:-8]

    def take(self, key: str, page: str) -> list[_Note]:
        now = self.clock()
        with self._lock:
            notes = self._items.get(key)
            if not notes:
                return []
            mine = [n for n in notes if n.page == page and n.expires > now]
            rest = [n for n in notes if n.page != page and n.expires > now]
            if rest:
                self._items[key] = rest
            else:
                del self._items[key]
            return mine

    def _expire(self, now: float) -> None:
        for key in [k for k, notes in self._items.items() if all(n.expires <= now for n in notes)]:
            del self._items[key]


class Console:
    """The services and helpers of one console (one admin app)."""

    def __init__(
        self,
        plane: AdminPlane,
        identity: IdentityAdmin | None,
        *,
        engine: Engine | None,
        gateway: Gateway | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plane = plane
        self.identity = identity
        self.engine = engine
        self.gateway = gateway
        self.clock = clock
        self.env = environment()
        self.notes = Notes(clock)

    # -- the caller -------------------------------------------------------------------------------------

    @staticmethod
    def principal(request: Request) -> Principal | None:
        return request.scope.get("bastion.admin")

    def who(self, request: Request) -> dict[str, str] | None:
        """The signed-in caller for the header, or None (no principal, or a sign-in not complete yet)."""
        p = self.principal(request)
        if p is None:
            return None
        if p.session is None:
            return {"name": p.actor, "role": p.role}
        if p.session.stage != "full":
            return None
        return {"name": p.session.name, "role": p.session.role}

    def can(self, request: Request) -> Can:
        p = self.principal(request)
        rank = role_rank(p.role) if p is not None else -1
        return Can(operate=rank >= role_rank("operator"), administer=rank >= role_rank("admin"))

    def actor(self, request: Request) -> str:
        p = self.principal(request)
        return p.actor if p is not None else "admin:token"

    def csrf_token(self, request: Request) -> str:
        """The session's CSRF token ('' without a session: the bearer token has no forms)."""
        p = self.principal(request)
        if p is None or p.session_id is None or self.plane.sessions is None:
            return ""
        return self.plane.sessions.csrf_token(p.session_id)

    @staticmethod
    def ip(request: Request) -> str:
        client = request.scope.get("client") or ("", 0)
        return str(client[0])

    def _note_key(self, request: Request) -> str | None:
        p = self.principal(request)
        return p.session.digest if p is not None and p.session is not None else None

    # -- responses --------------------------------------------------------------------------------------

    def render(
        self,
        request: Request | None,
        name: str,
        status: int = 200,
        *,
        section: str = "",
        take_notes: bool = True,
        **context: Any,
    ) -> HTMLResponse:
        """A page: the template with the caller, its role's navigation, the notes for ``section`` (unless
        ``take_notes`` is false: a page that is not the section's own leaves them), and the security
        headers."""
        who = self.who(request) if request is not None else None
        if request is not None and who is not None:
            p = self.principal(request)
            rank = role_rank(p.role) if p is not None else -1
            context.setdefault("can", self.can(request))
            context.setdefault("csrf_token", self.csrf_token(request))
            sections = [(slug, label) for slug, label, least in SECTIONS if rank >= role_rank(least)]
            key = self._note_key(request)
            notes = self.notes.take(key, section) if key is not None and section and take_notes else []
        else:
            sections, notes = [], []
        secret = next((n.secret for n in notes if n.secret is not None), None)
        problems = [n.problem for n in notes if n.problem]
        context.setdefault("who", who)
        context.setdefault("can", Can(False, False))
        context.setdefault("csrf_token", "")
        context.setdefault("error", "")
        context.setdefault("form_error", "")
        context.setdefault("draft", defaultdict(str))
        context.setdefault("problem", problems[0] if problems else "")
        context.setdefault("secret", secret)
        context.update(
            section=section,
            sections=sections,
            notes=[n.message for n in notes if n.message],
            needs_script=context["secret"] is not None,  # the copy button: the only script there is
        )
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=security_headers())

    def problem(
        self, request: Request, status: int, heading: str, message: str, *, back: str = "overview"
    ) -> HTMLResponse:
        return self.render(request, "error.html", status, heading=heading, message=message, back=back)

    @staticmethod
    def go(path: str) -> RedirectResponse:
        """303 to a console path. ``path`` is always built here from fixed parts, never taken from the
        request, so no page redirects anywhere else."""
        return RedirectResponse(path, status_code=303, headers=security_headers())

    def note(
        self,
        request: Request,
        page: str,
        *,
        message: str = "",
        problem: str = "",
        secret: Secret | None = None,
    ) -> None:
        key = self._note_key(request)
        if key is not None:
            self.notes.add(key, page, message=message, problem=problem, secret=secret)

    def expired(self, request: Request) -> HTMLResponse:
        """A state-changing form without this session's CSRF token: nothing was done."""
        return self.problem(
            request,
            403,
            "The form expired",
            "Nothing was changed: the form was not sent from this session's page. Reload the page and try "
            "again.",
        )

    # -- forms ------------------------------------------------------------------------------------------

    @staticmethod
    async def read_form(request: Request) -> dict[str, str]:
        """A urlencoded form, bounded; one value per field (the first). Anything else: empty."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return {}
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return {}
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=30)
        except (UnicodeDecodeError, ValueError):
            return {}
        return {k: v[0] for k, v in parsed.items()}

    async def refused(
        self,
        page: Callable[..., Response],
        request: Request,
        exc: IdentityError,
        form: Mapping[str, str],
    ) -> Response:
        """A form the store refused: ``page`` again with the reason, and what was typed (not its CSRF
        token) so nothing has to be typed again."""
        status, message = exc.status, exc.message
        draft = defaultdict(str, {k: v for k, v in form.items() if k != "csrf_token"})
        return await self.run(lambda: page(request, status, form_error=message, draft=draft))

    async def act(
        self, request: Request, page: str, subject: str, work: Callable[[], str]
    ) -> RedirectResponse:
        """Do one change off the event loop and go back to ``page`` with its outcome as a note: the message
        ``work`` returns, or ``subject: reason`` when the store refuses it."""
        try:
            done = await self.run(work)
        except IdentityError as exc:
            self.note(request, page, problem=f"{subject}: {exc.message}")
        else:
            self.note(request, page, message=done)
        return self.go(f"{C}/{page}")

    @staticmethod
    def csrf_ok(form: Mapping[str, str], expected: str) -> bool:
        return bool(expected) and hmac.compare_digest(form.get("csrf_token", "").encode(), expected.encode())

    async def form(self, request: Request) -> dict[str, str] | None:
        """The form of a signed-in page, or None when its CSRF token is not this session's."""
        form = await self.read_form(request)
        return form if self.csrf_ok(form, self.csrf_token(request)) else None

    # -- step-up ----------------------------------------------------------------------------------------

    def needs_step_up(self, request: Request) -> bool:
        """A session whose last second factor is older than ``step_up_within`` (the bearer token is
        exempt, as in the admin API)."""
        p = self.principal(request)
        if p is None or p.session is None:
            return False
        at = p.session.mfa_at
        return at is None or self.clock() - at > self.plane.settings.step_up_within

    def step_up(self, request: Request, back: str) -> HTMLResponse:
        """The action was not done: ask for a second factor, then send the person back to ``back``."""
        if self.gateway is not None:
            self.gateway.emit(
                "admin.forbidden",
                severity="warning",
                method=request.method,
                path=request.url.path[:512],
                source_ip=self.ip(request),
                actor=self.actor(request),
                reason="admin_step_up_required",
                data={"console": True},
            )
        return self.render(
            request,
            "step_up.html",
            403,
            section=back,
            take_notes=False,
            back=back if back in SLUGS else "overview",
        )

    @staticmethod
    async def run(fn: Callable[[], T]) -> T:
        """Store work off the event loop."""
        return await anyio.to_thread.run_sync(fn)


def split_words(text: str) -> list[str]:
    """Scopes or addresses as typed: separated by spaces, commas or new lines."""
    return [w for w in text.replace(",", " ").split() if w]


def split_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]
