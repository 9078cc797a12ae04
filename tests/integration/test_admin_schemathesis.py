"""Schemathesis against the admin API's own OpenAPI document, over a real admin listener on loopback.

Each test starts a gateway on a fresh SQLite store in ``tmp_path`` and fetches ``/admin/v1/openapi.json``
from it, so what is checked is the document we publish, against the server that publishes it.

* With the admin token, every operation gets valid inputs (positive mode) and invalid ones (negative
  mode). No response may be a 5xx, and every response must be one the document describes: its status
  code, its content type and its body schema.
* Without the token, with a wrong one and with another scheme, every operation except health answers
  401 problem+json before it looks at the input, and never a 5xx.

Generation is deterministic (Hypothesis derandomised, no example database) and bounded per operation,
so CI sees the same cases on every run. Each operation runs to its end even when another failed, and the
test reports every failing operation at once, each with a curl command that reproduces it.

The schemathesis pytest plugin's lazy ``from_fixture`` loader is not used: the schema only exists once
the gateway is up, and that loader reaches into pytest internals (``Node._nodeid``, gone in pytest 9.2).
Each operation is driven with ``APIOperation.as_strategy`` and Hypothesis instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from ..support import ADMIN_TOKEN, EchoUpstream, GatewayThread, config_text, load_text, request
from ._identity import wait_for

pytestmark = pytest.mark.slow

PEPPER = "test-pepper-0123456789abcdef"  # a test fixture, not a secret
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OPENAPI = "/admin/v1/openapi.json"
MAX_EXAMPLES = 20
MAX_EXAMPLES_UNAUTHENTICATED = 5  # the guard answers before the input matters; a few shapes suffice
TIMEOUT = 10.0
SEEDED_CONSUMER = "seed"

ROUTES = """
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: [api_key, oauth2]
        scopes: [orders:read]
"""
# identity (and oauth2, for the clients) adds the consumers, keys, clients and credentials routes.
EXTRA = """
identity:
  pepper: ${env:BASTION_PEPPER}
  max_key_ttl: 30d
  rotation_grace: 2h
oauth2:
  issuer: http://127.0.0.1:9
"""

CONFORMANCE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    # An input the document rules out must be refused (4xx), not acted on.
    negative_data_rejection,
]

# Each unauthenticated case is sent three ways: no credentials, the bearer scheme with a wrong token, and
# another scheme altogether.
REFUSED_AUTHORIZATIONS = (None, f"Bearer {ADMIN_TOKEN}x", "Basic YWRtaW46YWRtaW4=")


def hypothesis_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        # No `target`/`reuse` phases: same cases, same order, every run.
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


# -- the gateway and its schema -------------------------------------------------------------------------


@dataclass
class Listener:
    base_url: str
    # Path parameter name -> a resource that exists, so lookups and changes reach more than 404.
    existing: dict[str, str]


@contextmanager
def admin_listener(tmp_path: Path) -> Iterator[Listener]:
    """A gateway with identity on a fresh store, with one of each resource in it."""
    with EchoUpstream() as upstream:
        text = config_text(upstream.port, tmp_path / "bastion.db", routes=ROUTES, extra=EXTRA)
        loaded = load_text(text, env={"BASTION_PEPPER": PEPPER})
        with GatewayThread(loaded) as gw:
            yield Listener(f"http://127.0.0.1:{gw.admin_port}", seed_store(gw.admin_port))


def seed_store(port: int) -> dict[str, str]:
    """A consumer named ``seed`` with a key, an OAuth client and a public key; and an event."""

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {**AUTH, "Content-Type": "application/json"}
        status, _, raw = request(port, "POST", path, headers=headers, body=json.dumps(body).encode())
        assert status == 201, raw
        return dict(json.loads(raw))

    def first_event_id() -> str | None:
        status, _, raw = request(port, "GET", "/admin/v1/events?page_size=1", headers=AUTH)
        assert status == 200, raw
        events = json.loads(raw)["events"]
        return str(events[0]["id"]) if events else None

    public_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    consumer = post("/admin/v1/consumers", {"name": SEEDED_CONSUMER, "scopes": ["orders:read"]})
    key = post("/admin/v1/keys", {"consumer": SEEDED_CONSUMER})
    client = post("/admin/v1/clients", {"consumer": SEEDED_CONSUMER})
    credential = post("/admin/v1/credentials", {"consumer": SEEDED_CONSUMER, "public_key": public_pem})
    return {
        "name": str(consumer["name"]),
        "key_id": str(key["id"]),
        "client_id": str(client["client_id"]),
        "credential_id": str(credential["id"]),
        "event_id": wait_for(first_event_id, what="an event in the store"),
    }



def load_schema(base_url: str) -> schemathesis.BaseSchema:
    # Credentials are the test's to choose: never generate an Authorization header from a documented
    # security scheme. NUL bytes are left out because the HTTP client refuses them in headers and URLs.
    generation = {"deterministic": True, "allow-x00": False, "with-security-parameters": False}
    config = schemathesis.Config.from_dict({"generation": generation})
    schema = schemathesis.openapi.from_url(base_url + OPENAPI, headers=AUTH, timeout=TIMEOUT, config=config)
    schema.config.update(base_url=base_url)
    return schema


# Keywords that say nothing about which values a parameter accepts.
ANNOTATIONS = frozenset({"type", "title", "description", "examples", "example", "default"})


def has_invalid_inputs(operation: schemathesis.APIOperation) -> bool:
    """Whether negative mode can make anything up: a body, a query or header parameter, or a path
    parameter with a constraint (in a URL every segment is a string, so an unconstrained one has none)."""
    if operation.body or operation.query or operation.headers:
        return True
    return any(set(p.definition.get("schema", {})) - ANNOTATIONS for p in operation.path_parameters)


def body_properties(operation: schemathesis.APIOperation) -> set[str]:
    """The property names of the operation's JSON body (its schema, or the component it refers to)."""
    body = operation.definition.raw.get("requestBody", {})
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    for option in [schema, *schema.get("anyOf", [])]:
        ref = option.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            component = operation.schema.raw_schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
            return set(component.get("properties", {}))
        if "properties" in option:
            return set(option["properties"])
    return set()


