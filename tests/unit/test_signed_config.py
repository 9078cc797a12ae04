"""Configuration of signed-request routes: what loads, and every mis-combination a clear error at its line,
never echoing a secret."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.config import ConfigError, LoadedConfig, load_config_text
from bastion.runtime.gateway import build_gateway

SECRET = "tw-token-6f1e0b7d4a2c49e8"  # distinctive, so a leak is easy to spot
ENV = {"TWILIO_AUTH_TOKEN": SECRET, "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}


def config(route: str, top: str = "") -> str:
    return f"""\
{top}
services:
  - name: hooks
    upstream: http://127.0.0.1:9000
    routes:
{route}"""


def load(text: str) -> LoadedConfig:
    return load_config_text(text, source="bastion.yaml", env=ENV)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    message = "\n".join(str(i) for i in info.value.issues)
    assert SECRET not in message and "MfKQ9r8" not in message
    return message


def checks(gateway: Any, path: str, method: str) -> list[str]:
    match = gateway.router.match(path)
    assert match is not None
    return [c.name for c in match.endpoint.route_for(method).checks]


TWILIO = """\
      - path: /hooks/sms
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          auth_tokens: [${env:TWILIO_AUTH_TOKEN}]
          public_url: https://hooks.example.com/hooks/sms
"""
HMAC = """\
      - path: /hooks/generic
        methods: [POST]
        auth: [hmac_signature]
        hmac:
          secrets: [${env:WEBHOOK_SECRET}]
          tolerance: 2m
"""


def test_the_issue_examples_load_and_compile() -> None:
    loaded = load(
        config(
            TWILIO
            + HMAC
            + """\
      - path: /v1/signed
        methods: [POST]
        auth: [pkcv]
""",
            top="public_base_url: https://hooks.example.com/base/",
        )
    )
    assert loaded.settings.public_base_url == "https://hooks.example.com/base"
    route = loaded.settings.services[0].routes[0]
    assert route.twilio is not None and route.twilio.auth_tokens[0].reveal() == SECRET
    assert SECRET not in repr(loaded.settings)
    gateway = build_gateway(loaded)
    assert checks(gateway, "/hooks/sms", "POST") == ["limits", "twilio_signature"]
    assert checks(gateway, "/hooks/generic", "POST") == ["limits", "hmac_signature"]
    assert checks(gateway, "/v1/signed", "POST") == ["limits", "pkcv"]


def test_require_pkcv_with_a_key() -> None:
    loaded = load(
        config(
            """\
      - path: /v1/orders
        methods: [POST]
        auth: [api_key]
        require_pkcv: true
""",
            top="identity: {pepper: 0123456789abcdef0123}",
        )
    )
    gateway = build_gateway(loaded)
    assert checks(gateway, "/v1/orders", "POST") == ["limits", "authn", "pkcv"]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            TWILIO.replace(
                "        twilio:\n          auth_tokens: [${env:TWILIO_AUTH_TOKEN}]\n"
                "          public_url: https://hooks.example.com/hooks/sms\n",
                "",
            ),
            "needs a twilio: section",
        ),
        (TWILIO.replace("[twilio_signature]", "none"), "needs a twilio: section"),
        (TWILIO.replace("[twilio_signature]", "[twilio_signature, api_key]"), "cannot be combined"),
        (HMAC.replace("[hmac_signature]", "[pkcv, api_key]"), "require_pkcv: true"),
        (
            TWILIO.replace("hooks/sms\n", "hooks/sms?x=1\n", 2).replace(
                "path: /hooks/sms?x=1", "path: /hooks/sms"
            ),
            "query",
        ),
        (TWILIO.replace("path: /hooks/sms", "path: /hooks/{id}"), "public_base_url"),
        (
            TWILIO.replace("public_url: https://hooks.example.com/hooks/sms", "public_url: /hooks/sms"),
            "absolute",
        ),
        (TWILIO.replace("auth_tokens: [${env:TWILIO_AUTH_TOKEN}]", "auth_tokens: []"), "auth_tokens"),
        (TWILIO + "        scopes: [a]\n", "scopes need a consumer"),
        (
            TWILIO.replace("          public_url:", "          replay_window: 5s\n          public_url:"),
            "replay_window",
        ),
        (HMAC.replace("tolerance: 2m", "tolerance: 2h"), "tolerance must be between"),
        (HMAC.replace("tolerance: 2m", "signature_header: X-Sig"), "only for preset: custom"),
        (HMAC.replace("tolerance: 2m", "preset: custom"), "needs signature_header"),
        (HMAC.replace("tolerance: 2m", "preset: sha1"), "preset"),
        (HMAC.replace("[${env:WEBHOOK_SECRET}]", "[whsec_###]"), "whsec_"),
        (
            """\
      - path: /v1/x
        methods: [GET]
        auth: none
        require_pkcv: true
