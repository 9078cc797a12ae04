"""Configuration loading: the quickstart loads as written, every error points at file:line and a dotted
field path, and secrets are references that never leak into errors, warnings or reprs.

Every call passes ``env=`` explicitly: the result must not depend on the environment pytest runs in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.config import ConfigError, ConfigIssue, LoadedConfig, load_config, load_config_text
from bastion.runtime.gateway import build_gateway

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
BUNDLED = ROOT / "src" / "bastion" / "demo" / "quickstart.yaml"
TOKEN = "tok-3f9a1c77e2b94d0a8c15b6e4d2a7f901"  # long and distinctive, so a leak is easy to spot
ENV = {"BASTION_ADMIN_TOKEN": TOKEN}


def load(text: str, env: dict[str, str] | None = None, **kw: object) -> LoadedConfig:
    return load_config_text(text, source="bastion.yaml", env=ENV if env is None else env, **kw)  # type: ignore[arg-type]


def errors(text: str, env: dict[str, str] | None = None, **kw: object) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(text, env, **kw)
    issues = info.value.issues
    assert issues, "a ConfigError must list at least one issue"
    for issue in issues:
        assert issue.file == "bastion.yaml"
        # str(issue) is what the CLI prints: it starts with the location.
        assert str(issue).startswith("bastion.yaml")
    return issues


def only(issues: list[ConfigIssue]) -> ConfigIssue:
    assert len(issues) == 1, issues
    return issues[0]


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle`` (the expected error location)."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not in the text"
    return hits[nth - 1]


MINIMAL = """\
services:
  - name: orders
    upstream: http://127.0.0.1:9000
    routes:
      - path: /v1/orders
        methods: [GET]
        auth: none