def aim_at_seeded_consumer(case: schemathesis.Case) -> schemathesis.Case:
    if isinstance(case.body, dict) and "consumer" in case.body:
        case.body = {**case.body, "consumer": SEEDED_CONSUMER}
    return case


def strategies(
    operation: schemathesis.APIOperation, mode: GenerationMode, existing: dict[str, str]
) -> Iterator[tuple[str, SearchStrategy[schemathesis.Case]]]:
    """Cases with every input generated; then, where the operation names a resource, cases aimed at one
    that exists: path parameters fixed to it, and ``consumer`` (query or body) set to the seeded one."""
    yield "generated", operation.as_strategy(generation_mode=mode)
    path = {p.name: existing[p.name] for p in operation.path_parameters if p.name in existing}
    query = {"consumer": SEEDED_CONSUMER} if any(p.name == "consumer" for p in operation.query) else None
    if path or query:
        yield "existing", operation.as_strategy(generation_mode=mode, path_parameters=path, query=query)
    elif mode is GenerationMode.POSITIVE and "consumer" in body_properties(operation):
        yield "existing", operation.as_strategy(generation_mode=mode).map(aim_at_seeded_consumer)


def run_every_operation(
    schema: schemathesis.BaseSchema,
    existing: dict[str, str],
    max_examples: int,
    check: Callable[[schemathesis.Case], None],
    *,
    skip: Callable[[schemathesis.APIOperation], bool] = lambda _op: False,
) -> list[str]:
    """Run ``check`` over generated cases of every operation, valid and invalid; one report per failure.

    Hypothesis stops a run at its first failure and shrinks it; every other run still happens.
    """
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, "the admin API's document lists too few operations"
    for operation in operations:
        if skip(operation):
            continue
        modes = [GenerationMode.POSITIVE]
        if has_invalid_inputs(operation):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            for target, strategy in strategies(operation, mode, existing):

                @hypothesis_settings(max_examples)
                @given(case=strategy)
                def one(case: schemathesis.Case) -> None:
                    try:
                        check(case)
                    except (Failure, FailureGroup):
                        raise  # schemathesis' own report already ends with a curl command
                    except BaseException as exc:
                        exc.add_note("Reproduce with: " + case.as_curl_command())
                        raise

                try:
                    one()
                except Unsatisfiable:
                    pass  # no invalid value exists for the inputs left to vary
                except (Exception, BaseExceptionGroup) as exc:
                    failures.append(f"[{mode.value}, {target}] {operation.label}\n{describe(exc)}")
    return failures


def describe(exc: BaseException) -> str:
    if isinstance(exc, Failure | FailureGroup):
        return str(exc)
    parts = [f"{type(exc).__name__}: {exc}", *getattr(exc, "__notes__", ())]
    if isinstance(exc, BaseExceptionGroup):
        parts.extend("  - " + describe(sub).replace("\n", "\n    ") for sub in exc.exceptions)
    return "\n".join(parts)