""",
            "require_pkcv",
        ),
        (
            """\
      - path: /v1/x
        methods: [GET]
        auth: [pkcv]
        require_pkcv: true
""",
            "require_pkcv",
        ),
    ],
)
def test_mis_combinations_are_errors(route: str, expected: str) -> None:
    assert expected in error(config(route))


def test_error_points_at_the_route_line() -> None:
    text = config(TWILIO.replace("[twilio_signature]", "[twilio_signature, hmac_signature]"))
    with pytest.raises(ConfigError) as info:
        load(text)
    issue = info.value.issues[0]
    assert (
        issue.line is not None
        and issue.line <= text.splitlines().index("        auth: [twilio_signature, hmac_signature]") + 1
    )


def test_issue_yaml_verbatim_with_references_in_flow_lists() -> None:
    # `[${env:A}, ${env:B}]` is not plain YAML (`{` is a flow indicator); Bastion quotes such references.
    text = config("""\
      - path: /hooks/sms
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          auth_tokens: [${env:TWILIO_AUTH_TOKEN}, ${env:TWILIO_AUTH_TOKEN_SECONDARY}]
          public_url: https://hooks.example.com/hooks/sms     # optional; else public_base_url + path
      - path: /hooks/generic
        methods: [POST]
        auth: [hmac_signature]
        hmac:
          secrets: [${env:WEBHOOK_SECRET}]        # Standard Webhooks form "whsec_<base64>" or raw
          preset: standard_webhooks               # standard_webhooks (default) | github | stripe | custom
          tolerance: 5m
""")
    loaded = load_config_text(
        text, source="bastion.yaml", env={**ENV, "TWILIO_AUTH_TOKEN_SECONDARY": "second"}
    )
    twilio = loaded.settings.services[0].routes[0].twilio
    assert twilio is not None and [t.reveal() for t in twilio.auth_tokens] == [SECRET, "second"]
    # A reference inside a quoted string stays as written (quoting it again would change the value).
    quoted = load_config_text(
        config(TWILIO.replace("[${env:TWILIO_AUTH_TOKEN}]", "['${env:TWILIO_AUTH_TOKEN}']")),
        source="bastion.yaml",
        env=ENV,
    )
    assert quoted.settings.services[0].routes[0].twilio.auth_tokens[0].reveal() == SECRET  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        load(config(TWILIO.replace("${env:TWILIO_AUTH_TOKEN}", "${env:NOT_SET_ANYWHERE}")))
    assert "NOT_SET_ANYWHERE is not set" in str(info.value.issues[0])


def test_posture_warnings_for_signed_routes() -> None:
    from bastion.adapters.checkup import posture_warnings

    pinned = load(config(TWILIO))
    assert not [w for w in posture_warnings(pinned) if "twilio" in w.path]
    unpinned = load(config(TWILIO.replace("          public_url: https://hooks.example.com/hooks/sms\n", "")))
    assert any(
        w.path == "services[0].routes[0].twilio" and "public_url" in w.message
        for w in posture_warnings(unpinned)
    )
    plain = load(config(TWILIO.replace("https://hooks.example.com", "http://hooks.example.com")))
    assert any("plain http" in w.message for w in posture_warnings(plain))
    github = load(config(HMAC.replace("tolerance: 2m", "preset: github")))
    assert any(
        w.path == "services[0].routes[0].hmac" and "no timestamp" in w.message
        for w in posture_warnings(github)
    )


def test_literal_secrets_in_signed_routes_are_flagged() -> None:
    text = config("""\
      - path: /hooks/sms
        methods: [POST]
        auth: [twilio_signature]
        twilio:
          auth_tokens: [literal-token-value]
          shared_keys: {ks_1: literal-shared-key}
          public_url: https://hooks.example.com/hooks/sms
""")
    loaded = load(text)
    flagged = {w.path for w in loaded.warnings if "literal secret" in w.message}
    assert "services[0].routes[0].twilio.auth_tokens[0]" in flagged
    assert "services[0].routes[0].twilio.shared_keys.ks_1" in flagged
    assert all("literal-token-value" not in str(w) for w in loaded.warnings)
