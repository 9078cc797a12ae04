"""Compiling ``egress:`` entries into routes (docs/egress.md).

An egress route is one route on the gateway listener, ``<listen_path>/{operation:path}``, for every
method. Its chain, cheapest first: caller address → body size → the caller's authentication (API key —
also as the password of HTTP Basic — OAuth2 or JWT, with the route's scopes) → the caller list → the
operation rules → destination numbers (geo permissions) → URL fields (SSRF) → caps → SMS pumping. Its
target carries an :class:`bastion.egress.Outbound`, which the gateway asks for the provider's headers:
the provider credential injected, the caller's credentials and internal headers dropped, and a PKCV
signature when configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..checks.egress_caps import Cap, EgressCaps
from ..checks.egress_operations import CallerCheck, OperationRules, check_rule_templates
from ..checks.geo import GeoPermissions
from ..checks.ip_access import IpAccess
from ..checks.json_body import JsonLimits
from ..checks.limits import BodyLimit
from ..checks.outbound_urls import Resolver, UrlFields, system_resolver
from ..checks.sms_pumping import DeliveryReports, PumpingDetector, PumpingPolicy
from ..config.egress import EgressSettings
from ..config.models import GatewayConfig, RouteSettings
from ..core.chain import Check
from ..core.router import Route
from ..egress import Outbound, OutboundHeaders, PkcvSigner

__all__ = ["EGRESS_METHODS", "compile_egress", "delivery_reports", "pumping_detector"]

EGRESS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _credential(eg: EgressSettings) -> OutboundHeaders:
    c = eg.credentials
    if c.basic is not None:
        return OutboundHeaders.basic(c.basic.username, c.basic.password.reveal())
    if c.bearer is not None:
        return OutboundHeaders.bearer(c.bearer.reveal())
    assert c.header is not None  # the config model requires exactly one
    return OutboundHeaders.header(c.header.name, c.header.value.reveal())


def pumping_policy(eg: EgressSettings) -> PumpingPolicy:
    p = eg.sms_pumping
    return PumpingPolicy(
        auto_block=p.auto_block,
        sequential=p.sequential,
        within=p.within,
        range_digits=p.range_digits,
        block_for=p.block_for,
        status=p.status,
        volume=p.volume.enabled,
        volume_within=p.volume.within,
        volume_factor=p.volume.factor,
        volume_min_count=p.volume.min_count,
        completion=p.completion.enabled,
        completion_within=p.completion.within,
        completion_min_reports=p.completion.min_reports,
        completion_min_rate=p.completion.min_rate,
        completion_prefix=p.completion.prefix_length,
    )


def pumping_detector(eg: EgressSettings, state: Any, clock: Callable[[], float]) -> PumpingDetector:
    return PumpingDetector(eg.name, pumping_policy(eg), state.tallies, clock)


def delivery_reports(
    settings: GatewayConfig,
    name: str,
    state: Any,
    json_limits: JsonLimits,
    clock: Callable[[], float],
) -> DeliveryReports:
    """The check a status-callback route runs after its signature check (``delivery_reports: <egress>``)."""
    eg = next(e for e in settings.egress if e.name == name)
    return DeliveryReports(pumping_detector(eg, state, clock), json_limits)


def compile_egress(
    settings: GatewayConfig,
    identity: Any,
    state: Any,
    clock: Callable[[], float],
    *,
    spec_for: Callable[[EgressSettings, Outbound], object],
    resolver: Resolver | None = None,
) -> list[Route]:
    """One route per egress entry. ``spec_for`` builds the gateway's upstream spec (runtime/gateway.py)."""
    routes: list[Route] = []
    json_limits = JsonLimits(**settings.limits.json_.model_dump())
    for index, eg in enumerate(settings.egress):
        route_id = f"egress:{eg.name}"
        template = eg.listen_path + "/{operation:path}"
        checks: list[Check] = []
        ip = IpAccess(eg.ip_allow, [], scope="route")
        if ip:
            checks.append(ip)
        max_body = eg.max_body if eg.max_body is not None else settings.limits.max_body
        checks.append(BodyLimit(max_body))
        auth = RouteSettings.model_validate(
            {"path": template, "methods": sorted(EGRESS_METHODS), "auth": list(eg.auth), "scopes": eg.scopes}
        )
        if identity is None:
            raise RuntimeError("egress routes need the identity runtime")
        checks.extend(identity.checks_for(auth, route_id, basic=True))
        checks.append(CallerCheck(eg.callers))
        rules = [(r.method, r.path) for r in eg.allow], [(r.method, r.path) for r in eg.deny]
        problem = check_rule_templates(rules[0] + rules[1])
        if problem is not None:
            raise EgressProblem(index, problem)
        checks.append(OperationRules(eg.listen_path, *rules))
        if eg.geo is not None:
            g = eg.geo
            checks.append(
                GeoPermissions(
                    g.fields,
                    allow_countries=g.allow_countries,
                    deny_countries=g.deny_countries,
                    deny_prefixes=g.deny_prefixes,
                    deny_types=g.deny_types,
                    default_region=g.default_region,
                    require_valid=g.require_valid,
                    json_limits=json_limits,
                )
            )
        if eg.block_private_urls or eg.url_allow_hosts is not None:
            checks.append(
                UrlFields(
                    block_private=eg.block_private_urls,
                    allow_hosts=eg.url_allow_hosts,
                    json_limits=json_limits,
                    resolver=resolver or system_resolver,
                )
            )
        if eg.caps:
            caps = [Cap(c.per, c.limit, c.prefix_length) for c in eg.caps]
            checks.append(EgressCaps(eg.name, caps, state.counters, clock))
        if eg.geo is not None and eg.sms_pumping.enabled:
            checks.append(pumping_detector(eg, state, clock))
        signer = None
        iss = sub = None
        if eg.pkcv is not None:
            k = eg.pkcv
            signer = PkcvSigner(k.private_key.reveal(), k.credential_id, algorithm=k.algorithm, ttl=k.ttl)
            basic = eg.credentials.basic
            iss = k.api_key_sid or (basic.username if basic is not None else None)
            sub = k.account_sid
        outbound = Outbound(
            prefix=eg.listen_path,
            credential=_credential(eg),
            forward=eg.forward_headers,
            signer=signer,
            iss=iss,
            sub=sub,
            clock=clock,
        )
        routes.append(
            Route(
                id=route_id,
                service=route_id,
                template=template,
                methods=EGRESS_METHODS,
                checks=tuple(checks),
                max_body=max_body,
                target=spec_for(eg, outbound),
                options={
                    "cors": False,
                    "location": ("egress", index),
                    "strip_credentials": False,
                    "api_key_in_query": False,
                    "response_fields": None,
                },
            )
        )
    return routes


class EgressProblem(Exception):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def egress_target(eg: EgressSettings) -> tuple[str, str, int, str]:
    """(scheme, host, port, base path) of the provider."""
    parts = urlsplit(eg.target)
    scheme = parts.scheme
    return (
        scheme,
        parts.hostname or "",
        parts.port or (443 if scheme == "https" else 80),
        parts.path.rstrip("/"),
    )
