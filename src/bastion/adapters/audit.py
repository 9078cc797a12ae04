"""``bastion audit``: how a configuration (and, when reachable, its store) stands against practices P1-P20.

Theory of operation. A *rule* is one check with a stable id that starts with its practice
(``P10.route-without-rate-limit``), a level (what a finding of it is: ``fail`` or ``warn``; a rule may
lower or raise a single finding), and how to fix it. A rule returns its findings, or ``None`` when it does
not apply (no admin listener, no route that takes a body, no store to read). Each rule's status is then:

- ``pass`` (it applies and found nothing), ``warn`` or ``fail`` (the worst of its findings);
- ``not_applicable`` (nothing to check), ``not_checked`` (it needs the store, which was not read).

The score is ``100 * (passes + warns / 2) / (rules that pass, warn or fail)``, rounded down: a warning
costs half a rule, a failure the whole rule. Practices without a rule yet are listed as ``not_checked``
and never scored, so every practice P1-P20 appears in every report.

``bastion check`` shows the findings of the rules marked ``in_check`` as warnings (adapters/checkup.py):
one set of rules for both commands.

The decisions are pure (config and store rows in, findings out); :func:`read_store` is the only I/O.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ..config.errors import ConfigIssue
from ..config.loader import LoadedConfig
from ..config.models import GatewayConfig, RouteSettings, ServiceSettings

__all__ = [
    "PRACTICES",
    "RULES",
    "AuditReport",
    "Finding",
    "Rule",
    "StoreView",
    "audit",
    "read_store",
    "store_absent",
    "to_sarif",
    "to_text",
]

PRACTICES = {
    "P1": "least privilege",
    "P2": "API inventory",
    "P3": "validate inputs",
    "P4": "sanitize input",
    "P5": "strong authN/authZ, OAuth",
    "P6": "encrypt traffic",
    "P7": "don't overshare",
    "P8": "segment the network",
    "P9": "limit payload size",
    "P10": "rate limiting",
    "P11": "monitor",
    "P12": "secure admin accounts",
    "P13": "token hygiene",
    "P14": "scoped API keys",
    "P15": "disable what you don't need",
    "P16": "geographic permissions",
    "P17": "triggers for abnormal behaviour",
    "P18": "public key client validation",
    "P19": "validate incoming webhooks",
    "P20": "alerts and audit reports",
}

TEN_MIB = 10 * 1024 * 1024
DAY = 86400.0
KEY_MAX_AGE = 90 * DAY
KEY_UNUSED = 30 * DAY
WRITES = ("POST", "PUT", "PATCH", "DELETE")
BODIES = ("POST", "PUT", "PATCH")
Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    level: str  # fail | warn
    message: str
    path: str = ""  # where in the config, dotted (services[0].routes[1].auth); "" for store findings
    line: int | None = None
    route: str | None = None  # "POST /v1/orders"
    subject: str | None = None  # for store findings: "api_key:<id>", "consumer:<name>"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


@dataclass(frozen=True, slots=True)
class StoreView:
    """What the store-backed rules read: rows as plain mappings, and when."""

    keys: Sequence[Mapping[str, Any]]
    consumers: Sequence[Mapping[str, Any]]
    now: float
    chain: Any = None  # events.chain.Verification of the event log, when it could be read
    admins: Sequence[Mapping[str, Any]] | None = None  # admin accounts (None: no such table yet)


@dataclass
class _Context:
    loaded: LoadedConfig
    store: StoreView | None

    @property
    def s(self) -> GatewayConfig:
        return self.loaded.settings

    def line(self, loc: Loc) -> int | None:
        for end in range(len(loc), 0, -1):  # the nearest key that is written; never the whole file
            line = self.loaded.lines.get(loc[:end])
            if line is not None:
                return line
        return None


Check = Callable[[_Context, "Rule"], "list[Finding] | None"]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    level: str
    title: str
    fix: str
    check: Check
    in_check: bool = False  # shown by ``bastion check`` as a warning
    needs_store: bool = False

    @property
    def practice(self) -> str:
        return self.id.split(".", 1)[0]

    def at(
        self, ctx: _Context, loc: Loc, message: str, *, route: str | None = None, level: str | None = None
    ) -> Finding:
        return Finding(self.id, level or self.level, message, _dotted(loc), ctx.line(loc), route)


RULES: list[Rule] = []


def rule(
    id: str, level: str, title: str, fix: str, *, in_check: bool = False, needs_store: bool = False
) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        RULES.append(Rule(id, level, title, fix, fn, in_check, needs_store))
        return fn

    return register


def _routes(ctx: _Context) -> Iterable[tuple[Loc, ServiceSettings, RouteSettings, str]]:
    for si, svc in enumerate(ctx.s.services):
        for ri, route in enumerate(svc.routes):
            yield ("services", si, "routes", ri), svc, route, f"{' '.join(route.methods)} {route.path}"


# -- P1 least privilege ------------------------------------------------------------------------------


@rule(
    "P1.unauthenticated-write",
    "fail",
    "A route that changes data has auth: none",
    "Give the route an auth method (auth: [api_key] or [oauth2]) and scopes; only reads may be open.",
    in_check=True,
)
def _unauthenticated_write(ctx: _Context, r: Rule) -> list[Finding]:
    return [
        r.at(
            ctx,
            (*loc, "auth"),
            "a route that changes data (POST/PUT/PATCH/DELETE) has auth: none (P1)",
            route=rt,
        )
        for loc, _svc, route, rt in _routes(ctx)
        if route.auth == "none" and any(m in WRITES for m in route.methods)
    ]


@rule(
    "P1.route-without-scopes",
    "warn",
    "A route that authenticates consumers requires no scope",
    "List the scopes the route needs (scopes: [orders:read]): without them, every key of every consumer "
    "may call it.",
)
def _route_without_scopes(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = [
        (loc, rt) for loc, _s, route, rt in _routes(ctx) if route.authenticates_consumers and not route.scopes
    ]
    applicable = any(route.authenticates_consumers for _l, _s, route, _r in _routes(ctx))
    if not applicable:
        return None
    return [
        r.at(ctx, (*loc, "auth"), "any authenticated consumer may call this route", route=rt)
        for loc, rt in routes
    ]


# -- P2 inventory ------------------------------------------------------------------------------------


@rule(
    "P2.inventory-off",
    "warn",
    "Endpoints called that no route declares are not recorded",
    "Remove inventory.observe: false so `bastion inventory` can list undeclared endpoints.",
)
def _inventory_off(ctx: _Context, r: Rule) -> list[Finding]:
    if ctx.s.inventory.observe:
        return []
    return [r.at(ctx, ("inventory", "observe"), "inventory.observe is off")]


# -- P3 / P4 inputs ----------------------------------------------------------------------------------


def _takes_body(route: RouteSettings) -> bool:
    return any(m in BODIES for m in route.methods)


@rule(
    "P3.body-not-validated",
    "warn",
    "A route that takes a request body is not validated against a schema",
    "Give the service an OpenAPI document (openapi: orders.yaml) with validate: strict.",
)
def _body_not_validated(ctx: _Context, r: Rule) -> list[Finding] | None:
    out, any_body = [], False
    for loc, svc, route, rt in _routes(ctx):
        if not _takes_body(route) or route.twilio is not None or route.hmac is not None:
            continue  # signed webhooks are form posts from a known sender: their signature covers them
        any_body = True
        if svc.openapi is None or svc.validation == "off":
            why = "its service has no OpenAPI document" if svc.openapi is None else "validate: off"
            out.append(r.at(ctx, loc, f"the request body is not validated ({why})", route=rt))
    return out if any_body else None


@rule(
    "P4.free-text-not-inspected",
    "warn",
    "A route that takes a request body is not inspected for injection and XSS",
    "Set inspect: block on the route or the service (or inspection.default: block); monitor first if unsure.",
)
def _free_text_not_inspected(ctx: _Context, r: Rule) -> list[Finding] | None:
    out, any_body = [], False
    for loc, svc, route, rt in _routes(ctx):
        if not _takes_body(route):
            continue
        any_body = True
        mode = route.inspect or svc.inspect or ctx.s.inspection.default
        if mode == "off":
            where, said = (
                ((*loc, "inspect"), "the route says inspect: off")
                if route.inspect
                else ((*loc[:2], "inspect"), "the service says inspect: off")
                if svc.inspect
                else (loc, "inspection.default is off")
            )
            out.append(r.at(ctx, where, f"request bodies on this route are not inspected ({said})", route=rt))
    return out if any_body else None


# -- P5 authentication ---------------------------------------------------------------------------------


@rule(
    "P5.jwt-without-audience",
    "warn",
    "An external issuer's tokens are accepted whatever their audience",
    "Set jwt_issuers[].audience to the audience your provider puts in tokens for this API.",
    in_check=True,
)
def _jwt_audience(ctx: _Context, r: Rule) -> list[Finding] | None:
    if not ctx.s.jwt_issuers:
        return None
    return [
        r.at(
            ctx,
            ("jwt_issuers", i, "audience"),
            "no audience: tokens the provider issued for any other API are accepted (P5)",
        )
        for i, issuer in enumerate(ctx.s.jwt_issuers)
        if issuer.audience is None
    ]


@rule(
    "P5.unused-consumer-scopes",
    "warn",
    "A consumer holds scopes that no route requires (over-privileged)",
    "Narrow the consumer's scopes (PUT /admin/v1/consumers/{name}/scopes) or add the routes that need them.",
    needs_store=True,
)
def _unused_scopes(ctx: _Context, r: Rule) -> list[Finding] | None:
    if ctx.store is None:
        return None
    used = {scope for _l, _s, route, _r in _routes(ctx) for scope in route.scopes}
    out = []
    for c in ctx.store.consumers:
        if c["status"] != "active":
            continue
        extra = sorted(set(json.loads(c["scopes"])) - used)
        if extra:
            out.append(
                Finding(
                    r.id,
                    r.level,
                    f"consumer {c['name']} holds scopes no route requires: {', '.join(extra)}",
                    subject=f"consumer:{c['name']}",
                )
            )
    return out


# -- P6 encryption -----------------------------------------------------------------------------------


@rule(
    "P6.plaintext-listener",
    "fail",
    "The gateway listens beyond loopback without TLS",
    "Configure tls: (cert_file, key_file), or declare the TLS proxy in front of it in trusted_proxies.",
    in_check=True,
)
def _plaintext(ctx: _Context, r: Rule) -> list[Finding]:
    s = ctx.s
    if s.tls is None and not s.listen.is_loopback and not s.trusted_proxies:
        return [
            r.at(ctx, ("listen",), "listening beyond loopback without TLS and without a trusted TLS proxy")
        ]
    return []


@rule(
    "P6.upstream-tls-verify-off",
    "fail",
    "TLS verification of an upstream is turned off",
    "Remove tls_verify: false; for a private CA give ca_file: instead.",
    in_check=True,
)
def _tls_verify(ctx: _Context, r: Rule) -> list[Finding]:
    return [
        r.at(ctx, ("services", i, "tls_verify"), "TLS verification of the upstream is turned off")
        for i, svc in enumerate(ctx.s.services)
        if not svc.tls_verify
    ]


@rule(
    "P6.webhook-over-http",
    "warn",
    "A signed webhook is called over plain http",
    "Use an https:// public_url (or public_base_url) for the webhook.",
    in_check=True,
)
def _webhook_http(ctx: _Context, r: Rule) -> list[Finding] | None:
    out, any_twilio = [], False
    for loc, _svc, route, rt in _routes(ctx):
        if route.twilio is None:
            continue
        any_twilio = True
        url = route.twilio.public_url or ctx.s.public_base_url
        if url is not None and url.startswith("http://"):
            out.append(
                r.at(
                    ctx,
                    (*loc, "twilio"),
                    "Twilio calls this webhook over plain http: its parameters travel unencrypted (P6)",
                    route=rt,
                )
            )
    return out if any_twilio else None


# -- P7 oversharing ----------------------------------------------------------------------------------


@rule(
    "P7.credential-forwarded",
    "warn",
    "The caller's credential is forwarded to the upstream",
    "Remove forward_credentials: true; the upstream learns the caller from X-Bastion-Consumer.",
    in_check=True,
)
def _forwarded(ctx: _Context, r: Rule) -> list[Finding]:
    return [
        r.at(
            ctx,
            (*loc, "forward_credentials"),
            "the caller's credential is forwarded to the upstream; it needs only X-Bastion-Consumer",
            route=rt,
        )
        for loc, _svc, route, rt in _routes(ctx)
        if route.forward_credentials and route.auth != "none"
    ]


@rule(
    "P7.upstream-errors-exposed",
    "warn",
    "Upstream 5xx bodies (stack traces, SQL errors) reach clients",
    "Remove responses.replace_upstream_errors: false.",
)
def _upstream_errors(ctx: _Context, r: Rule) -> list[Finding]:
    if ctx.s.responses.replace_upstream_errors:
        return []
    return [
        r.at(ctx, ("responses", "replace_upstream_errors"), "upstream error bodies are passed to clients")
    ]


# -- P8 network --------------------------------------------------------------------------------------


@rule(
    "P8.admin-open-to-every-address",
    "fail",
    "The admin API accepts connections from every address",
    "Narrow admin.allow_ips to the operators' networks (e.g. [10.0.0.0/8]) and keep admin.listen on a "
    "private interface.",
    in_check=True,
)
def _admin_open(ctx: _Context, r: Rule) -> list[Finding] | None:
    admin = ctx.s.admin
    if admin is None:
        return None
    if not any(n.prefixlen == 0 for n in admin.allow_ips):
        return []
    # On loopback only local processes reach it: a warning. Anywhere else, anyone who can route to it.
    level = "warn" if admin.listen.is_loopback else "fail"
    return [r.at(ctx, ("admin", "allow_ips"), "the admin API is open to every address", level=level)]


@rule(
    "P8.trusted-proxy-any",
    "fail",
    "Every address is trusted as a proxy: any client can choose its own IP with X-Forwarded-For",
    "List only your proxies' addresses in trusted_proxies.",
)
def _trust_any(ctx: _Context, r: Rule) -> list[Finding]:
    if any(n.prefixlen == 0 for n in ctx.s.trusted_proxies):
        return [r.at(ctx, ("trusted_proxies",), "trusted_proxies includes every address")]
    return []


# -- P9 sizes ----------------------------------------------------------------------------------------


@rule(
    "P9.body-limit-over-10mib",
    "warn",
    "A body limit above 10 MiB",
    "Lower max_body (limits.max_body or the route's) to what the API needs; the default is 1MiB.",
    in_check=True,
)
def _body_limit(ctx: _Context, r: Rule) -> list[Finding]:
    out = []
    if ctx.s.limits.max_body > TEN_MIB:
        out.append(r.at(ctx, ("limits", "max_body"), "a default body limit above 10 MiB invites abuse (P9)"))
    for loc, _svc, route, rt in _routes(ctx):
        if route.max_body is not None and route.max_body > TEN_MIB:
            out.append(
                r.at(ctx, (*loc, "max_body"), "a body limit above 10 MiB invites abuse (P9)", route=rt)
            )
    return out


# -- P10 rate limits ---------------------------------------------------------------------------------


@rule(
    "P10.route-without-rate-limit",
    "warn",
    "A route without a rate limit",
    "Add rate_limit: [10/second, 1000/hour] (per consumer on authenticated routes, per IP on open ones).",
)
def _no_rate_limit(ctx: _Context, r: Rule) -> list[Finding]:
    return [
        r.at(ctx, loc, "no rate limit on this route", route=rt)
        for loc, _svc, route, rt in _routes(ctx)
        if not route.rate_limit
    ]


# -- P11 / P17 / P20 monitoring ----------------------------------------------------------------------


@rule(
    "P11.no-event-sink",
    "warn",
    "Events stay in the gateway's database: no export to log management",
    "Add events.sinks (jsonl, syslog or webhook) feeding your log management.",
)
def _no_sink(ctx: _Context, r: Rule) -> list[Finding]:
    return [] if ctx.s.events.sinks else [r.at(ctx, ("events",), "events.sinks is empty")]


@rule(
    "P11.event-log-tampered",
    "fail",
    "The event log's hash chains do not verify: events were edited, deleted or inserted",
    "Investigate with bastion events verify; restore the rows from an export (events.sinks) or a backup.",
    needs_store=True,
)
def _chain(ctx: _Context, r: Rule) -> list[Finding] | None:
    assert ctx.store is not None
    result = ctx.store.chain
    if result is None:
        return None
    out = [
        Finding(r.id, r.level, f"{p.kind}: {p}", subject=f"event:{p.event_id}" if p.event_id else None)
        for p in result.problems[:20]
    ]
    if len(result.problems) > 20:
        out.append(Finding(r.id, r.level, f"and {len(result.problems) - 20} more problem(s)"))
    return out


@rule(
    "P17.no-alert-rule",
    "warn",
    "No alert rule watches for abnormal behaviour",
    "Add alerts.rules, e.g. {name: stuffing, builtin: credential_stuffing, channels: [secops]}.",
)
def _no_rule(ctx: _Context, r: Rule) -> list[Finding]:
    return [] if ctx.s.alerts.rules else [r.at(ctx, ("alerts",), "alerts.rules is empty")]


@rule(
    "P20.no-alert-channel",
    "warn",
    "Alerts reach nobody: no alert channel",
    "Add alerts.channels (webhook or email) and name them in the rules' channels.",
)
def _no_channel(ctx: _Context, r: Rule) -> list[Finding]:
    return [] if ctx.s.alerts.channels else [r.at(ctx, ("alerts",), "alerts.channels is empty")]


# -- P6 / P15 / P16 / P17 / P18 egress ------------------------------------------------------------------


def _egress(ctx: _Context) -> list[tuple[int, Any]]:
    return list(enumerate(ctx.s.egress))


def _calls_twilio(eg: Any) -> bool:
    host = (urlsplit(eg.target).hostname or "").lower()
    return host == "twilio.com" or host.endswith(".twilio.com")


@rule(
    "P15.egress-without-allow",
    "fail",
    "An egress route allows no operation",
    "List the provider operations the application needs under allow: (deny by default).",
    in_check=True,
)
def _egress_allow(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = _egress(ctx)
    if not routes:
        return None
    return [
        r.at(ctx, ("egress", i, "name"), f"egress route {eg.name} has no allow: every call is refused")
        for i, eg in routes
        if not eg.allow
    ]


@rule(
    "P15.egress-allow-too-broad",
    "warn",
    "An egress allow rule takes any method or a whole subtree",
    "Name each operation: a method and a path without {name:path} catch-alls.",
)
def _egress_broad(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = _egress(ctx)
    if not routes:
        return None
    return [
        r.at(ctx, ("egress", i, "allow", j), f"egress route {eg.name} allows {rule.method} {rule.path}")
        for i, eg in routes
        for j, rule in enumerate(eg.allow)
        if rule.method == "*" or ":path}" in rule.path
    ]


@rule(
    "P16.egress-without-geo",
    "fail",
    "Messages or calls through an egress route go to any country",
    "Add geo: {fields: [To], allow_countries: [...]} to the egress route.",
    in_check=True,
)
def _egress_geo(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = _egress(ctx)
    if not routes:
        return None
    out = []
    for i, eg in routes:
        if eg.geo is None:
            out.append(
                r.at(
                    ctx,
                    ("egress", i, "name"),
                    f"egress route {eg.name} does not check destination numbers",
                    level="fail" if _calls_twilio(eg) else "warn",
                )
            )
        elif eg.geo.allow_countries is None:
            out.append(
                r.at(
                    ctx,
                    ("egress", i, "geo"),
                    f"egress route {eg.name} sends to every country not denied; list allow_countries",
                    level="warn",
                )
            )
    return out


@rule(
    "P17.egress-pumping-unguarded",
    "warn",
    "SMS pumping is not cut off on an egress route",
    "Keep sms_pumping enabled with auto_block: true, and add the sms_pumping alert rule.",
)
def _egress_pumping(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = [(i, eg) for i, eg in _egress(ctx) if eg.geo is not None]
    if not routes:
        return None
    out = []
    alerted = any(rule.builtin == "sms_pumping" for rule in ctx.s.alerts.rules)
    for i, eg in routes:
        p = eg.sms_pumping
        if not p.enabled or not p.auto_block:
            what = "disabled" if not p.enabled else "only alerted (auto_block: false)"
            out.append(
                r.at(ctx, ("egress", i, "sms_pumping"), f"egress route {eg.name}: SMS pumping is {what}")
            )
        elif not alerted:
            out.append(
                r.at(ctx, ("alerts",), f"no sms_pumping alert rule: pumping on {eg.name} is blocked silently")
            )
    return out


@rule(
    "P6.egress-tls-verify-off",
    "fail",
    "TLS verification of an egress provider is turned off",
    "Remove tls_verify: false; for a private CA or an inspecting proxy give ca_file: instead.",
    in_check=True,
)
def _egress_tls(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = _egress(ctx)
    if not routes:
        return None
    return [
        r.at(
            ctx,
            ("egress", i, "tls_verify"),
            f"egress route {eg.name} does not verify the provider's certificate",
        )
        for i, eg in routes
        if not eg.tls_verify
    ]


@rule(
    "P18.egress-without-pkcv",
    "warn",
    "Requests to Twilio are not signed with Public Key Client Validation",
    "Add pkcv: {credential_id: CR…, private_key: ${file:…}} and enforce PKCV in the Twilio console.",
)
def _egress_pkcv(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = [(i, eg) for i, eg in _egress(ctx) if _calls_twilio(eg)]
    if not routes:
        return None
    return [
        r.at(ctx, ("egress", i, "name"), f"egress route {eg.name} sends unsigned requests to Twilio")
        for i, eg in routes
        if eg.pkcv is None
    ]


# -- P12 admin ---------------------------------------------------------------------------------------


@rule(
    "P12.short-admin-token",
    "fail",
    "The admin token is short",
    "Use at least 24 random characters: admin: {token: ${env:BASTION_ADMIN_TOKEN}} with "
    "openssl rand -base64 32.",
    in_check=True,
)
def _short_token(ctx: _Context, r: Rule) -> list[Finding] | None:
    if ctx.s.admin is None:
        return None
    if len(ctx.s.admin.token.reveal()) < 24:
        return [r.at(ctx, ("admin", "token"), "the admin token is shorter than 24 characters")]
    return []


@rule(
    "P12.admin-mfa-not-required",
    "fail",
    "Admin accounts may sign in without a second factor",
    "Remove admin.accounts.require_mfa: false.",
    in_check=True,
)
def _mfa_not_required(ctx: _Context, r: Rule) -> list[Finding] | None:
    admin = ctx.s.admin
    if admin is None:
        return None
    if admin.accounts.require_mfa:
        return []
    return [r.at(ctx, ("admin", "accounts", "require_mfa"), "admin.accounts.require_mfa is false")]


@rule(
    "P12.admin-without-mfa",
    "fail",
    "An active admin account has no TOTP enrolled",
    "Have the account enrol TOTP (sign in, or bastion admins reset-mfa then sign in); disable it if unused.",
    needs_store=True,
)
def _admin_without_mfa(ctx: _Context, r: Rule) -> list[Finding] | None:
    assert ctx.store is not None
    admins = ctx.store.admins
    if admins is None or ctx.s.admin is None:
        return None
    return [
        Finding(
            r.id,
            r.level,
            f"admin account {a['name']} ({a['role']}) has no TOTP: whoever has its password or email "
            "can sign in and enrol their own",
            subject=f"admin:{a['name']}",
        )
        for a in admins
        if a["status"] == "active" and not a["has_totp"]
    ]


@rule(
    "P12.admin-token-still-enabled",
    "warn",
    "The bootstrap admin token still works although admin accounts exist",
    "Once people sign in with accounts, set admin.token_enabled: false (keep a token only for automation).",
    needs_store=True,
)
def _token_still_enabled(ctx: _Context, r: Rule) -> list[Finding] | None:
    assert ctx.store is not None
    admin = ctx.s.admin
    if admin is None or ctx.store.admins is None:
        return None
    active = [a for a in ctx.store.admins if a["status"] == "active" and a["role"] == "admin"]
    if not active or not admin.token_enabled:
        return []
    return [
        r.at(ctx, ("admin", "token"), f"{len(active)} admin account(s) exist and admin.token still works")
    ]


# -- P13 token hygiene -------------------------------------------------------------------------------


@rule(
    "P13.literal-secret",
    "fail",
    "A secret is written in the config instead of referenced",
    "Replace the value by ${env:NAME} or ${file:/path} and rotate the secret: it has been in a file.",
)
def _literal(ctx: _Context, r: Rule) -> list[Finding]:
    return [
        Finding(r.id, r.level, w.message, w.path, w.line)
        for w in ctx.loaded.warnings
        if "literal secret" in w.message
    ]


@rule(
    "P13.api-key-in-query",
    "fail",
    "API keys are accepted in query strings",
    "Remove api_key_in_query: true; send keys in the X-API-Key or Authorization header.",
    in_check=True,
)
def _key_in_query(ctx: _Context, r: Rule) -> list[Finding]:
    return [
        r.at(
            ctx,
            (*loc, "api_key_in_query"),
            "API keys in query strings end up in logs, browser history and Referer headers (P13)",
            route=rt,
        )
        for loc, _svc, route, rt in _routes(ctx)
        if route.api_key_in_query
    ]


@rule(
    "P13.key-lifetime-over-a-year",
    "warn",
    "Keys may live longer than a year",
    "Lower identity.max_key_ttl (90d is the default).",
    in_check=True,
)
def _long_ttl(ctx: _Context, r: Rule) -> list[Finding]:
    if ctx.s.identity.max_key_ttl > 365 * DAY:
        return [
            r.at(
                ctx,
                ("identity", "max_key_ttl"),
                "keys may live longer than a year; rotate credentials at least yearly (P13)",
            )
        ]
    return []


def _active_keys(ctx: _Context) -> list[Mapping[str, Any]] | None:
    if ctx.store is None:
        return None
    now = ctx.store.now
    return [
        k
        for k in ctx.store.keys
        if k["revoked_at"] is None and (k["expires_at"] is None or k["expires_at"] > now)
    ]


def _key_finding(r: Rule, key: Mapping[str, Any], message: str) -> Finding:
    return Finding(
        r.id, r.level, f"key {key['id']} ({key['consumer']}): {message}", subject=f"api_key:{key['id']}"
    )


@rule(
    "P13.key-without-expiry",
    "warn",
    "A live API key never expires",
    "Rotate it (bastion keys rotate ID): the new key expires within identity.max_key_ttl.",
    needs_store=True,
)
def _no_expiry(ctx: _Context, r: Rule) -> list[Finding] | None:
    keys = _active_keys(ctx)
    if keys is None:
        return None
    return [_key_finding(r, k, "no expiry") for k in keys if k["expires_at"] is None]


@rule(
    "P13.key-older-than-90-days",
    "warn",
    "A live API key is older than 90 days",
    "Rotate it (bastion keys rotate ID) and give the new key to its owner.",
    needs_store=True,
)
def _old_keys(ctx: _Context, r: Rule) -> list[Finding] | None:
    keys = _active_keys(ctx)
    if keys is None or ctx.store is None:
        return None
    now = ctx.store.now
    return [
        _key_finding(r, k, f"created {int((now - k['created_at']) // DAY)} days ago")
        for k in keys
        if now - k["created_at"] > KEY_MAX_AGE
    ]


@rule(
    "P13.key-unused-30-days",
    "warn",
    "A live API key has not been used for 30 days",
    "Revoke it (bastion keys revoke ID) if nobody needs it.",
    needs_store=True,
)
def _unused_keys(ctx: _Context, r: Rule) -> list[Finding] | None:
    keys = _active_keys(ctx)
    if keys is None or ctx.store is None:
        return None
    now = ctx.store.now
    out = []
    for k in keys:
        last = k["last_used_at"] or k["created_at"]
        if now - last > KEY_UNUSED:
            when = (
                "never used"
                if k["last_used_at"] is None
                else f"last used {int((now - last) // DAY)} days ago"
            )
            out.append(_key_finding(r, k, when))
    return out


# -- P14 scoped keys ---------------------------------------------------------------------------------


@rule(
    "P14.key-not-narrowed",
    "warn",
    "A live API key holds every scope of its consumer, with no permissions and no address list",
    "Create keys with only what each client needs (bastion keys create --scope, --permission "
    "'GET /v1/orders/*', --allow-ip), then revoke the broad key.",
    needs_store=True,
)
def _broad_keys(ctx: _Context, r: Rule) -> list[Finding] | None:
    keys = _active_keys(ctx)
    if keys is None or ctx.store is None:
        return None
    held = {c["name"]: set(json.loads(c["scopes"])) for c in ctx.store.consumers}
    out = []
    for k in keys:
        owner = held.get(k["consumer"], set())
        narrowed = (
            set(json.loads(k["scopes"])) < owner or json.loads(k["permissions"]) or json.loads(k["ip_allow"])
        )
        if len(owner) > 1 and not narrowed:
            out.append(_key_finding(r, k, f"all of the consumer's scopes ({', '.join(sorted(owner))})"))
    return out


# -- P19 webhooks ------------------------------------------------------------------------------------


@rule(
    "P19.twilio-url-from-request",
    "warn",
    "The signed URL of a Twilio webhook is rebuilt from each request",
    "Set twilio.public_url (or public_base_url) to the URL Twilio calls.",
    in_check=True,
)
def _twilio_url(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = [(loc, route, rt) for loc, _s, route, rt in _routes(ctx) if route.twilio is not None]
    if not routes:
        return None
    return [
        r.at(
            ctx,
            (*loc, "twilio"),
            "the signed URL is rebuilt from each request's Host and scheme; set public_url or "
            "public_base_url to the URL Twilio calls (P19)",
            route=rt,
        )
        for loc, route, rt in routes
        if route.twilio is not None and (route.twilio.public_url or ctx.s.public_base_url) is None
    ]


@rule(
    "P19.webhook-without-timestamp",
    "warn",
    "A webhook layout signs no timestamp: an old delivery replays once forgotten",
    "Prefer a sender that signs a timestamp (standard_webhooks, stripe), or set timestamp_header (custom).",
    in_check=True,
)
def _no_timestamp(ctx: _Context, r: Rule) -> list[Finding] | None:
    routes = [(loc, route, rt) for loc, _s, route, rt in _routes(ctx) if route.hmac is not None]
    if not routes:
        return None
    out = []
    for loc, route, rt in routes:
        h = route.hmac
        if h is not None and (h.preset == "github" or (h.preset == "custom" and h.timestamp_header is None)):
            sender = "GitHub signs" if h.preset == "github" else "this layout signs"
            out.append(
                r.at(
                    ctx,
                    (*loc, "hmac"),
                    f"{sender} no timestamp: a captured delivery is refused as a replay only while it is "
                    "remembered (tolerance), and accepted after that (P19)",
                    route=rt,
                )
            )
    return out


_GUESSABLE = "a signing secret under 16 bytes can be guessed offline from one signed request (P19)"


@rule(
    "P19.short-signing-secret",
    "fail",
    "A webhook signing secret is shorter than 16 bytes",
    "Use the secret the sender generated (Twilio's Auth Token, a whsec_ secret), at least 16 random bytes.",
    in_check=True,
)
def _short_secret(ctx: _Context, r: Rule) -> list[Finding] | None:
    out, any_signed = [], False
    for loc, _svc, route, rt in _routes(ctx):
        h, tw = route.hmac, route.twilio
        if h is None and tw is None:
            continue
        any_signed = True
        for name, secrets in (
            ("twilio.auth_tokens", tw.auth_tokens if tw else []),
            ("twilio.shared_keys", list(tw.shared_keys.values()) if tw else []),
            ("hmac.secrets", h.secrets if h else []),
        ):
            if any(len(sec.reveal().encode("utf-8")) < 16 for sec in secrets):
                out.append(
                    r.at(
                        ctx,
                        (*loc, *name.split(".")),
                        _GUESSABLE,
                        route=rt,
                    )
                )
    return out if any_signed else None


# -- running the rules ---------------------------------------------------------------------------------


@dataclass
class RuleResult:
    rule: Rule
    status: str  # pass | warn | fail | not_applicable | not_checked
    findings: list[Finding]


@dataclass
class AuditReport:
    source: str
    store_read: bool
    store_detail: str
    results: list[RuleResult]

    @property
    def score(self) -> int:
        scored = [r for r in self.results if r.status in ("pass", "warn", "fail")]
        if not scored:
            return 100
        points = sum(1.0 if r.status == "pass" else 0.5 if r.status == "warn" else 0.0 for r in scored)
        return int(100 * points / len(scored))

    @property
    def failed(self) -> bool:
        return any(r.status == "fail" for r in self.results)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("pass", "warn", "fail", "not_applicable", "not_checked"), 0)
        for r in self.results:
            out[r.status] += 1
        return out

    def practices(self) -> list[tuple[str, str, list[RuleResult]]]:
        """Every practice P1-P20, its status (the worst of its rules) and its rules."""
        out = []
        for pid in PRACTICES:
            results = [r for r in self.results if r.rule.practice == pid]
            statuses = {r.status for r in results}
            status = next(
                (s for s in ("fail", "warn", "pass", "not_applicable") if s in statuses), "not_checked"
            )
            out.append((pid, status, results))
        return out

    def document(self) -> dict[str, Any]:
        return {
            "config": self.source,
            "store": {"read": self.store_read, "detail": self.store_detail},
            "score": self.score,
            "score_formula": "100 * (pass + warn / 2) / (pass + warn + fail), rounded down",
            "summary": self.counts(),
            "practices": [
                {
                    "id": pid,
                    "title": PRACTICES[pid],
                    "status": status,
                    "checks": [
                        {
                            "rule": r.rule.id,
                            "title": r.rule.title,
                            "status": r.status,
                            "fix": r.rule.fix,
                            "findings": [
                                {
                                    "level": f.level,
                                    "message": f.message,
                                    "file": self.source if f.line is not None or f.path else None,
                                    "line": f.line,
                                    "path": f.path or None,
                                    "route": f.route,
                                    "subject": f.subject,
                                }
                                for f in r.findings
                            ],
                        }
                        for r in results
                    ],
                }
                for pid, status, results in self.practices()
            ],
        }


def run_rules(loaded: LoadedConfig, store: StoreView | None, rules: Iterable[Rule] = ()) -> list[RuleResult]:
    ctx = _Context(loaded, store)
    out = []
    for r in rules or RULES:
        if r.needs_store and store is None:
            out.append(RuleResult(r, "not_checked", []))
            continue
        findings = r.check(ctx, r)
        if findings is None:
            out.append(RuleResult(r, "not_applicable", []))
            continue
        levels = {f.level for f in findings}
        status = "fail" if "fail" in levels else "warn" if levels else "pass"
        out.append(RuleResult(r, status, findings))
    return out


def audit(loaded: LoadedConfig, store: StoreView | None, store_detail: str) -> AuditReport:
    return AuditReport(loaded.source, store is not None, store_detail, run_rules(loaded, store))


def check_warnings(loaded: LoadedConfig) -> list[ConfigIssue]:
    """The findings ``bastion check`` shows as warnings: those of the rules marked ``in_check``."""
    results = run_rules(loaded, None, [r for r in RULES if r.in_check])
    return [ConfigIssue(loaded.source, f.line, f.path, f.message) for res in results for f in res.findings]


def store_absent(url: str) -> str | None:
    """Why a SQLite store cannot be read without creating it (in memory, or no such file), else None."""
    if url.startswith("sqlite:///"):
        file = url.removeprefix("sqlite:///")
        if file in ("", ":memory:"):
            return "the store is in memory: nothing to read"
        if not Path(file).expanduser().exists():
            return f"no database at {file}"
    elif url.startswith("sqlite"):
        return "the store is in memory: nothing to read"
    return None


def read_store(loaded: LoadedConfig, *, now: float | None = None) -> tuple[StoreView | None, str]:
    """The store's keys and consumers, or None and why not. Never creates a database: a SQLite file that
    does not exist is reported as such, and PostgreSQL is only connected to."""
    from sqlalchemy import select

    from ..store.database import open_database
    from ..store.schema import api_keys_table, consumers_table

    url = loaded.settings.storage.database
    absent = store_absent(url)
    if absent is not None:
        return None, absent
    try:
        engine = open_database(url, migrate_schema=False)
    except Exception as exc:  # unreachable or unusable database: say so, audit the config alone
        return None, f"cannot open the database ({type(exc).__name__})"
    try:
        k, c = api_keys_table.c, consumers_table.c
        with engine.connect() as conn:
            keys = [
                dict(r._mapping)
                for r in conn.execute(
                    select(
                        k.id,
                        k.created_at,
                        k.expires_at,
                        k.last_used_at,
                        k.revoked_at,
                        k.scopes,
                        k.permissions,
                        k.ip_allow,
                        c.name.label("consumer"),
                    )
                    .join(consumers_table, k.consumer_id == c.id)
                    .order_by(k.created_at, k.id)
                )
            ]
            consumers = [
                dict(r._mapping) for r in conn.execute(select(c.name, c.status, c.scopes).order_by(c.name))
            ]
        chain = _verify_events(engine, loaded)
        admins = _admins(engine)
    except Exception as exc:  # no such table (never migrated), lost connection
        return None, f"cannot read the database ({type(exc).__name__})"
    finally:
        engine.dispose()
    when = time.time() if now is None else now
    detail = f"read {len(keys)} key(s) and {len(consumers)} consumer(s)"
    if chain is not None:
        detail += f", verified {chain.events} event(s)"
    if admins is not None:
        detail += f", {len(admins)} admin account(s)"
    return StoreView(keys, consumers, when, chain, admins), detail


def _admins(engine: Any) -> list[dict[str, Any]] | None:
    """Admin accounts without their secrets: whether TOTP is enrolled, never the secret itself."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from ..store.schema import admin_accounts_table

    a = admin_accounts_table.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(a.name, a.role, a.status, a.totp_secret.is_not(None).label("has_totp")).order_by(
                    a.name
                )
            )
            return [dict(r._mapping) for r in rows]
    except SQLAlchemyError:  # a store from before admin accounts (schema 0006): nothing to say about them
        return None