"""


# -- the quickstart --------------------------------------------------------------------------------


class TestQuickstart:
    def test_loads_as_written(self) -> None:
        loaded = load_config(QUICKSTART, env=ENV)
        s = loaded.settings
        assert loaded.warnings == []
        assert str(s.listen) == "127.0.0.1:8080"
        assert s.trusted_proxies == []
        assert s.limits.max_body == 1024**2
        assert s.limits.max_header_bytes == 16 * 1024
        assert s.limits.max_headers == 100
        assert s.limits.max_url == 8 * 1024
        assert s.admin is not None
        assert str(s.admin.listen) == "127.0.0.1:8081"
        assert s.admin.token.reveal() == TOKEN
        assert [str(n) for n in s.admin.allow_ips] == ["127.0.0.1/32", "::1/128"]
        assert s.storage.database == "sqlite:///bastion.db"
        assert s.storage.state == "memory://"
        [svc] = s.services
        assert svc.name == "orders"
        assert svc.upstream == "http://127.0.0.1:9000"
        paths = [(r.path, r.methods) for r in svc.routes]
        assert paths == [
            ("/v1/orders/{order_id}", ["GET"]),
            ("/v1/orders", ["GET", "POST"]),
            ("/public/{rest:path}", ["GET"]),
        ]
        assert svc.routes[1].max_body == 16 * 1024
        assert [str(n) for n in svc.routes[1].ip_allow] == ["127.0.0.0/8"]
        assert [str(n) for n in svc.routes[2].ip_deny] == ["10.0.0.0/8"]
        assert all(r.auth == "none" for r in svc.routes)

    def test_compiles_into_a_gateway(self) -> None:
        gw = build_gateway(load_config(QUICKSTART, env=ENV))
        assert gw.router.match("/v1/orders/42") is not None
        assert gw.router.match("/public/a/b") is not None
        assert gw.router.match("/v1/orders/42/x") is None

    def test_bundled_demo_copy_is_identical(self) -> None:
        assert BUNDLED.read_bytes() == QUICKSTART.read_bytes()

    def test_source_is_the_file_path(self) -> None:
        loaded = load_config(QUICKSTART, env=ENV)
        assert loaded.source == str(QUICKSTART)


# -- errors: file, line, field path, what was expected ------------------------------------------------


class TestFieldErrors:
    def test_unknown_key_with_suggestion(self) -> None:
        text = "trusted_proxie: []\n" + MINIMAL
        issue = only(errors(text))
        assert (issue.line, issue.path) == (1, "trusted_proxie")
        assert "unknown key" in issue.message
        assert "did you mean 'trusted_proxies'" in issue.message

    def test_unknown_nested_key_names_the_dotted_path(self) -> None:
        text = MINIMAL + "        max_bdy: 1KiB\n"
        issue = only(errors(text))
        assert issue.path == "services[0].routes[0].max_bdy"
        assert issue.line == line_of(text, "max_bdy")
        assert "did you mean 'max_body'" in issue.message

    def test_wrong_type_list_expected(self) -> None:
        text = MINIMAL.replace("methods: [GET]", "methods: GET")
        issue = only(errors(text))
        assert issue.path == "services[0].routes[0].methods"
        assert issue.line == line_of(text, "methods: GET")
        assert "list" in issue.message

    def test_wrong_type_integer_expected(self) -> None:
        text = "limits: {max_headers: many}\n" + MINIMAL
        issue = only(errors(text))
        assert (issue.line, issue.path) == (1, "limits.max_headers")
        assert "integer" in issue.message

    def test_bad_size(self) -> None:
        text = MINIMAL + "        max_body: lots\n"
        issue = only(errors(text))
        assert issue.path == "services[0].routes[0].max_body"
        assert issue.line == line_of(text, "max_body: lots")
        assert "expected a size" in issue.message
        assert "16KiB" in issue.message

    def test_sizes_parse(self) -> None:
        text = "limits: {max_body: 2MiB, max_header_bytes: 8KB, max_url: 4096}\n" + MINIMAL
        limits = load(text).settings.limits
        assert (limits.max_body, limits.max_header_bytes, limits.max_url) == (2 * 1024**2, 8000, 4096)

    def test_bad_cidr(self) -> None:
        text = MINIMAL + "        ip_allow: [banana]\n"
        issue = only(errors(text))
        assert issue.path == "services[0].routes[0].ip_allow[0]"
        assert issue.line == line_of(text, "banana")
        assert "CIDR" in issue.message

    def test_cidr_with_host_bits(self) -> None:
        text = MINIMAL + "        ip_deny: [10.0.0.1/8]\n"
        issue = only(errors(text))
        assert issue.path == "services[0].routes[0].ip_deny[0]"
        assert "host bits" in issue.message
        assert "10.0.0.0/8" in issue.message  # says what to write instead

    def test_bad_cidr_in_trusted_proxies(self) -> None:
        text = "trusted_proxies: [192.168.1.1/16]\n" + MINIMAL
        issue = only(errors(text))
        assert (issue.line, issue.path) == (1, "trusted_proxies[0]")
        assert "host bits" in issue.message

    @pytest.mark.parametrize("value", ["nowhere", "127.0.0.1", "127.0.0.1:99999", ":8080", "[::1:8080"])
    def test_bad_listen_address(self, value: str) -> None:
        text = f"listen: '{value}'\n" + MINIMAL
        issue = only(errors(text))
        assert (issue.line, issue.path) == (1, "listen")
        assert "host:port" in issue.message or "port" in issue.message

    def test_ipv6_listen_address(self) -> None:
        loaded = load("listen: '[::1]:8443'\n" + MINIMAL)
        assert (loaded.settings.listen.host, loaded.settings.listen.port) == ("::1", 8443)

    @pytest.mark.parametrize("url", ["ftp://127.0.0.1:9000", "127.0.0.1:9000", "unix:///tmp/sock"])
    def test_upstream_must_be_http(self, url: str) -> None:
        text = MINIMAL.replace("http://127.0.0.1:9000", url)
        issue = only(errors(text))
        assert issue.path == "services[0].upstream"
        assert issue.line == line_of(text, "upstream:")
        assert "http://" in issue.message and "https://" in issue.message

    def test_empty_services(self) -> None:
        issue = only(errors("listen: 127.0.0.1:8080\nservices: []\n"))
        assert (issue.line, issue.path) == (2, "services")
        assert "at least one service" in issue.message

    def test_missing_services(self) -> None:
        issue = only(errors("listen: 127.0.0.1:8080\n"))
        assert issue.path == "services"
        assert "at least one service (services:) or egress route (egress:)" in issue.message

    def test_duplicate_service_names_point_at_the_repeated_service(self) -> None:
        text = MINIMAL + MINIMAL.split("\n", 1)[1]  # a second "- name: orders" entry
        issue = only(errors(text))
        assert "orders" in issue.message and "unique" in issue.message
        # The problem is in the list of services (the second entry's name), not "somewhere in the file".
        assert issue.path.startswith("services"), issue
        assert issue.line == line_of(text, "- name: orders", nth=2), issue

    def test_unknown_auth_method(self) -> None:
        text = MINIMAL.replace("auth: none", "auth: [basic]")
        issue = only(errors(text))
        assert issue.path == "services[0].routes[0].auth"
        assert issue.line == line_of(text, "auth:")
        assert "unknown auth method 'basic'" in issue.message

    def test_api_key_route_needs_a_pepper(self) -> None:
        text = MINIMAL.replace("auth: none", "auth: [api_key]")
        issue = only(errors(text))
        assert "identity.pepper is required" in issue.message

    def test_cors_wildcard_with_credentials(self) -> None:
        text = MINIMAL + "        cors: {allow_origins: ['*'], allow_credentials: true}\n"
        issue = only(errors(text))
        assert issue.path == "services[0].routes[0].cors"
        assert issue.line == line_of(text, "cors:")
        assert "'*'" in issue.message and "allow_credentials" in issue.message

    def test_cors_wildcard_without_credentials_is_fine(self) -> None:
        loaded = load(MINIMAL + "        cors: {allow_origins: ['*']}\n")
        cors = loaded.settings.services[0].routes[0].cors
        assert cors is not None and cors.allow_origins == ["*"]

    def test_postgresql_database(self) -> None:
        loaded = load("storage:\n  database: postgresql://bastion@db:5432/bastion\n" + MINIMAL)
        assert loaded.settings.storage.database == "postgresql+psycopg://bastion@db:5432/bastion"
        issue = only(errors("storage:\n  database: mysql://db/bastion\n" + MINIMAL))
        assert (issue.line, issue.path) == (2, "storage.database")
        assert "postgresql://" in issue.message and "sqlite:///" in issue.message

    def test_redis_state(self) -> None:
        loaded = load("storage:\n  state: redis://127.0.0.1:6379/0\n  state_timeout: 20ms\n" + MINIMAL)
        assert loaded.settings.storage.state == "redis://127.0.0.1:6379/0"
        assert loaded.settings.storage.state_timeout == pytest.approx(0.02)
        for bad, message in (("redis://:99999/0", "redis"), ("memcached://x", "memory://")):
            issue = only(errors(f"storage:\n  state: {bad}\n" + MINIMAL))
            assert issue.path == "storage.state" and message in issue.message

    def test_several_problems_are_all_reported_in_line_order(self) -> None:
        text = "listen: nowhere\nlimits: {max_body: lots}\n" + MINIMAL.replace("auth: none", "auth: x")
        issues = errors(text)
        assert [i.path for i in issues] == ["listen", "limits.max_body", "services[0].routes[0].auth"]
        assert [i.line for i in issues] == [1, 2, line_of(text, "auth: x")]


class TestDocumentErrors:
    def test_duplicate_yaml_key(self) -> None:
        text = MINIMAL + "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n"
        issue = only(errors(text))
        assert issue.path == "listen"
        assert issue.line == line_of(text, "listen:", nth=2)
        assert "duplicate key" in issue.message

    def test_duplicate_nested_key(self) -> None:
        text = "limits:\n  max_body: 1KiB\n  max_body: 2KiB\n" + MINIMAL
        issue = only(errors(text))
        assert (issue.line, issue.path) == (3, "limits.max_body")
        assert "duplicate key" in issue.message

    def test_yaml_syntax_error_has_a_line(self) -> None:
        text = MINIMAL + "limits: {max_body: 1KiB\nlisten: x\n"
        issue = only(errors(text))
        assert issue.line is not None and issue.line >= line_of(text, "limits:")
        assert issue.message.startswith("invalid YAML")

    def test_tab_indentation_is_a_syntax_error(self) -> None:
        issue = only(errors("services:\n\t- name: x\n"))
        assert issue.line == 2
        assert "invalid YAML" in issue.message

    @pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
    def test_empty_file(self, text: str) -> None:
        issue = only(errors(text))
        assert "empty" in issue.message

    @pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
    def test_top_level_not_a_mapping(self, text: str) -> None:
        issue = only(errors(text))
        assert issue.line == 1
        assert "mapping" in issue.message

    def test_missing_file(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope.yaml"
        with pytest.raises(ConfigError) as info:
            load_config(missing, env=ENV)
        assert "not found" in str(info.value)
        assert str(missing) in str(info.value)

    def test_load_config_reports_the_file_name(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text("listen: nowhere\n" + MINIMAL)
        with pytest.raises(ConfigError) as info:
            load_config(path, env=ENV)
        issue = only(info.value.issues)
        assert (issue.file, issue.line, issue.path) == (str(path), 1, "listen")
        assert str(issue).startswith(f"{path}:1: listen:")


# -- secret references ------------------------------------------------------------------------------------

ADMIN = """\
admin:
  listen: 127.0.0.1:8081
  token: {token}