def report(failures: list[str]) -> str:
    return f"{len(failures)} failing run(s):\n\n" + "\n\n".join(failures)


# -- the tests ----------------------------------------------------------------------------------------------


def test_admin_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    with admin_listener(tmp_path) as admin:
        schema = load_schema(admin.base_url)

        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=AUTH, checks=CONFORMANCE_CHECKS, timeout=TIMEOUT)

        failures = run_every_operation(schema, admin.existing, MAX_EXAMPLES, conforms)
    assert not failures, report(failures)


def test_admin_api_refuses_every_operation_without_the_token(tmp_path: Path) -> None:
    with admin_listener(tmp_path) as admin:
        schema = load_schema(admin.base_url)

        def refused(case: schemathesis.Case) -> None:
            for authorization in REFUSED_AUTHORIZATIONS:
                headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
                if authorization is not None:
                    headers["Authorization"] = authorization
                case.headers = headers
                response = case.call(timeout=TIMEOUT)
                case.validate_response(response, checks=[not_a_server_error])
                assert response.status_code == 401, (authorization, response.status_code, response.text[:300])
                content_type = response.headers.get("content-type", [""])[0]
                assert content_type.startswith("application/problem+json"), content_type
                assert response.headers.get("www-authenticate") == ['Bearer realm="bastion-admin"']

        failures = run_every_operation(
            schema,
            admin.existing,
            MAX_EXAMPLES_UNAUTHENTICATED,
            refused,
            skip=_public,
        )
    assert not failures, report(failures)


def _public(operation: schemathesis.APIOperation) -> bool:
    """Operations open without a token: health, and the sign-in steps (their document says security: [])."""
    return operation.path == "/admin/v1/health" or operation.definition.raw.get("security") == []


def test_public_operations_are_only_health_and_sign_in(tmp_path: Path) -> None:
    with admin_listener(tmp_path) as admin:
        schema = load_schema(admin.base_url)
        public = {op.path for op in (r.ok() for r in schema.get_all_operations()) if _public(op)}
    assert public == {
        "/admin/v1/health",
        "/admin/v1/auth/login",
        "/admin/v1/auth/email/start",
        "/admin/v1/auth/email/verify",
        "/admin/v1/auth/oidc/start",
        "/admin/v1/auth/oidc/callback",
    }, public


def test_health_needs_no_token_and_conforms(tmp_path: Path) -> None:
    """The one operation the guard lets through without a token still answers as documented."""
    with admin_listener(tmp_path) as admin:
        schema = load_schema(admin.base_url)
        case = schema["/admin/v1/health"]["GET"].Case()
        response = case.call_and_validate(checks=CONFORMANCE_CHECKS, timeout=TIMEOUT)
        assert response.status_code == 200


DEEP = b'{"a":' * 5000 + b"1" + b"}" * 5000  # deeper than Python's JSON parser recurses
# Errors the framework raises itself, outside any documented operation or before the body is parsed.
FRAMEWORK_ERRORS = [
    ("GET", "/admin/v1/no-such-thing", None, 404),
    ("DELETE", "/admin/v1/consumers", None, 405),
    # Schemathesis found these two: a body that is not UTF-8, and one too deeply nested to parse.
    ("POST", "/admin/v1/consumers", b'{"name": "\xff"}', 400),
    ("POST", "/admin/v1/consumers", b'{"name": "deep", "metadata": ' + DEEP + b"}", 400),
]


def test_framework_errors_are_problem_json_too(tmp_path: Path) -> None:
    """Starlette raises its own HTTPException for these; they must look like every other error."""
    wrong = []
    with admin_listener(tmp_path) as admin:
        port = int(admin.base_url.rsplit(":", 1)[1])
        headers = {**AUTH, "Content-Type": "application/json"}
        for method, path, body, status in FRAMEWORK_ERRORS:
            got, response_headers, raw = request(port, method, path, headers=headers, body=body)
            content_type = response_headers.get("content-type", "")
            if got != status or not content_type.startswith("application/problem+json"):
                wrong.append(f"{method} {path} {(body or b'')[:40]!r}: {got} {content_type} {raw[:120]!r}")
                continue
            problem = json.loads(raw)
            assert (problem["status"], bool(problem["code"])) == (status, True), problem
    assert not wrong, "\n".join(wrong)