def _verify_events(engine: Any, loaded: LoadedConfig) -> Any:
    from ..events.chain import verify

    key = loaded.settings.events.chain_key
    return verify(engine, key.reveal().encode("utf-8") if key is not None else None)


# -- output ------------------------------------------------------------------------------------------

_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "not_applicable": "n/a ", "not_checked": "----"}


def to_text(report: AuditReport) -> str:
    lines = [f"bastion audit of {report.source}"]
    lines.append(f"store: {'read' if report.store_read else 'not read'} ({report.store_detail})")
    for pid, status, results in report.practices():
        lines.append(f"{_MARK[status]} {pid} {PRACTICES[pid]}" + ("" if results else " (no check yet)"))
        for r in results:
            if r.status in ("pass", "not_applicable", "not_checked"):
                lines.append(f"       {_MARK[r.status]} {r.rule.id}")
                continue
            lines.append(f"       {_MARK[r.status]} {r.rule.id}: {r.rule.title}")
            for f in r.findings:
                where = f"{report.source}:{f.line}" if f.line is not None else (f.subject or report.source)
                extra = ", ".join(x for x in (f.path, f.route) if x)
                lines.append(f"            {f.level}: {where}{f' ({extra})' if extra else ''}: {f.message}")
            lines.append(f"            fix: {r.rule.fix}")
    c = report.counts()
    lines.append(
        f"score: {report.score}/100 ({c['pass']} pass, {c['warn']} warn, {c['fail']} fail; "
        f"{c['not_applicable']} not applicable, {c['not_checked']} not checked)"
    )
    return "\n".join(lines)