"""


def with_token(token: str) -> str:
    return ADMIN.format(token=token) + MINIMAL


class TestSecretReferences:
    def test_env_reference_resolved(self) -> None:
        loaded = load(with_token("${env:BASTION_ADMIN_TOKEN}"))
        assert loaded.settings.admin is not None
        assert loaded.settings.admin.token.reveal() == TOKEN
        assert loaded.warnings == []

    def test_env_reference_is_read_from_the_given_env_only(self) -> None:
        loaded = load(with_token("${env:OTHER}"), env={"OTHER": "from-the-mapping-0123456789abcdef"})
        assert loaded.settings.admin is not None
        assert loaded.settings.admin.token.reveal() == "from-the-mapping-0123456789abcdef"

    def test_missing_env_variable(self) -> None:
        text = with_token("${env:BASTION_ADMIN_TOKEN}")
        issue = only(errors(text, env={}))
        assert (issue.line, issue.path) == (3, "admin.token")
        assert "BASTION_ADMIN_TOKEN" in issue.message
        assert "not set" in issue.message

    def test_file_reference_strips_the_trailing_newline(self, tmp_path: Path) -> None:
        secret = tmp_path / "admin-token"
        secret.write_text("file-secret-0123456789abcdef\n")
        loaded = load(with_token(f"${{file:{secret}}}"))
        assert loaded.settings.admin is not None
        assert loaded.settings.admin.token.reveal() == "file-secret-0123456789abcdef"
        assert loaded.warnings == []

    def test_file_reference_strips_crlf(self, tmp_path: Path) -> None:
        secret = tmp_path / "admin-token"
        secret.write_bytes(b"crlf-secret-0123456789abcdef\r\n")
        loaded = load(with_token(f"${{file:{secret}}}"))
        assert loaded.settings.admin is not None
        assert loaded.settings.admin.token.reveal() == "crlf-secret-0123456789abcdef"

    def test_relative_file_reference_is_relative_to_the_config(self, tmp_path: Path) -> None:
        (tmp_path / "token.txt").write_text("relative-secret-0123456789abcdef")
        config = tmp_path / "bastion.yaml"
        config.write_text(with_token("${file:token.txt}"))
        loaded = load_config(config, env={})
        assert loaded.settings.admin is not None
        assert loaded.settings.admin.token.reveal() == "relative-secret-0123456789abcdef"

    def test_missing_file(self, tmp_path: Path) -> None:
        missing = tmp_path / "no-such-token"
        issue = only(errors(with_token(f"${{file:{missing}}}")))
        assert (issue.line, issue.path) == (3, "admin.token")
        assert str(missing) in issue.message
        assert "cannot read" in issue.message

    def test_unknown_reference_kind(self) -> None:
        issue = only(errors(with_token("${vault:x}")))
        assert (issue.line, issue.path) == (3, "admin.token")
        assert "vault" in issue.message
        assert "${env:NAME}" in issue.message

    def test_dollar_dollar_escapes_a_literal_reference(self) -> None:
        loaded = load(with_token("'$${env:BASTION_ADMIN_TOKEN}-literal'"))
        assert loaded.settings.admin is not None
        assert loaded.settings.admin.token.reveal() == "${env:BASTION_ADMIN_TOKEN}-literal"

    def test_reference_inside_a_larger_string(self) -> None:
        text = MINIMAL.replace("http://127.0.0.1:9000", "http://${env:UP_HOST}:${env:UP_PORT}/base")
        loaded = load(text, env={"UP_HOST": "10.1.2.3", "UP_PORT": "9443"})
        assert loaded.settings.services[0].upstream == "http://10.1.2.3:9443/base"

    def test_plain_dollar_is_left_alone(self) -> None:
        loaded = load("response_headers: {x-price: '$5 or ${'}\n" + MINIMAL)
        assert loaded.settings.response_headers == {"x-price": "$5 or ${"}

    def test_every_missing_reference_is_reported(self) -> None:
        text = with_token("${env:A_TOKEN}").replace("http://127.0.0.1:9000", "http://${env:UP_HOST}")
        issues = errors(text, env={})
        messages = " | ".join(i.message for i in issues)
        assert "A_TOKEN" in messages and "UP_HOST" in messages
        assert {i.path for i in issues} == {"admin.token", "services[0].upstream"}


class TestLiteralSecrets:
    def test_literal_secret_loads_with_a_warning(self) -> None:
        text = with_token("literal-admin-token-0123456789abcdef")
        loaded = load(text, env={})
        assert loaded.settings.admin is not None
        assert loaded.settings.admin.token.reveal() == "literal-admin-token-0123456789abcdef"
        [warning] = loaded.warnings
        assert (warning.file, warning.line, warning.path) == ("bastion.yaml", 3, "admin.token")
        assert "literal secret" in warning.message

    def test_reference_gives_no_warning(self) -> None:
        assert load(with_token("${env:BASTION_ADMIN_TOKEN}")).warnings == []

    def test_empty_secret_is_an_error(self) -> None:
        issue = only(errors(with_token("${env:EMPTY}"), env={"EMPTY": ""}))
        assert issue.path == "admin.token"
        assert "non-empty" in issue.message


class TestSecretsNeverLeak:
    """The secret VALUE must appear in no error, warning or repr: configs errors end up in CI logs."""

    def test_not_in_repr_of_settings(self) -> None:
        loaded = load(with_token("${env:BASTION_ADMIN_TOKEN}"))
        assert TOKEN not in repr(loaded.settings)
        assert TOKEN not in str(loaded.settings)
        assert TOKEN not in repr(loaded)
        assert loaded.settings.admin is not None
        assert TOKEN not in repr(loaded.settings.admin)
        assert TOKEN not in repr(loaded.settings.admin.token)
        assert TOKEN not in str(loaded.settings.admin.token)

    def test_not_in_errors_elsewhere_in_the_file(self) -> None:
        text = with_token("${env:BASTION_ADMIN_TOKEN}").replace("auth: none", "auth: nope")
        with pytest.raises(ConfigError) as info:
            load(text)
        assert TOKEN not in str(info.value)
        assert TOKEN not in repr(info.value)
        assert all(TOKEN not in repr(i) for i in info.value.issues)

    def test_not_in_error_about_the_secret_field_itself(self) -> None:
        # A secret used where a mapping is expected: the error must describe, not quote.
        text = with_token("${env:BASTION_ADMIN_TOKEN}").replace(
            "listen: 127.0.0.1:8081", "listen: ${env:BASTION_ADMIN_TOKEN}"
        )
        issue = only(errors(text))
        assert issue.path == "admin.listen"
        assert TOKEN not in str(issue)

    def test_not_in_error_for_a_secret_inside_a_url(self) -> None:
        text = MINIMAL.replace("http://127.0.0.1:9000", "ftp://user:${env:BASTION_ADMIN_TOKEN}@h")
        issue = only(errors(text))
        assert issue.path == "services[0].upstream"
        assert TOKEN not in str(issue)

    def test_not_in_error_for_a_wrongly_typed_secret(self) -> None:
        text = "limits: {max_headers: '${env:BASTION_ADMIN_TOKEN}'}\n" + MINIMAL
        issue = only(errors(text))
        assert issue.path == "limits.max_headers"
        assert TOKEN not in str(issue)

    def test_file_secret_not_in_repr(self, tmp_path: Path) -> None:
        (tmp_path / "t").write_text(TOKEN + "\n")
        loaded = load(with_token(f"${{file:{tmp_path / 't'}}}"))
        assert TOKEN not in repr(loaded)

    def test_literal_secret_not_in_the_warning(self) -> None:
        literal = "literal-admin-token-5c1e0b7d9a3f4e26"
        loaded = load(with_token(literal), env={})
        assert loaded.warnings
        for warning in loaded.warnings:
            assert literal not in str(warning)
            assert literal not in repr(warning)
        assert literal not in repr(loaded.settings)


# -- route-table errors, reported by build_gateway with the route's location ------------------------


class TestRouteTableErrors:
    def test_non_canonical_route_path(self) -> None:
        text = MINIMAL + "      - path: /a//b\n        methods: [GET]\n        auth: none\n"
        loaded = load(text)
        with pytest.raises(ConfigError) as info:
            build_gateway(loaded)
        issue = only(info.value.issues)
        assert issue.file == "bastion.yaml"
        assert issue.path == "services[0].routes[1].path"
        assert issue.line == line_of(text, "/a//b")
        assert "'/a/b'" in issue.message  # says what the canonical form would be

    @pytest.mark.parametrize(
        ("path", "words"),
        [
            ("/files/{name:regex}", "{name:path}"),
            ("/a/{rest:path}/b", "last segment"),
            ("/a/{x}.{x}", "twice"),
            ("/a/%2F", "canonical"),
        ],
    )
    def test_invalid_templates(self, path: str, words: str) -> None:
        text = MINIMAL + f"      - path: '{path}'\n        methods: [GET]\n        auth: none\n"
        with pytest.raises(ConfigError) as info:
            build_gateway(load(text))
        issue = only(info.value.issues)
        assert issue.path == "services[0].routes[1].path"
        assert issue.line == line_of(text, path)
        assert words in issue.message

    def test_placeholder_name_repeated_across_segments(self) -> None:
        # "/a/{x}/{x}" would bind two values to one name and silently keep only one of them.
        text = MINIMAL + "      - path: '/a/{x}/{x}'\n        methods: [GET]\n        auth: none\n"
        with pytest.raises(ConfigError) as info:
            build_gateway(load(text))
        issue = only(info.value.issues)
        assert issue.path == "services[0].routes[1].path"
        assert "twice" in issue.message

    def test_duplicate_method_and_path_across_routes(self) -> None:
        text = """\
