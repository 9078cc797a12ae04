"""Don't overshare (P7): fields removed from, or kept in, JSON responses (a route's ``response_fields``).

Patterns are dotted paths of object keys; ``*`` stands for any one key, and arrays are transparent (a
pattern applies to every element). The two lists read differently, as each is meant:

* ``deny`` matches **anywhere**: a pattern matches a field whose path *ends* with it. ``password`` removes
  every ``password`` key at any depth; ``user.email`` every ``email`` directly under a ``user``;
  ``*.token`` every ``token`` that sits under some key (not one at the top level).
* ``allow`` is **anchored at the top**: only the listed paths survive, with everything under them.
  ``[id, name, items.sku]`` keeps ``id``, ``name`` and the ``sku`` of each element of ``items``; a field
  whose value is not an object where the pattern goes deeper is dropped.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["FieldFilter"]

_END = ""  # a trie node's marker: a pattern ends here (keep the whole subtree)


class FieldFilter:
    def __init__(self, *, deny: list[str] | None = None, allow: list[str] | None = None) -> None:
        if bool(deny) == bool(allow):
            raise ValueError("give deny or allow")
        self._deny = [tuple(p.split(".")) for p in deny or ()]
        # the common case, a bare name, is one set lookup; "*" alone (every field) goes with the paths
        self._single = frozenset(p[0] for p in self._deny if len(p) == 1 and p[0] != "*")
        self._paths = [p for p in self._deny if len(p) > 1 or p[0] == "*"]
        self._allow: dict[str, Any] | None = None
        if allow:
            root: dict[str, Any] = {}
            for pattern in allow:
                node = root
                for part in pattern.split("."):
                    node = node.setdefault(part, {})
                node[_END] = True
            _fold_star(root)
            self._allow = root

    def apply(self, value: Any) -> Any:
        if self._allow is not None:
            kept = _keep(value, self._allow)
            return value if kept is _DROPPED else kept  # a bare scalar response has no fields to drop
        return self._drop(value, ())

    def _drop(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, list):
            return [self._drop(item, path) for item in value]
        if not isinstance(value, dict):
            return value
        out = {}
        for key, item in value.items():
            if key in self._single:
                continue
            here = (*path, key)
            if self._paths and any(_ends_with(here, p) for p in self._paths):
                continue
            out[key] = self._drop(item, here) if isinstance(item, (dict, list)) else item
        return out


def _ends_with(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if len(pattern) > len(path):
        return False
    tail = path[len(path) - len(pattern) :]
    return all(p == "*" or p == k for p, k in zip(pattern, tail, strict=True))


def _keep(value: Any, node: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [kept for kept in (_keep(item, node) for item in value) if kept is not _DROPPED]
    if not isinstance(value, dict):
        return _DROPPED
    out = {}
    star = node.get("*")
    for key, item in value.items():
        branch = node.get(key, star)  # a named branch already holds what "*" allows (_fold_star)
        if branch is None:
            continue
        if branch.get(_END):
            out[key] = item
            continue
        kept = _keep(item, branch)
        if kept is not _DROPPED:
            out[key] = kept
    return out


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two allow-tries as one: a path allowed by either is allowed."""
    out = copy.deepcopy(a)
    for key, sub in b.items():
        if key == _END:
            out[_END] = True
        elif key in out:
            out[key] = _union(out[key], sub)
        else:
            out[key] = copy.deepcopy(sub)
    return out


def _fold_star(node: dict[str, Any]) -> None:
    """Merge each ``*`` branch into its named siblings, so one lookup per key finds everything allowed
    (``[a.b, "*.c"]`` allows both ``a.b`` and ``a.c``)."""
    star = node.get("*")
    for key in list(node):
        if key in ("*", _END):
            continue
        if star is not None:
            node[key] = _union(node[key], star)
        _fold_star(node[key])
    if star is not None:
        _fold_star(star)


class _Dropped:
    pass


_DROPPED = _Dropped()
