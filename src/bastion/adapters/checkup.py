"""Warnings ``bastion check`` adds to a valid config: things that run but weaken the gateway.
(``bastion audit``, a later issue, grows these into scored checks per practice.)"""

from __future__ import annotations

from ..config.errors import ConfigIssue
from ..config.loader import LoadedConfig

__all__ = ["posture_warnings"]

_TEN_MIB = 10 * 1024 * 1024


def posture_warnings(loaded: LoadedConfig) -> list[ConfigIssue]:
    s = loaded.settings
    out: list[ConfigIssue] = []

    def warn(loc: tuple[str | int, ...], dotted: str, message: str) -> None:
        out.append(ConfigIssue(loaded.source, loaded.lines.get(loc), dotted, message))

    if s.admin is not None:
        if len(s.admin.token.reveal()) < 24:
            warn(("admin", "token"), "admin.token", "the admin token is shorter than 24 characters")
        if any(n.prefixlen == 0 for n in s.admin.allow_ips):
            warn(("admin", "allow_ips"), "admin.allow_ips", "the admin API is open to every address")
    if s.identity.max_key_ttl > 365 * 86400:
        warn(
            ("identity", "max_key_ttl"),
            "identity.max_key_ttl",
            "keys may live longer than a year; rotate credentials at least yearly (P13)",
        )
    for ii, issuer in enumerate(s.jwt_issuers):
        if issuer.audience is None:
            warn(
                ("jwt_issuers", ii, "audience"),
                f"jwt_issuers[{ii}].audience",
                "no audience: tokens the provider issued for any other API are accepted (P5)",
            )
    if s.tls is None and not s.listen.is_loopback and not s.trusted_proxies:
        warn(("listen",), "listen", "listening beyond loopback without TLS and without a trusted TLS proxy")
    if s.limits.max_body > _TEN_MIB:
        warn(
            ("limits", "max_body"), "limits.max_body", "a default body limit above 10 MiB invites abuse (P9)"
        )
    for si, svc in enumerate(s.services):
        if not svc.tls_verify:
            warn(
                ("services", si, "tls_verify"),
                f"services[{si}].tls_verify",
                "TLS verification of the upstream is turned off",
            )
        for ri, route in enumerate(svc.routes):
            where = ("services", si, "routes", ri)
            if route.api_key_in_query:
                warn(
                    (*where, "api_key_in_query"),
                    f"services[{si}].routes[{ri}].api_key_in_query",
                    "API keys in query strings end up in logs, browser history and Referer headers (P13)",
                )
            if route.forward_credentials and route.auth != "none":
                warn(
                    (*where, "forward_credentials"),
                    f"services[{si}].routes[{ri}].forward_credentials",
                    "the caller's credential is forwarded to the upstream; it needs only X-Bastion-Consumer",
                )
            if route.auth == "none" and any(m in ("POST", "PUT", "PATCH", "DELETE") for m in route.methods):
                warn(
                    (*where, "auth"),
                    f"services[{si}].routes[{ri}].auth",
                    "a route that changes data (POST/PUT/PATCH/DELETE) has auth: none (P5)",
                )
            if route.twilio is not None:
                url = route.twilio.public_url or s.public_base_url
                if url is None:
                    warn(
                        (*where, "twilio"),
                        f"services[{si}].routes[{ri}].twilio",
                        "the signed URL is rebuilt from each request's Host and scheme; set public_url or "
                        "public_base_url to the URL Twilio calls (P19)",
                    )
                elif url.startswith("http://"):
                    warn(
                        (*where, "twilio"),
                        f"services[{si}].routes[{ri}].twilio",
                        "Twilio calls this webhook over plain http: its parameters travel unencrypted (P6)",
                    )
            h = route.hmac
            if h is not None and (
                h.preset == "github" or (h.preset == "custom" and h.timestamp_header is None)
            ):
                sender = "GitHub signs" if h.preset == "github" else "this layout signs"
                warn(
                    (*where, "hmac"),
                    f"services[{si}].routes[{ri}].hmac",
                    f"{sender} no timestamp: a captured delivery is refused as a replay only while it is "
                    "remembered (tolerance), and accepted after that (P19)",
                )
            short = [
                name
                for name, secrets in (
                    ("twilio.auth_tokens", route.twilio.auth_tokens if route.twilio else []),
                    ("twilio.shared_keys", list(route.twilio.shared_keys.values()) if route.twilio else []),
                    ("hmac.secrets", h.secrets if h else []),
                )
                if any(len(sec.reveal().encode("utf-8")) < 16 for sec in secrets)
            ]
            for name in short:
                warn(
                    (*where, *name.split(".")),
                    f"services[{si}].routes[{ri}].{name}",
                    "a signing secret under 16 bytes can be guessed offline from one signed request (P19)",
                )
            if route.max_body is not None and route.max_body > _TEN_MIB:
                warn(
                    ("services", si, "routes", ri, "max_body"),
                    f"services[{si}].routes[{ri}].max_body",
                    "a body limit above 10 MiB invites abuse (P9)",
                )
    return out