services:
  - name: a
    upstream: http://127.0.0.1:9000
    routes:
      - path: /x/{id}
        methods: [GET, POST]
        auth: none
  - name: b
    upstream: http://127.0.0.1:9001
    routes:
      - path: /x/{other}
        methods: [GET]
        auth: none
"""
        loaded = load(text)
        with pytest.raises(ConfigError) as info:
            build_gateway(loaded)
        issue = only(info.value.issues)
        assert "GET" in issue.message and "twice" in issue.message
        # The second declaration is the one to fix: name its path field and line, like every other error.
        assert issue.path == "services[1].routes[0].path", issue
        assert issue.line == line_of(text, "/x/{other}"), issue

    def test_same_path_different_methods_is_fine(self) -> None:
        text = MINIMAL + "      - path: /v1/orders\n        methods: [POST]\n        auth: none\n"
        gw = build_gateway(load(text))
        match = gw.router.match("/v1/orders")
        assert match is not None
        assert match.endpoint.allow == "GET, HEAD, POST"


class TestIdentitySettings:
    PEPPER = {"BASTION_PEPPER": "test-pepper-0123456789abcdef"}
    ISSUER = """
jwt_issuers:
  - name: corp
    issuer: https://idp.example.com/
    jwks_url: https://idp.example.com/jwks.json