def to_sarif(report: AuditReport, version: str) -> dict[str, Any]:
    from .scan import sarif_log

    rules = [
        {
            "id": r.id,
            "name": r.id.split(".", 1)[1],
            "shortDescription": {"text": r.title},
            "help": {"text": r.fix},
            "defaultConfiguration": {"level": "error" if r.level == "fail" else "warning"},
            "properties": {"practice": r.practice, "practiceTitle": PRACTICES[r.practice]},
        }
        for r in RULES
    ]
    index = {r.id: i for i, r in enumerate(RULES)}
    uri = quote(Path(report.source).as_posix())
    results = []
    for res in report.results:
        for f in res.findings:
            physical: dict[str, Any] = {"artifactLocation": {"uri": uri}}
            if f.line is not None:
                physical["region"] = {"startLine": f.line}
            location: dict[str, Any] = {"physicalLocation": physical}
            logical = f.path or f.subject
            if logical:
                location["logicalLocations"] = [{"fullyQualifiedName": logical}]
            results.append(
                {
                    "ruleId": f.rule,
                    "ruleIndex": index[f.rule],
                    "level": "error" if f.level == "fail" else "warning",
                    "message": {
                        "text": f"{f.message}{f' ({f.route})' if f.route else ''}. Fix: {res.rule.fix}"
                    },
                    "locations": [location],
                }
            )
    return sarif_log(
        {"name": "bastion-audit", "version": version, "rules": rules},
        results,
        properties={"score": report.score, "storeRead": report.store_read},
    )
