"""A service's OpenAPI document (``openapi: path/to/spec.yaml``): read once at config load, checked against
the OpenAPI 3.0 / 3.1 schema (``openapi-spec-validator``), and listed as operations — which routes may be
generated from (``routes: from_openapi``) or must agree with. The request validators are compiled from the
same document by :mod:`bastion.checks.openapi` when the gateway is built.

``openapi: app`` names the document of the application BastionMiddleware wraps (FastAPI's ``app.openapi()``):
the middleware hands it to the loader when the application starts (:func:`app_document`), and from there it
is a document like any other."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.urls import OPENAPI_METHODS, openapi_base_path

__all__ = [
    "APP_DOCUMENT",
    "MAX_SPEC_BYTES",
    "OpenApiDocument",
    "SpecOperation",
    "app_document",
    "load_openapi",
    "parse_openapi",
    "pending_app_document",
    "template_shape",
]

MAX_SPEC_BYTES = 10 * 1024 * 1024
# services[].openapi: app — the wrapped application's generated document, not a file.
APP_DOCUMENT = "app"
APP_DOCUMENT_NAME = Path("app.openapi()")  # how messages name it, where they name a file


@dataclass(frozen=True)
class SpecOperation:
    method: str  # upper case
    path: str  # template with the document's base path (servers[0].url)
    scopes: tuple[str, ...]  # the first security requirement's scopes (OAuth2 / OpenID Connect)


@dataclass(frozen=True)
class OpenApiDocument:
    file: Path
    spec: Mapping[str, Any]
    operations: tuple[SpecOperation, ...]

    @property
    def version(self) -> str:
        return str(self.spec.get("openapi", ""))

    def find(self, method: str, path: str) -> SpecOperation | None:
        for op in self.operations:
            if op.method == method and op.path == path:
                return op
        return None


def template_shape(path: str) -> str:
    """``/v1/orders/{order_id}`` → ``/v1/orders/{}``: two templates that match the same requests."""
    out, depth = [], 0
    for ch in path:
        if ch == "{":
            depth += 1
            if depth == 1:
                out.append("{}")
        elif ch == "}":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _plain(node: Any) -> Any:
    """YAML's mapping keys as strings (``200:`` is an int in YAML, a response code in OpenAPI)."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_openapi(file: Path) -> OpenApiDocument:
    """Read and check a spec; ``ValueError`` with a message that says what is wrong and where."""
    try:
        size = file.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise ValueError(f"the OpenAPI document {file} is larger than {MAX_SPEC_BYTES // 2**20} MiB")
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"the OpenAPI document {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ValueError(f"cannot read the OpenAPI document {file}: {reason}") from None
    try:
        if file.suffix.lower() == ".json":
            spec = json.loads(text)
        else:
            from ruamel.yaml import YAML
            from ruamel.yaml.error import YAMLError

            try:
                spec = YAML(typ="safe", pure=True).load(text)
            except YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 1})" if mark is not None else ""
                raise ValueError(f"the OpenAPI document {file} is not valid YAML{where}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"the OpenAPI document {file} is not valid JSON (line {exc.lineno})") from None
    return parse_openapi(spec, file)


def app_document(spec: Any) -> OpenApiDocument:
    """The application's generated document (``openapi: app``), checked like a file. Its ``servers`` are
    dropped: the middleware sees the application's own paths, which are the document's paths as written."""
    if isinstance(spec, Mapping):
        spec = {k: v for k, v in spec.items() if k != "servers"}
    return parse_openapi(spec, APP_DOCUMENT_NAME)


def pending_app_document() -> OpenApiDocument:
    """What ``openapi: app`` stands for while the application's document is not known yet (a config loaded
    with ``defer_app_openapi``): no operations, so nothing is validated and no route is generated."""
    spec = {"openapi": "3.1.0", "info": {"title": APP_DOCUMENT, "version": "0"}, "paths": {}}
    return OpenApiDocument(APP_DOCUMENT_NAME, spec, ())


def parse_openapi(spec: Any, file: Path) -> OpenApiDocument:
    """Check a parsed document (``file`` names it in messages); ``ValueError`` says what is wrong, where."""
    spec = _plain(spec)
    if not isinstance(spec, dict) or not str(spec.get("openapi", "")).startswith(("3.0", "3.1")):
        raise ValueError(f"{file} is not an OpenAPI 3.0 or 3.1 document (its 'openapi' field)")
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    try:
        validate(spec)
    except OpenAPIValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        reason = exc.message.split("\n", 1)[0]
        raise ValueError(f"{file} is not a valid OpenAPI document at {where}: {reason}") from None
    except Exception as exc:  # the validator's own failures (an unresolvable $ref, …)
        reason = str(exc).split("\n", 1)[0]
        raise ValueError(f"{file} is not a valid OpenAPI document: {type(exc).__name__}: {reason}") from None
    return OpenApiDocument(file, spec, tuple(_operations(spec)))


def _operations(spec: Mapping[str, Any]) -> list[SpecOperation]:
    base = openapi_base_path(spec)
    default_security = spec.get("security") or []
    found = []
    for path, item in (spec.get("paths") or {}).items():
        if not isinstance(item, Mapping):
            continue
        for method in OPENAPI_METHODS:
            op = item.get(method)
            if not isinstance(op, Mapping):
                continue
            security = op.get("security", default_security) or []
            scopes: list[str] = []
            for requirement in security[:1]:
                for names in requirement.values():
                    scopes += [s for s in names if s not in scopes]
            found.append(SpecOperation(method.upper(), base + path, tuple(scopes)))
    return found