"""

    def with_issuer(self, extra: str = "") -> str:
        text = MINIMAL.replace("auth: none", 'auth: ["jwt:corp"]')
        return text.replace("services:", self.ISSUER.strip() + "\n" + extra + "services:", 1)

    def test_an_issuer_without_audience_is_an_error(self) -> None:
        issue = only(errors(self.with_issuer()))
        assert issue.path == "jwt_issuers[0].audience"
        assert "required" in issue.message.lower()

    def test_an_explicit_null_audience_loads_and_warns(self) -> None:
        from bastion.adapters.checkup import posture_warnings

        text = self.with_issuer().replace("    jwks_url:", "    audience: null\n    jwks_url:")
        loaded = load(text)
        assert loaded.settings.jwt_issuers[0].audience is None
        assert any(w.path == "jwt_issuers[0].audience" for w in posture_warnings(loaded))

    @pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
    def test_durations_must_be_finite(self, value: str) -> None:
        text = MINIMAL.replace("services:", f"identity:\n  max_key_ttl: {value}\nservices:", 1)
        issue = only(errors(text))
        assert issue.path == "identity.max_key_ttl"

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("https://idp.example.com:99999/jwks.json", "invalid port"),
            ("http://idp.example.com/jwks.json", "https://"),
            ("https://idp.example.com/jw ks", "whitespace"),
            ("https://user:pw@idp.example.com/jwks.json", "user info"),
        ],
    )
    def test_a_jwks_url_is_judged_at_load_by_the_fetchers_rule(self, url: str, reason: str) -> None:
        # Config and the JWKS cache share one rule: what loads can be fetched (no failure at start).
        text = self.with_issuer().replace("https://idp.example.com/jwks.json", url)
        text = text.replace("    jwks_url:", "    audience: api\n    jwks_url:")
        issue = only(errors(text))
        assert issue.path == "jwt_issuers[0].jwks_url"
        assert reason in issue.message
        assert "pw@" not in issue.message


class TestMonitoringSettings:
    """events.* and alerts.*: each mistake named at its key, the secrets never echoed."""

    BASE = (
        "services:\n  - name: s\n    upstream: http://127.0.0.1:9\n"
        "    routes: [{path: /x, methods: [GET], auth: none}]\n"
    )

    @pytest.mark.parametrize(
        ("block", "path", "message"),
        [
            ("events: {retention: 10m}", "events.retention", "at least 1h"),
            ("events: {purge_interval: 5s}", "events.purge_interval", "between 1m and 1d"),
            ("events: {chain_key: short}", "events.chain_key", "at least 16 bytes"),
            (
                "events: {sinks: [{type: jsonl, path: /tmp/a.jsonl}, {type: jsonl, path: /tmp/b.jsonl, "
                "name: jsonl-1}]}",
                "events.sinks",
                "sink names must be unique",
            ),
            (
                "events: {sinks: [{type: syslog, address: 'udp://127.0.0.1'}]}",
                "events.sinks[0].address",
                "port",
            ),
            ("events: {sinks: [{type: kafka, path: x}]}", "events.sinks[0]", ""),
            (
                "events: {sinks: [{type: jsonl, path: /tmp/a.jsonl, rotate: 1KiB}]}",
                "events.sinks[0].rotate",
                "4KiB",
            ),
            (
                "events: {sinks: [{type: webhook, url: 'http://example.com/in', "
                "secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'}]}",
                "events.sinks[0].url",
                "https://",
            ),
            (
                "alerts: {rules: [{name: s, builtin: traffic_spike, distinct: 3}]}",
                "alerts.rules[0]",
                "distinct is not a parameter of the traffic_spike detector",
            ),
            (
                "alerts: {rules: [{name: s, builtin: credential_stuffing, channels: [nope]}]}",
                "alerts",
                "does not declare",
            ),
            (
                "alerts: {rules: [{name: s, when: {type: auth., count: 5, within: 1m}, "
                "builtin: credential_stuffing}]}",
                "alerts.rules[0]",
                "not both",
            ),
            ("alerts: {rules: [{name: s, builtin: admin_outside_policy}]}", "alerts.rules[0]", "hours"),
            (
                "alerts: {rules: [{name: s, builtin: admin_outside_policy, hours: "
                "'08:00-19:00', timezone: Mars/Base}]}",
                "alerts.rules[0]",
                "unknown time zone",
            ),
            (
                "alerts: {channels: [{name: m, type: email, smtp: "
                "'smtp://u:p@mail.example.com:25', to: [a@b.c]}]}",
                "alerts.channels[0].smtp",
                "not the URL",
            ),
        ],
    )
    def test_mistakes_are_named_at_their_key(self, block: str, path: str, message: str) -> None:
        issue = only(errors(block + "\n" + self.BASE))
        assert issue.path.startswith(path), issue
        assert message in issue.message, issue

    def test_the_chain_key_and_sink_secrets_are_never_echoed(self) -> None:
        env = {**ENV, "K": "tiny-key", "S": "whsec_not*base64*sentinel"}
        text = (
            "events:\n  chain_key: ${env:K}\n  sinks:\n"
            "    - {type: webhook, url: 'https://siem.example.com/in', secret: '${env:S}'}\n" + self.BASE
        )
        issues = errors(text, env)
        shown = " ".join(str(i) for i in issues)
        assert "tiny-key" not in shown and "sentinel" not in shown
        assert {i.path for i in issues} == {"events.chain_key", "events.sinks[0].secret"}
