"""Routing on canonical paths: deny by default, exact templates, no linear scans.

Templates:

* ``{name}`` matches one or more characters inside a single segment, so ``/Messages/{sid}.json``
  works; several placeholders and literal text may share a segment.
* ``{name:path}`` matches the rest of the path (possibly empty) and must be the last segment.
* Everything else is literal and exact: ``/v1/orders`` and ``/v1/orders/`` are different paths unless
  the route accepts both (``trailing_slash: either``).

Matching walks a segment trie: static children are a dict lookup, so 10 or 10,000 routes cost the
same. At one node a static segment beats a placeholder, which beats a catch-all; a placeholder
segment with more literal text is tried before a looser one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .chain import Step, steps_of
from .paths import PathRejected, canonicalize_path

if TYPE_CHECKING:
    from .chain import Check

__all__ = ["HEAD_WITH_GET", "Endpoint", "Match", "Route", "RouteError", "Router"]

HEAD_WITH_GET = True
_CACHE_SIZE = 8192
_CACHE_MAX_PATH = 256
_MISS = object()  # HEAD is allowed wherever GET is (RFC 9110 §9.3.2); documented.

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")


class RouteError(ValueError):
    """A route template or route table that cannot work; the config layer reports it with a location.

    ``route`` is the route that could not be added, when there is one.
    """

    def __init__(self, message: str, route: Route | None = None) -> None:
        super().__init__(message)
        self.route = route


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A compiled route. ``checks`` run in order; ``target`` is the runtime's upstream (opaque here).
    ``steps`` is the same chain as the per-request loop runs it (:func:`bastion.core.chain.steps_of`)."""

    id: str
    service: str
    template: str
    methods: frozenset[str]
    checks: tuple[Check, ...] = ()
    max_body: int = 1 << 20
    target: object = None
    trailing_slash_either: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    steps: tuple[Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", steps_of(self.checks))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Every route registered under one path template, by method."""

    template: str
    by_method: Mapping[str, Route]
    allow: str  # value of the Allow header for 405s

    def route_for(self, method: str) -> Route | None:
        return self.by_method.get(method)


@dataclass(frozen=True, slots=True)
class Match:
    """A matched path. Placeholder values are positional, because routes that share a path shape may
    name their placeholders differently (``/a/{id}`` for GET, ``/a/{order}`` for DELETE)."""

    endpoint: Endpoint
    values: tuple[str, ...]
    names: Mapping[int, tuple[str, ...]]  # id(route) -> that route's placeholder names, in order

    def params_for(self, route: Route) -> dict[str, str]:
        return dict(zip(self.names.get(id(route), ()), self.values, strict=False))

    @property
    def params(self) -> dict[str, str]:
        """Values named as in the first route registered under this path."""
        first = next(iter(self.endpoint.by_method.values()))
        return self.params_for(first)


class _Segment:
    """One templated segment, compiled to an anchored regex."""

    __slots__ = ("key", "literal_len", "names", "regex")

    def __init__(self, text: str) -> None:
        names: list[str] = []
        pattern: list[str] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            pattern.append(re.escape(text[pos : m.start()]))
            name, conv = m.group(1), m.group(2)
            if conv is not None:
                raise RouteError(f"placeholder {{{name}:{conv}}}: only {{name}} and {{name:path}} exist")
            if name in names:
                raise RouteError(f"placeholder {{{name}}} appears twice")
            names.append(name)
            pattern.append(f"(?P<{name}>.+?)")
            pos = m.end()
        pattern.append(re.escape(text[pos:]))
        self.names = tuple(names)
        self.regex = re.compile("".join(pattern))
        self.literal_len = len(_PLACEHOLDER.sub("", text))
        # Two templates are the same segment if they only differ in placeholder names.
        self.key = _PLACEHOLDER.sub("{}", text)


class _Node:
    __slots__ = ("catch_all", "dynamic", "endpoint", "static")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.dynamic: list[tuple[_Segment, _Node]] = []
        self.catch_all: tuple[str, _Node] | None = None
        self.endpoint: dict[str, Route] | None = None


def _split_template(template: str) -> list[str]:
    if not template.startswith("/"):
        raise RouteError("a route path must start with '/'")
    if "?" in template or "#" in template:
        raise RouteError("a route path cannot contain a query or fragment")
    segments = template.split("/")[1:]
    names = [m.group(1) for m in _PLACEHOLDER.finditer(template)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RouteError(f"placeholder {{{repeated[0]}}} appears twice")
    for i, seg in enumerate(segments):
        stripped = _PLACEHOLDER.sub("", seg)
        if "{" in stripped or "}" in stripped:
            raise RouteError(f"malformed placeholder in segment {seg!r}")
        for m in _PLACEHOLDER.finditer(seg):
            if m.group(2) == "path" and (m.group(0) != seg or i != len(segments) - 1):
                raise RouteError("{name:path} must be the whole last segment")
    # The literal parts must already be canonical, or no canonical request could ever match.
    probe = "/" + "/".join(_PLACEHOLDER.sub("x", s) for s in segments)
    try:
        canonical = canonicalize_path(probe)
    except PathRejected as exc:
        raise RouteError(f"route path is not a valid canonical path ({exc.code})") from None
    if canonical != probe:
        raise RouteError(f"route path is not canonical; requests are canonicalised to {canonical!r}")
    return segments


class Router:
    """Built once at config load from compiled routes; ``match`` is the per-request call."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._root = _Node()
        self._endpoints: dict[int, Endpoint] = {}
        self._names: dict[int, tuple[str, ...]] = {}
        self._cache: dict[str, Match | None] = {}
        nodes: list[tuple[_Node, str]] = []
        for route in routes:
            templates = [route.template]
            if route.trailing_slash_either and route.template != "/":
                alt = route.template[:-1] if route.template.endswith("/") else route.template + "/"
                templates.append(alt)
            self._names[id(route)] = tuple(m.group(1) for m in _PLACEHOLDER.finditer(route.template))
            for template in templates:
                node = self._insert(template)
                if node.endpoint is None:
                    node.endpoint = {}
                    nodes.append((node, template))
                for method in sorted(route.methods):
                    other = node.endpoint.get(method)
                    if other is not None and other is not route:
                        raise RouteError(
                            f"{method} {template} is declared twice (routes {other.id!r} and {route.id!r})",
                            route,
                        )
                    node.endpoint[method] = route
        for node, template in nodes:
            assert node.endpoint is not None
            if HEAD_WITH_GET and "GET" in node.endpoint and "HEAD" not in node.endpoint:
                node.endpoint["HEAD"] = node.endpoint["GET"]
            allow = ", ".join(sorted(node.endpoint))
            self._endpoints[id(node)] = Endpoint(template, MappingProxyType(dict(node.endpoint)), allow)
        for node in self._walk(self._root):
            node.dynamic.sort(key=lambda item: -item[0].literal_len)

    def _walk(self, node: _Node) -> Iterable[_Node]:
        stack = [node]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.static.values())
            stack.extend(child for _, child in n.dynamic)
            if n.catch_all:
                stack.append(n.catch_all[1])

    def _insert(self, template: str) -> _Node:
        node = self._root
        for seg in _split_template(template):
            m = _PLACEHOLDER.fullmatch(seg)
            if m and m.group(2) == "path":
                if node.catch_all is None:
                    node.catch_all = (m.group(1), _Node())
                node = node.catch_all[1]
                break
            if "{" not in seg:
                node = node.static.setdefault(seg, _Node())
                continue
            compiled = _Segment(seg)
            for existing, child in node.dynamic:
                if existing.key == compiled.key:
                    node = child
                    break
            else:
                child = _Node()
                node.dynamic.append((compiled, child))
                node = child
        return node

    def match(self, path: str) -> Match | None:
        """Find the endpoint for a canonical path, or ``None`` (404).

        Results are memoised: real traffic repeats paths, a ``Match`` is immutable, and the cache is
        bounded (cleared when full), so unique paths from a scanner cost a walk each, nothing more.
        """
        cache = self._cache
        hit = cache.get(path, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        values: list[str] = []
        node = self._find(self._root, path.split("/")[1:], 0, values)
        found = None if node is None else Match(self._endpoints[id(node)], tuple(values), self._names)
        if len(path) <= _CACHE_MAX_PATH:  # long paths are rare and would make the cache costly
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[path] = found
        return found

    def _find(self, node: _Node, segs: list[str], i: int, values: list[str]) -> _Node | None:
        if i == len(segs):
            return node if node.endpoint is not None else None
        seg = segs[i]
        child = node.static.get(seg)
        if child is not None:
            found = self._find(child, segs, i + 1, values)
            if found is not None:
                return found
        for compiled, child in node.dynamic:
            if not seg:
                break
            m = compiled.regex.fullmatch(seg)
            if m is None:
                continue
            mark = len(values)
            values.extend(m.groups())
            found = self._find(child, segs, i + 1, values)
            if found is not None:
                return found
            del values[mark:]
        if node.catch_all is not None:
            leaf = node.catch_all[1]
            if leaf.endpoint is not None:
                values.append("/".join(segs[i:]))
                return leaf
        return None
