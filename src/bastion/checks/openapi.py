"""OpenAPI request validation (P3): every request must match its operation in the service's spec.

Compiled once, at config load, from a spec that :mod:`bastion.config.openapi` has read and checked:

* each operation's **parameters** (path, query, header, cookie) become small validators over values
  coerced from their text (``"42"`` → 42 for an integer; repeated or comma-separated values for arrays);
  a parameter that is not an array may appear once (HTTP parameter pollution is refused);
* the **request body**: its media types (anything else is 415), and for JSON and form bodies a schema;
* OpenAPI schemas are translated to JSON Schema draft 7 (3.0's ``nullable`` and boolean
  ``exclusiveMinimum``, 3.1's type arrays; ``int32``/``int64`` become bounds; ``readOnly`` properties may
  not be sent in a request — mass assignment of ``id`` or ``role`` is refused) and compiled once with
  ``jsonschema-rs`` (a Rust implementation of JSON Schema). Component schemas stay ``$ref``s into
  ``definitions`` (recursive schemas work).

Per request the compiled validator runs once (a few microseconds for a typical body). Only when it
fails does the slower ``jsonschema`` validator run over the same schema, to list every failing location
(``body.items[3].qty``) with a reason written from the schema — never from the submitted value.

``reject_unknown_fields``: every object schema that does not say otherwise gets
``additionalProperties: false`` (``allOf`` of objects is merged first, so composition keeps working).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus

import jsonschema
import jsonschema_rs

from ..core.decision import Context, Deny, Verdict
from ..core.request import BodyReadError, RequestView
from ..core.urls import OPENAPI_METHODS, openapi_base_path
from .json_body import LATER, JsonLimits, json_body, json_body_now

__all__ = [
    "OpenApiCheck",
    "Operation",
    "SpecError",
    "compile_operations",
]

MAX_ERRORS = 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_COMPONENT = "#/components/schemas/"
_DROP = frozenset(
    {"discriminator", "xml", "example", "examples", "externalDocs", "deprecated", "title", "description",
     "writeOnly", "$comment", "contentMediaType", "contentEncoding", "$schema", "$id", "$anchor"}
)
_UNSUPPORTED = frozenset(
    {"unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$dynamicAnchor", "$recursiveRef"}
)
_FORMATS = frozenset(
    {"date", "date-time", "time", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference", "uuid"}
)
_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
FORM = "application/x-www-form-urlencoded"


class SpecError(ValueError):
    """The spec cannot be compiled; the message names the operation and the reason."""


# -- schema translation ----------------------------------------------------------------------------------


class _Translator:
    """OpenAPI schema objects → JSON Schema draft 7, with component schemas as ``definitions``."""

    def __init__(self, spec: Mapping[str, Any], *, v30: bool, reject_unknown: bool) -> None:
        self.spec = spec
        self.v30 = v30
        self.reject_unknown = reject_unknown
        self.definitions: dict[str, Any] = {}
        self._pending: list[str] = []

    def root(self, schema: Any) -> dict[str, Any]:
        """A complete schema for one location: the translated schema and the definitions it needs."""
        self.definitions = {}
        body = self.schema(schema, 0)
        while self._pending:
            name = self._pending.pop()
            self.definitions[name] = self.schema(self.component(name), 0)
        if not self.definitions:
            return body if isinstance(body, dict) else {"allOf": [body]}
        return {"allOf": [body], "definitions": self.definitions}

    def component(self, name: str) -> Any:
        found = self.spec.get("components", {}).get("schemas", {}).get(name)
        if found is None:
            raise SpecError(f"$ref to a missing schema {_COMPONENT}{name}")
        return found

    def resolve(self, ref: str) -> Any:
        return resolve_pointer(self.spec, ref)

    def schema(self, node: Any, depth: int) -> Any:
        if depth > 64:
            raise SpecError("schemas nested deeper than 64 levels")
        if isinstance(node, bool):
            return node
        if not isinstance(node, Mapping):
            raise SpecError("a schema must be an object")
        if "$ref" in node:
            ref = node["$ref"]
            rest = {k: v for k, v in node.items() if k not in ("$ref", *_DROP)}
            if isinstance(ref, str) and ref.startswith(_COMPONENT) and "/" not in ref[len(_COMPONENT) :]:
                name = ref[len(_COMPONENT) :]
                if name not in self.definitions and name not in self._pending:
                    self.component(name)  # raises for a missing one
                    self.definitions[name] = True  # placeholder until translated
                    self._pending.append(name)
                target: Any = {"$ref": "#/definitions/" + name}
            else:
                target = self.schema(self.resolve(ref), depth + 1)
            if not rest:
                return target
            return {"allOf": [target, self.schema(rest, depth + 1)]}
        unsupported = _UNSUPPORTED.intersection(node)
        if unsupported:
            raise SpecError(f"the schema keyword {sorted(unsupported)[0]} is not supported")
        if self.reject_unknown and "allOf" in node:
            node = self._merge_all_of(node, depth)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP or key.startswith("x-"):
                continue
            if key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"):
                out_key = "dependencies" if key == "dependentSchemas" else key
                out[out_key] = {k: self.schema(v, depth + 1) for k, v in value.items()}
            elif key == "items" and "prefixItems" in node:
                continue  # with prefixItems: the items after the tuple (below)
            elif key in ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then",
                         "else", "additionalItems"):
                out[key] = self.schema(value, depth + 1) if not isinstance(value, list) else [
                    self.schema(v, depth + 1) for v in value
                ]
            elif key in ("allOf", "anyOf", "oneOf"):
                out[key] = [self.schema(v, depth + 1) for v in value]
            elif key == "prefixItems":  # 2020-12 tuples → draft 7
                out["items"] = [self.schema(v, depth + 1) for v in value]
                if "items" in node:
                    out["additionalItems"] = self.schema(node["items"], depth + 1)
            elif key == "dependentRequired":
                out.setdefault("dependencies", {}).update(value)
            elif key == "format":
                if value in _INT_BOUNDS:
                    low, high = _INT_BOUNDS[value]
                    out.setdefault("minimum", low)
                    out.setdefault("maximum", high)
                elif value in _FORMATS:
                    out["format"] = value
            elif key == "nullable":
                continue  # below
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                if value:  # 3.0: a flag on minimum / maximum
                    bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                    if bound in node:
                        out[key] = node[bound]
            elif key == "readOnly":
                continue  # applied by the object that holds this property
            else:
                out[key] = value
        for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if node.get(flag) is True and bound in out and out.get(flag) == out[bound]:
                del out[bound]
        if self.v30 and node.get("nullable") is True:
            kind = out.get("type")
            if isinstance(kind, str):
                out["type"] = [kind, "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        props = node.get("properties")
        if isinstance(props, Mapping):
            read_only = [k for k, v in props.items() if isinstance(v, Mapping) and v.get("readOnly") is True]
            for name in read_only:  # never accepted in a request (a "not" keeps the error's location)
                out["properties"][name] = {"not": {}, "readOnly": True}
            if read_only and "required" in out:
                out["required"] = [r for r in out["required"] if r not in read_only]
        if self.reject_unknown and _is_object(out) and "additionalProperties" not in out and not any(
            k in out for k in ("allOf", "anyOf", "oneOf", "patternProperties")
        ):
            out["additionalProperties"] = False
        return out

    def _merge_all_of(self, node: Mapping[str, Any], depth: int) -> Mapping[str, Any]:
        """``allOf`` of plain object schemas → one object schema, so ``additionalProperties: false`` can be
        applied to the whole (applied to each part, it would refuse the other parts' properties)."""
        parts: list[Mapping[str, Any]] = []
        for part in node["allOf"]:
            seen = 0
            while isinstance(part, Mapping) and "$ref" in part and len(part) == 1:
                part = self.resolve(part["$ref"])
                seen += 1
                if seen > 32:
                    return node
            if not isinstance(part, Mapping) or any(k in part for k in ("anyOf", "oneOf", "not", "$ref")):
                return node
            if "allOf" in part:
                part = self._merge_all_of(part, depth + 1)
                if "allOf" in part:
                    return node
            parts.append(part)
        merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
        properties: dict[str, Any] = dict(merged.get("properties", {}))
        required: list[str] = list(merged.get("required", []))
        for part in parts:
            for key, value in part.items():
                if key == "properties":
                    properties.update(value)
                elif key == "required":
                    required += [r for r in value if r not in required]
                elif key == "additionalProperties":
                    if value is False or "additionalProperties" not in merged:
                        merged["additionalProperties"] = value
                elif key not in merged:
                    merged[key] = value
        merged["properties"] = properties
        if required:
            merged["required"] = required
        merged.setdefault("type", "object")
        return merged


def _is_object(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or (
        kind is None and "properties" in schema
    )


def resolve_pointer(spec: Mapping[str, Any], ref: Any) -> Any:
    """An internal ``$ref`` (``#/a/b``); anything else is a :class:`SpecError`."""
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise SpecError("only references inside the document (#/...) are supported")
    node: Any = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SpecError(f"$ref to a missing location {ref}")
    return node


def _deref(spec: Mapping[str, Any], node: Any) -> Any:
    seen = 0
    while isinstance(node, Mapping) and "$ref" in node:
        node = resolve_pointer(spec, node["$ref"])
        seen += 1
        if seen > 32:
            raise SpecError("a cycle of $refs")
    return node


# -- validators ------------------------------------------------------------------------------------------


def _uuid(value: str) -> bool:
    return _UUID.fullmatch(value) is not None


_UUID_PATTERN = "^" + _UUID.pattern + "$"
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs", "dependencies")


def _uuid_as_pattern(node: Any) -> Any:
    """The schema for the fast validator, with ``format: uuid`` checked as a pattern: the same test (the
    pattern is the format's), run in Rust instead of a Python callback per value (~1.5 µs a body). Only
    subschemas are rewritten — a property *named* ``format`` is data, not a keyword."""
    if isinstance(node, list):
        return [_uuid_as_pattern(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _uuid_as_pattern(sub) for name, sub in value.items()}
        elif key in ("enum", "const", "default", "examples", "example"):
            out[key] = value  # values, not schemas
        else:
            out[key] = _uuid_as_pattern(value)
    if out.get("format") == "uuid":
        del out["format"]
        if "pattern" in out:
            out["allOf"] = [*out.get("allOf", []), {"pattern": _UUID_PATTERN}]
        else:
            out["pattern"] = _UUID_PATTERN
    return out


class _Schema:
    """One compiled schema: a fast yes/no (jsonschema-rs), and the reasons when it says no (jsonschema)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        try:
            # No custom ``formats=``: jsonschema-rs takes a slower path for every value once any is
            # given (~0.3 µs a body, measured), and uuid, the one format draft 7 lacks, is a pattern here.
            self._fast = jsonschema_rs.Draft7Validator(_uuid_as_pattern(schema), validate_formats=True)
        except (jsonschema_rs.ValidationError, ValueError) as exc:
            raise SpecError(f"a schema does not compile: {str(exc).splitlines()[0][:200]}") from None
        self._slow: jsonschema.Draft7Validator | None = None

    def valid(self, value: Any) -> bool:
        try:
            return bool(self._fast.is_valid(value))
        except ValueError:  # a value jsonschema-rs cannot represent (an integer beyond 64 bits, a NaN)
            return not any(True for _ in self._slow_validator().iter_errors(value))

    def _slow_validator(self) -> jsonschema.Draft7Validator:
        if self._slow is None:
            self._slow = jsonschema.Draft7Validator(self.schema, format_checker=_format_checker())
        return self._slow

    def errors(self, value: Any, location: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for error in self._slow_validator().iter_errors(value):
            found.extend(_describe(error, location))
            if len(found) >= MAX_ERRORS:
                break
        if not found:  # the two validators disagree: still a failure, said plainly
            found.append((location, "does not match the schema"))
        return found[:MAX_ERRORS]


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()

    @checker.checks("uuid")
    def _is_uuid(value: object) -> bool:
        return not isinstance(value, str) or _uuid(value)

    return checker


def _where(location: str, path: Iterable[Any]) -> str:
    out = location
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SAFE_NAME.fullmatch(str(part)):
            out += f".{part}"
        else:
            out += ".<field>"
    return out


def _describe(error: jsonschema.ValidationError, location: str) -> list[tuple[str, str]]:
    """Where and why, from the schema's side only: never the submitted value."""
    where = _where(location, error.absolute_path)
    kind, expected = error.validator, error.validator_value
    if kind == "required":
        missing = [r for r in expected if isinstance(error.instance, dict) and r not in error.instance]
        return [(_where(where, [name]), "is required") for name in missing] or [(where, "is required")]
    if kind == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known] if isinstance(error.instance, dict) else []
        return [(_where(where, [name]), "is not an allowed property") for name in extra[:MAX_ERRORS]]
    if kind == "not" and isinstance(error.schema, dict) and error.schema.get("readOnly") is True:
        return [(where, "is read-only: it cannot be sent in a request")]
    if kind is None and error.schema is False:
        return [(where, "is not allowed here")]
    reasons: dict[str, Callable[[], str]] = {
        "type": lambda: "must be of type " + (
            expected if isinstance(expected, str) else " or ".join(map(str, expected))
        ),
        "enum": lambda: "must be one of the allowed values",
        "const": lambda: "must be the allowed constant",
        "minimum": lambda: f"must be >= {expected}",
        "maximum": lambda: f"must be <= {expected}",
        "exclusiveMinimum": lambda: f"must be > {expected}",
        "exclusiveMaximum": lambda: f"must be < {expected}",
        "multipleOf": lambda: f"must be a multiple of {expected}",
        "minLength": lambda: f"must be at least {expected} characters",
        "maxLength": lambda: f"must be at most {expected} characters",
        "pattern": lambda: "does not match the required pattern",
        "format": lambda: f"must be a valid {expected}",
        "minItems": lambda: f"must have at least {expected} items",
        "maxItems": lambda: f"must have at most {expected} items",
        "uniqueItems": lambda: "must not repeat items",
        "minProperties": lambda: f"must have at least {expected} properties",
        "maxProperties": lambda: f"must have at most {expected} properties",
        "oneOf": lambda: "must match exactly one of the allowed shapes",
        "anyOf": lambda: "must match one of the allowed shapes",
        "not": lambda: "is not allowed",
        "dependencies": lambda: "needs other properties with it",
    }
    make = reasons.get(str(kind))
    return [(where, make() if make else "does not match the schema")]


# -- parameters ------------------------------------------------------------------------------------------


def _types(schema: Mapping[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return set(kind)
    return set()


def _coerce(text: str, schema: Mapping[str, Any]) -> Any:
    """A parameter's text as the value its schema describes; unchanged when it cannot be (the schema then
    says why it is wrong)."""
    kinds = _types(schema)
    if "integer" in kinds and re.fullmatch(r"-?[0-9]{1,30}", text):
        return int(text)
    if "number" in kinds:
        if re.fullmatch(r"-?[0-9]{1,30}", text):
            return int(text)
        if re.fullmatch(r"-?[0-9]{1,30}(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?", text):
            return float(text)
    if "boolean" in kinds and text in ("true", "false"):
        return text == "true"
    if "null" in kinds and text == "" and "string" not in kinds:
        return None
    return text


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header", "cookie"]
    required: bool
    array: bool
    explode: bool
    item_schema: Mapping[str, Any]
    validator: _Schema | None
    allow_empty: bool

    @property
    def label(self) -> str:
        name = self.name.lower() if self.where == "header" else self.name
        return f"{self.where}.{name}" if _SAFE_NAME.fullmatch(name) else f"{self.where}.<param>"

    def value(self, texts: list[str]) -> Any:
        if self.array:
            items = texts if self.explode or len(texts) != 1 else texts[0].split(",")
            return [_coerce(t, self.item_schema) for t in items]
        return _coerce(texts[0], self.item_schema)


def _param(spec: Mapping[str, Any], raw: Any, tr: _Translator) -> Param:
    p = _deref(spec, raw)
    name, where = p.get("name"), p.get("in")
    if not isinstance(name, str) or where not in ("path", "query", "header", "cookie"):
        raise SpecError("a parameter needs a name and in: path, query, header or cookie")
    schema = p.get("schema")
    if schema is None:
        content = p.get("content") or {}
        schema = next(iter(content.values()), {}).get("schema") if content else None
    schema = _deref(spec, schema) if schema is not None else {}
    array = "array" in _types(schema)
    item_schema = _deref(spec, schema.get("items", {})) if array else schema
    translated = tr.root(schema) if schema else None
    style = p.get("style", "form" if where in ("query", "cookie") else "simple")
    explode = bool(p.get("explode", style == "form"))
    return Param(
        name=name,
        where=where,
        required=bool(p.get("required", where == "path")),
        array=array,
        explode=explode and where == "query",
        item_schema=item_schema if isinstance(item_schema, Mapping) else {},
        validator=_Schema(translated) if translated else None,
        allow_empty=bool(p.get("allowEmptyValue", False)),
    )


# -- operations ------------------------------------------------------------------------------------------


@dataclass
class Operation:
    """One compiled operation: what a request to ``METHOD path`` must look like."""

    method: str
    path: str  # the template, with the spec's base path
    operation_id: str | None
    params: list[Param] = field(default_factory=list)
    body_required: bool = False
    media: dict[str, _Schema | None] = field(default_factory=dict)  # media type → schema (None: any)
    wildcard_media: list[str] = field(default_factory=list)  # "image/*", "*/*"
    # Content-Type header → media_for's answer: clients send the same few, so the split and lowering
    # happen once per spelling (bounded: a client inventing spellings only misses the memo)
    _media_memo: dict[str | None, tuple[bool, _Schema | None, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def takes_body(self) -> bool:
        return bool(self.media or self.wildcard_media)

    def media_for(self, content_type: str | None) -> tuple[bool, _Schema | None, str]:
        """(accepted, schema, the media type it matched)."""
        found = self._media_memo.get(content_type)
        if found is None:
            found = self._media_for(content_type)
            if len(self._media_memo) < _MEDIA_MEMO:
                self._media_memo[content_type] = found
        return found

    def _media_for(self, content_type: str | None) -> tuple[bool, _Schema | None, str]:
        if content_type is None:
            return False, None, ""
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in self.media:
            return True, self.media[mime], mime
        for pattern in self.wildcard_media:
            if pattern == "*/*" or (pattern.endswith("/*") and mime.startswith(pattern[:-1])):
                return True, None, mime
        return False, None, mime


_MEDIA_MEMO = 64


def compile_operations(
    spec: Mapping[str, Any], *, reject_unknown: bool = False
) -> dict[tuple[str, str], Operation]:
    """Every operation of a checked spec, keyed by ``(METHOD, path template)``."""
    v30 = str(spec.get("openapi", "")).startswith("3.0")
    tr = _Translator(spec, v30=v30, reject_unknown=reject_unknown)
    try:
        base = openapi_base_path(spec)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    out: dict[tuple[str, str], Operation] = {}
    for path, item in (spec.get("paths") or {}).items():
        item = _deref(spec, item)
        shared = item.get("parameters", [])
        for method in OPENAPI_METHODS:
            op = item.get(method)
            if op is None:
                continue
            where = f"{method.upper()} {path}"
            try:
                out[(method.upper(), base + path)] = _operation(spec, tr, method, base + path, op, shared)
            except SpecError as exc:
                raise SpecError(f"{where}: {exc}") from None
    return out


def _operation(
    spec: Mapping[str, Any], tr: _Translator, method: str, path: str, op: Mapping[str, Any], shared: list[Any]
) -> Operation:
    params: dict[tuple[str, str], Param] = {}
    for raw in [*shared, *op.get("parameters", [])]:  # operation-level ones override path-level ones
        param = _param(spec, raw, tr)
        key = (param.where, param.name.lower() if param.where == "header" else param.name)
        params[key] = param
    result = Operation(method.upper(), path, op.get("operationId"), list(params.values()))
    body = op.get("requestBody")
    if body is not None:
        body = _deref(spec, body)
        result.body_required = bool(body.get("required", False))
        for mime, media in (body.get("content") or {}).items():
            mime = mime.lower()
            schema = _deref(spec, media.get("schema")) if isinstance(media, Mapping) else None
            if "*" in mime:
                result.wildcard_media.append(mime)
                continue
            compiled = _Schema(tr.root(schema)) if schema and _json_or_form(mime) else None
            result.media[mime] = compiled
    return result


def _json_or_form(mime: str) -> bool:
    return mime == FORM or mime == "application/json" or mime.endswith("+json")


# -- the check -------------------------------------------------------------------------------------------


class _Compiled:
    """An operation's parameters sorted by where they are, for the per-request loop."""

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.path = [p for p in op.params if p.where == "path"]
        self.query = [p for p in op.params if p.where == "query"]
        self.headers = [p for p in op.params if p.where == "header"]
        self.cookies = [p for p in op.params if p.where == "cookie"]
        self.query_names = frozenset(p.name for p in self.query)
        self.header_names = frozenset(p.name.lower() for p in self.headers)
        self.has_params = bool(op.params)
        self.takes_body = op.takes_body


class OpenApiCheck:
    """``validate: strict`` refuses a request that does not match its operation; ``monitor`` records the
    same findings as a ``request.invalid`` notice and lets it through."""

    name = "openapi"

    def __init__(
        self,
        ops: Mapping[str, Operation],
        *,
        mode: Literal["strict", "monitor"] = "strict",
        json_limits: JsonLimits,
        forward_unknown: bool = True,
    ) -> None:
        self.mode = mode
        self.json_limits = json_limits
        self.forward_unknown = forward_unknown
        self._ops = {method: _Compiled(op) for method, op in ops.items()}

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict:
        verdict = self.decide_now(req, ctx)
        if verdict is not LATER:
            return verdict  # type: ignore[no-any-return]
        return await self.decide_later(req, ctx)

    def decide_now(self, req: RequestView, ctx: Context) -> Verdict:
        """The verdict without waiting — every request whose JSON body came with its head, or that has
        none; :data:`LATER` for a form or a body still to come (then :meth:`decide_later`)."""
        op = self._ops.get(req.method)
        if op is None:  # a method the route has and the document does not describe (HEAD, OPTIONS)
            return None
        errors = self._params(op, req, ctx)
        problem = None
        if not errors:
            problem = self._check_body_now(op, req, ctx, errors)
            if problem is LATER:  # the body is still to come (or a form): wait for it
                return LATER
        return self._conclude(ctx, problem, errors)

    async def decide_later(self, req: RequestView, ctx: Context) -> Verdict:
        """After :meth:`decide_now` said LATER: the parameters passed there (they are checked again, the
        same way — a form or a streamed body is the rare case), and the body is read and judged."""
        op = self._ops[req.method]
        errors = self._params(op, req, ctx)
        problem = await self._check_body(op, req, ctx, errors) if not errors else None
        return self._conclude(ctx, problem, errors)

    def _params(self, op: _Compiled, req: RequestView, ctx: Context) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        if op.has_params or req.query:
            self._check_params(op, req, ctx, errors)
        if not self.forward_unknown:
            ctx.notes["forward_headers"] = op.header_names
        return errors

    def _conclude(self, ctx: Context, problem: Any, errors: list[tuple[str, str]]) -> Verdict:
        if isinstance(problem, Deny):
            return self._verdict(ctx, problem)
        status, code = problem if isinstance(problem, tuple) else (400, "request_invalid")
        if not errors:
            return None
        return self._verdict(ctx, _invalid(status, code, errors))

    def _check_params(
        self, op: _Compiled, req: RequestView, ctx: Context, errors: list[tuple[str, str]]
    ) -> None:
        """The path, query, header and cookie parameters."""
        for p in op.path:
            text = req.params.get(p.name)
            if text is not None:
                self._check(p, [text], errors)
        if op.query or req.query:
            self._check_query(op, req, ctx, errors)
        for p in op.headers:
            self._check(p, req.headers.getall(p.name.lower()), errors)
        if op.cookies:
            jar = _cookies(req.headers.getall("cookie"))
            for p in op.cookies:
                self._check(p, jar.get(p.name, []), errors)

    def _verdict(self, ctx: Context, deny: Deny) -> Verdict:
        if self.mode == "strict":
            return deny
        ctx.notices.append(("request.invalid", {"reason": deny.code, **dict(deny.evidence)}))
        return None

    def _check(self, p: Param, texts: list[str], errors: list[tuple[str, str]]) -> None:
        if not texts:
            if p.required:
                errors.append((p.label, "is required"))
            return
        if len(texts) > 1 and not p.array:
            errors.append((p.label, "must appear once"))
            return
        if texts == [""] and not p.allow_empty and p.where == "query" and p.required:
            errors.append((p.label, "must not be empty"))
            return
        if p.validator is None:
            return
        value = p.value(texts)
        if not p.validator.valid(value):
            errors.extend(p.validator.errors(value, p.label))

    def _check_query(
        self, op: _Compiled, req: RequestView, ctx: Context, errors: list[tuple[str, str]]
    ) -> None:
        try:
            pairs = parse_qsl(req.query, keep_blank_values=True, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            errors.append(("query", "is not valid UTF-8"))
            return
        values: dict[str, list[str]] = {}
        for name, value in pairs:
            values.setdefault(name, []).append(value)
        for p in op.query:
            self._check(p, values.get(p.name, []), errors)
        if not self.forward_unknown and any(name not in op.query_names for name in values):
            kept = [part for part in req.query.split("&") if _query_name(part) in op.query_names]
            ctx.notes["forward_query"] = "&".join(kept)

    def _check_body_now(
        self, compiled: _Compiled, req: RequestView, ctx: Context, errors: list[tuple[str, str]]
    ) -> Any:
        """The body's part of the verdict, without waiting; :data:`LATER` when it needs the body and the
        body is still to come, or is a form (then :meth:`_check_body` reads it)."""
        op = compiled.op
        if req.body.declared_length == 0:
            if op.body_required:
                errors.append(("body", "is required"))
            return None
        if not compiled.takes_body:
            errors.append(("body", "is not accepted by this operation"))
            return None
        # (a repeated Content-Type never gets here: the gateway refuses it, content_type_repeated)
        accepted, schema, mime = op.media_for(req.headers.first.get("content-type"))
        if not accepted:
            return _invalid(
                415,
                "unsupported_media_type",
                [("header.content-type", "must be one of: " + ", ".join([*op.media, *op.wildcard_media]))],
            )
        if mime == FORM:
            return LATER
        if schema is None:
            return None
        parsed = json_body_now(req, ctx, self.json_limits)
        if parsed is LATER or isinstance(parsed, Deny):
            return parsed
        return _judged(schema, parsed, errors)

    async def _check_body(
        self, compiled: _Compiled, req: RequestView, ctx: Context, errors: list[tuple[str, str]]
    ) -> Deny | tuple[int, str] | None:
        """The rest of :meth:`_check_body_now`, for a body that is awaited: one accepted by media type
        (that was settled there), a form or JSON still to come."""
        op = compiled.op
        _, schema, mime = op.media_for(req.headers.first.get("content-type"))
        if mime == FORM:
            try:
                raw = await req.body.read()
            except BodyReadError as exc:
                return Deny(exc.status, exc.code, "The request body could not be read.")
            if not raw and op.body_required:
                errors.append(("body", "is required"))
                return None
            if schema is None:
                return None
            try:
                pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
            except (UnicodeDecodeError, ValueError):
                errors.append(("body", "is not a valid form (UTF-8, name=value pairs)"))
                return None
            value = _form_value(pairs, schema.schema)
        elif schema is not None:
            parsed = await json_body(req, ctx, self.json_limits)
            if isinstance(parsed, Deny):
                return parsed
            value = parsed
        else:
            return None
        return _judged(schema, value, errors)


def _judged(schema: _Schema, value: Any, errors: list[tuple[str, str]]) -> tuple[int, str] | None:
    if schema.valid(value):
        return None
    errors.extend(schema.errors(value, "body"))
    return 422, "request_invalid"


def _query_name(part: str) -> str:
    return unquote_plus(part.split("=", 1)[0])


def _form_value(pairs: list[tuple[str, str]], schema: Mapping[str, Any]) -> Any:
    """Form fields as the object the schema describes (texts coerced per property)."""
    properties = _properties(schema)
    out: dict[str, Any] = {}
    for name, text in pairs:
        prop = properties.get(name, {})
        if "array" in _types(prop):
            out.setdefault(name, []).append(_coerce(text, prop.get("items", {})))
        elif name in out:  # repeated, yet not an array: a list, which the schema refuses
            previous = out[name]
            coerced = _coerce(text, prop)
            out[name] = [*previous, coerced] if isinstance(previous, list) else [previous, coerced]
        else:
            out[name] = _coerce(text, prop)
    return out


def _properties(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    for part in [schema, *schema.get("allOf", [])]:
        if isinstance(part, Mapping) and "properties" in part:
            return part["properties"]
        if isinstance(part, Mapping) and "$ref" in part:
            name = part["$ref"].rsplit("/", 1)[-1]
            target = schema.get("definitions", {}).get(name)
            if isinstance(target, Mapping) and "properties" in target:
                return target["properties"]
    return {}


def _cookies(headers: list[str]) -> dict[str, list[str]]:
    jar: dict[str, list[str]] = {}
    for header in headers:
        for part in header.split(";"):
            name, eq, value = part.strip().partition("=")
            if eq:
                jar.setdefault(name, []).append(value)
    return jar


def _invalid(status: int, code: str, errors: list[tuple[str, str]]) -> Deny:
    listed = [{"location": where, "reason": why} for where, why in errors[:MAX_ERRORS]]
    detail = {
        415: "The request's content type is not accepted here.",
        422: "The request body does not match the API's schema.",
    }.get(status, "The request does not match the API's description.")
    return Deny(status, code, detail, evidence={"errors": listed}, extra={"errors": listed})
