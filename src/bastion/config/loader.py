"""YAML → plain data with line numbers → secret references resolved → pydantic models.

ruamel.yaml (YAML 1.2: ``::1/128`` is a plain scalar and ``no`` is a string, not ``False``) composes a
node tree with a mark on every node, so each value's line is known and every validation error can point
at it. Duplicate keys and merge keys are errors.

``services[].openapi: app`` is the document of the application BastionMiddleware wraps, which exists only
once the application does. ``app_openapi=`` gives it (the middleware does, when the application starts):
it is substituted for ``app`` before validation, so it is checked, generates routes and is compiled like a
file's. Without it the key is an error (``bastion serve``, ``bastion check``) — unless
``defer_app_openapi=True`` (the CLI's identity, events and database commands; ``bastion check
--middleware``; the middleware before its application starts), which validates everything else and leaves
those services without operations: :attr:`LoadedConfig.app_openapi` names them, and
:meth:`LoadedConfig.with_app_openapi` loads the same config again with the document.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from .errors import ConfigError, ConfigIssue
from .models import APP_UPSTREAM, GatewayConfig, Secret, _agree, _generated_routes
from .openapi import (
    APP_DOCUMENT,
    APP_DOCUMENT_NAME,
    OpenApiDocument,
    SpecOperation,
    app_document,
    pending_app_document,
)

__all__ = ["LoadedConfig", "load_config", "load_config_text"]

Loc = tuple[str | int, ...]
_REF = re.compile(r"\$\$\{|\$\{([a-z]+):([^}]*)\}")
_MAX_SECRET_FILE = 64 * 1024
# A bare reference inside a flow collection (``[${env:A}, ${env:B}]``, ``{user: ${env:U}}``) is not a plain
# scalar in YAML (``{`` is a flow indicator there), yet it is the natural way to write a list of secrets:
# such references are quoted before parsing. Same line numbers; the value is the same string.
_FLOW_REF = re.compile(r"([\[,{]|: )(\s*)(\$\{(?:env|file):[^{}\s,\]\[\"']*\})(?=\s*[,\]}])")


@dataclass(frozen=True)
class LoadedConfig:
    settings: GatewayConfig
    source: str
    warnings: list[ConfigIssue] = field(default_factory=list)
    lines: Mapping[Loc, int] = field(default_factory=dict)
    # Services with openapi: app loaded without the application's document (defer_app_openapi): they have
    # no operations yet — no validation, no generated routes. Not to be served until with_app_openapi.
    app_openapi: tuple[str, ...] = ()
    # Loads the same config again with the application's document (set when app_openapi is not empty).
    reload: Callable[[Mapping[str, Any]], LoadedConfig] | None = field(
        default=None, repr=False, compare=False
    )

    def with_app_openapi(self, document: Mapping[str, Any]) -> LoadedConfig:
        """This config with ``document`` (the application's generated OpenAPI document) for every
        ``openapi: app``; itself when it has none. ``ConfigError`` when the document is not usable."""
        if not self.app_openapi:
            return self
        if self.reload is None:
            raise ConfigError("this configuration cannot be loaded again with the application's document")
        return self.reload(document)


def _quote_flow_references(text: str) -> str:
    def quote(m: re.Match[str]) -> str:
        before = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        if before.count('"') % 2 or before.count("'") % 2 or "#" in before:
            return m.group(0)  # inside a quoted scalar or a comment: leave it as written
        return f'{m.group(1)}{m.group(2)}"{m.group(3)}"'

    return _FLOW_REF.sub(quote, text) if "${" in text else text


class _Composer:
    def __init__(self, file: str, env: Mapping[str, str], base_dir: Path) -> None:
        self.file = file
        self.env = env
        self.base_dir = base_dir
        self.lines: dict[Loc, int] = {}
        self.referenced: set[Loc] = set()
        self.failed: set[Loc] = set()
        self.issues: list[ConfigIssue] = []
        self._yaml = YAML(typ="safe", pure=True)

    def compose(self, text: str) -> Node | None:
        return self._yaml.compose(_quote_flow_references(text))  # type: ignore[no-any-return]

    def build(self, node: Node, loc: Loc) -> Any:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if str(key_node.tag) == "tag:yaml.org,2002:merge" or key_node.value == "<<":
                    self._issue(key_node, loc, "YAML merge keys (<<) are not supported")
                    continue
                key = self._yaml.constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    self._issue(key_node, loc, "keys must be strings")
                    continue
                if key in out:
                    self._issue(key_node, (*loc, key), "duplicate key")
                    continue
                out[key] = self.build(value_node, (*loc, key))
            return out
        if isinstance(node, SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        value = self._yaml.constructor.construct_object(node, deep=True)
        if isinstance(value, str) and "$" in value:
            return self._resolve(value, node, loc)
        return value

    def _issue(self, node: Node, loc: Loc, message: str) -> None:
        self.failed.add(loc)
        self.issues.append(ConfigIssue(self.file, node.start_mark.line + 1, _dotted(loc), message))

    def _resolve(self, text: str, node: Node, loc: Loc) -> str:
        def replace(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            kind, arg = m.group(1), m.group(2).strip()
            self.referenced.add(loc)
            if kind == "env":
                if arg not in self.env:
                    self._issue(
                        node, loc, f"secret reference ${{env:{arg}}}: environment variable {arg} is not set"
                    )
                    return ""
                return self.env[arg]
            if kind == "file":
                path = Path(arg) if Path(arg).is_absolute() else self.base_dir / arg
                try:
                    if path.stat().st_size > _MAX_SECRET_FILE:
                        self._issue(
                            node, loc, f"secret reference ${{file:{arg}}}: file is larger than 64 KiB"
                        )
                        return ""
                    return path.read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    reason = exc.strerror or type(exc).__name__
                    self._issue(node, loc, f"secret reference ${{file:{arg}}}: cannot read file ({reason})")
                    return ""
                except UnicodeDecodeError:
                    self._issue(node, loc, f"secret reference ${{file:{arg}}}: file is not UTF-8 text")
                    return ""
            self._issue(
                node, loc, f"unknown secret reference kind {kind!r}: use ${{env:NAME}} or ${{file:/path}}"
            )
            return ""

        return _REF.sub(replace, text)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _line_for(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    for end in range(len(loc), -1, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return line
    return None


def _all_field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names = {info.alias or name for name, info in model.model_fields.items()}
    for info in model.model_fields.values():
        stack = [info.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                names |= _all_field_names(ann, seen)
            stack.extend(getattr(ann, "__args__", ()))
    return names


_VOCABULARY = sorted(_all_field_names(GatewayConfig))


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1]) if err["loc"] else ""
        close = difflib.get_close_matches(key, _VOCABULARY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short":
        return "must not be empty"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def _without_union_tags(loc: Loc, data: Any) -> Loc:
    """Pydantic names the member of a tagged union in the location (``sinks.0.webhook.url``); the config
    has no such key: drop it (``sinks.0.url``)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _secret_locs(model: BaseModel, loc: Loc = ()) -> list[Loc]:
    found: list[Loc] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        here = (*loc, name)
        if isinstance(value, Secret):
            found.append(here)
        elif isinstance(value, BaseModel):
            found.extend(_secret_locs(value, here))
        elif isinstance(value, list | tuple | dict):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for i, item in items:
                if isinstance(item, Secret):
                    found.append((*here, i))
                elif isinstance(item, BaseModel):
                    found.extend(_secret_locs(item, (*here, i)))
    return found


_NEEDS_APP = (
    "openapi: app is the generated document of the application BastionMiddleware wraps: the service needs "
    "upstream: app"
)
_NOT_HERE = (
    "openapi: app is the application's generated document, which only BastionMiddleware reads (when the "
    "application starts); bastion serve needs the path of an OpenAPI document. Check a middleware config "
    "with bastion check --middleware"
)
_DEFERRED = (
    "openapi: app: the application's document is read when BastionMiddleware starts; the routes generated "
    "from it, and whether the listed routes agree with it, are checked then"
)
# Stands in for the application's operations while they are unknown, so that route_defaults is still checked.
_STAND_IN = OpenApiDocument(APP_DOCUMENT_NAME, {}, (SpecOperation("GET", "/", ()),))


class _AppDocuments:
    """``openapi: app`` in the composed data, before validation: the application's document substituted
    (routes generated from it, or checked against it), or a document without operations (deferred)."""

    def __init__(self, composer: _Composer, source: str, document: Mapping[str, Any] | None) -> None:
        self.composer, self.source, self.document = composer, source, document
        self.parsed: OpenApiDocument | ValueError | None = None
        self.issues: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []
        self.pending: list[str] = []
        self.without_routes: list[int] = []  # generated from a document not known yet: no routes

    def _issue(self, loc: Loc, message: str) -> None:
        self.composer.failed.add(loc)
        self.issues.append(
            ConfigIssue(self.source, _line_for(self.composer.lines, loc), _dotted(loc), message)
        )

    def _parse(self) -> OpenApiDocument:
        if self.parsed is None:
            try:
                self.parsed = app_document(self.document)
            except ValueError as exc:
                self.parsed = exc
        if isinstance(self.parsed, ValueError):
            raise self.parsed
        return self.parsed

    def substitute(self, data: dict[str, Any], defer: bool) -> None:
        services = data.get("services")
        if not isinstance(services, list):
            return
        for index, svc in enumerate(services):
            if not isinstance(svc, dict) or svc.get("openapi") != APP_DOCUMENT:
                continue
            at: Loc = ("services", index)
            doc: OpenApiDocument | None = None
            if svc.get("upstream") != APP_UPSTREAM:
                self._issue((*at, "openapi"), _NEEDS_APP)
            elif self.document is not None:
                try:
                    doc = self._parse()
                except ValueError as exc:
                    self._issue((*at, "openapi"), str(exc))
            elif defer:
                self.pending.append(str(svc.get("name")))
                line = _line_for(self.composer.lines, (*at, "openapi"))
                self.warnings.append(ConfigIssue(self.source, line, _dotted((*at, "openapi")), _DEFERRED))
            else:
                self._issue((*at, "openapi"), _NOT_HERE)
            svc["openapi"] = doc or pending_app_document()  # a document: the model takes it as it is
            try:
                self._routes(svc, doc)
            except PydanticCustomError as exc:
                self._issue((*at, *exc.context["at"]), exc.message())  # type: ignore[index]
            if svc.get("routes") == "from_openapi":  # not generated (no document, or a mistake reported)
                svc["routes"] = [{"path": "/", "methods": ["GET"], "auth": "none"}]
                self.without_routes.append(index)

    @staticmethod
    def _routes(svc: dict[str, Any], doc: OpenApiDocument | None) -> None:
        """What the service model does for a file's document (models.ServiceSettings._openapi)."""
        routes = svc.get("routes")
        if routes == "from_openapi":
            generated = _generated_routes(doc or _STAND_IN, svc.get("route_defaults"))
            if doc is not None:
                svc["routes"] = generated
        elif "route_defaults" in svc:
            raise PydanticCustomError(
                "config_cross_check",
                "route_defaults is for routes: from_openapi",
                {"at": ("route_defaults",)},
            )
        elif doc is not None and isinstance(routes, list):
            _agree(doc, routes)


def load_config_text(
    text: str,
    *,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    app_openapi: Mapping[str, Any] | None = None,
    defer_app_openapi: bool = False,
) -> LoadedConfig:
    """``app_openapi``: the generated OpenAPI document of the application BastionMiddleware wraps, for
    ``services[].openapi: app``; ``defer_app_openapi``: without it, load such a config anyway (see the
    module docstring)."""
    env = os.environ if env is None else env
    composer = _Composer(source, env, base_dir or Path.cwd())
    try:
        node = composer.compose(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([ConfigIssue(source, line, "", f"invalid YAML: {problem}")]) from None
    if node is None:
        raise ConfigError([ConfigIssue(source, None, "", "the file is empty; see examples/quickstart.yaml")])
    data = composer.build(node, ())
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "", "the top level must be a mapping of settings")])
    app_docs = _AppDocuments(composer, source, app_openapi)
    app_docs.substitute(data, defer_app_openapi)
    issues = [*composer.issues, *app_docs.issues]
    settings: GatewayConfig | None = None
    try:
        settings = GatewayConfig.model_validate(data, context={"base_dir": composer.base_dir})
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False, include_context=True):
            loc = _without_union_tags(tuple(err["loc"]), data)
            if err["type"] == "duplicate_service":
                loc = (*loc, err["ctx"]["index"], "name")
            elif err["type"] == "config_cross_check":
                loc = (*loc, *err["ctx"]["at"])  # a whole-config rule, pointed at the key it is about
            if loc in composer.failed:
                continue  # already reported, more precisely, while resolving a reference
            issues.append(ConfigIssue(source, _line_for(composer.lines, loc), _dotted(loc), _message(err)))
    if issues or settings is None:
        issues.sort(key=lambda i: (i.line or 0, i.path))
        raise ConfigError(issues)
    warnings = [
        ConfigIssue(
            source,
            _line_for(composer.lines, loc),
            _dotted(loc),
            "literal secret in the config; use a reference such as ${env:NAME} or ${file:/path}",
        )
        for loc in _secret_locs(settings)
        if loc not in composer.referenced
    ]
    if not app_docs.pending:
        return LoadedConfig(settings, source, warnings, composer.lines)
    if app_docs.without_routes:
        services = list(settings.services)
        for index in app_docs.without_routes:
            services[index] = services[index].model_copy(update={"routes": []})
        settings = settings.model_copy(update={"services": services})
    base = composer.base_dir

    def reload(document: Mapping[str, Any]) -> LoadedConfig:
        return load_config_text(text, source=source, env=env, base_dir=base, app_openapi=document)

    return LoadedConfig(
        settings,
        source,
        [*app_docs.warnings, *warnings],
        composer.lines,
        app_openapi=tuple(app_docs.pending),
        reload=reload,
    )


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    app_openapi: Mapping[str, Any] | None = None,
    defer_app_openapi: bool = False,
) -> LoadedConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}", str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read config file: {getattr(exc, 'strerror', None) or exc}", str(p)
        ) from None
    return load_config_text(
        text,
        source=str(p),
        env=env,
        base_dir=p.resolve().parent,
        app_openapi=app_openapi,
        defer_app_openapi=defer_app_openapi,
    )
