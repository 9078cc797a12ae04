"""Don't overshare (P7), the pure half: ``FieldFilter`` (a route's ``response_fields``) case by case, then
properties against a small reference implementation, then the config that feeds it (``response_fields``
and ``responses``).

What is pinned: ``deny`` matches a path's *end* anywhere (``*`` one key, arrays transparent); ``allow`` is
anchored at the top and keeps whole subtrees under a listed path; keys are compared as whole strings, so
a key that contains a dot is never split (``"user.email"`` is one key, not ``user`` → ``email``), and the
comparison is case-sensitive.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bastion.config import ConfigError, load_config_text
from bastion.config.models import DEFAULT_HIDDEN_HEADERS
from bastion.core.fields import FieldFilter


def deny(patterns: list[str], value: Any) -> Any:
    return FieldFilter(deny=patterns).apply(value)


def allow(patterns: list[str], value: Any) -> Any:
    return FieldFilter(allow=patterns).apply(value)


# -- deny: a pattern matches wherever a field's path ends with it ---------------------------------------

# (id, patterns, input, expected output)
DENY_CASES: list[tuple[str, list[str], Any, Any]] = [
    ("bare-name-top", ["password"], {"id": 1, "password": "p"}, {"id": 1}),
    (
        "bare-name-any-depth",
        ["password"],
        {"password": 1, "user": {"password": 2, "profile": {"password": 3, "bio": "b"}}},
        {"user": {"profile": {"bio": "b"}}},
    ),
    (
        "bare-name-in-array-of-objects",
        ["password"],
        {"users": [{"id": 1, "password": "a"}, {"id": 2, "password": "b"}, 7, "x"]},
        {"users": [{"id": 1}, {"id": 2}, 7, "x"]},
    ),
    (
        "bare-name-in-array-of-arrays",
        ["password"],
        [[{"password": 1, "k": 1}], [[{"password": 2}]], []],
        [[{"k": 1}], [[{}]], []],
    ),
    (
        "bare-name-removes-whole-subtree",
        ["secrets"],
        {"secrets": {"a": [1, 2], "b": {"c": 3}}, "ok": True},
        {"ok": True},
    ),
    (
        "star-dot-name-not-at-top",
        ["*.token"],
        {"token": "top", "session": {"token": "t1", "id": 1}, "a": {"b": {"token": "t2"}}},
        {"token": "top", "session": {"id": 1}, "a": {"b": {}}},
    ),
    (
        "star-dot-name-under-array-element",  # arrays are transparent: the key above is "items"
        ["*.token"],
        {"items": [{"token": 1, "n": 1}, {"token": 2}]},
        {"items": [{"n": 1}, {}]},
    ),
    (
        "star-dot-name-top-level-array-elements-have-no-key-above",
        ["*.token"],
        [{"token": 1}, {"u": {"token": 2}}],
        [{"token": 1}, {"u": {}}],
    ),
    (
        "dotted-path-matches-directly-under",
        ["user.email"],
        {"email": "top", "user": {"email": "e", "name": "n"}, "owner": {"email": "kept"}},
        {"email": "top", "user": {"name": "n"}, "owner": {"email": "kept"}},
    ),
    (
        "dotted-path-anywhere-it-ends",
        ["user.email"],
        {"data": {"items": [{"user": {"email": "e", "id": 1}}]},
         "x": {"user": {"profile": {"email": "deep"}}}},
        {"data": {"items": [{"user": {"id": 1}}]}, "x": {"user": {"profile": {"email": "deep"}}}},
    ),
    (
        "dotted-path-through-array",  # the array between user and email is transparent
        ["user.email"],
        {"user": [{"email": "a"}, {"email": "b", "id": 2}]},
        {"user": [{}, {"id": 2}]},
    ),
    (
        "star-in-middle",
        ["a.*.c"],
        {"a": {"x": {"c": 1, "d": 2}, "c": 3}, "z": {"a": {"y": {"c": 4}}}},
        {"a": {"x": {"d": 2}, "c": 3}, "z": {"a": {"y": {}}}},
    ),
    (
        "star-at-end-empties-the-object",
        ["user.*"],
        {"user": {"a": 1, "b": {"c": 2}}, "other": {"a": 1}},
        {"user": {}, "other": {"a": 1}},
    ),
    (
        "star-star-removes-everything-below-the-top",
        ["*.*"],
        {"a": 1, "b": {"c": 2, "d": {"e": 3}}, "l": [{"x": 1}]},
        {"a": 1, "b": {}, "l": [{}]},
    ),
    (
        "longer-pattern-than-path-matches-nothing",
        ["a.b.c"],
        {"b": {"c": 1}, "c": 2},
        {"b": {"c": 1}, "c": 2},
    ),
    (
        "several-patterns",
        ["password", "*.token", "user.email"],
        {
            "token": "t0",
            "password": "p",
            "user": {"email": "e", "token": "t1", "name": "n", "password": "p2"},
            "list": [{"session": {"token": "t2", "ok": 1}}],
        },
        {"token": "t0", "user": {"name": "n"}, "list": [{"session": {"ok": 1}}]},
    ),
    ("everything-removed-leaves-empty-object", ["a", "b"], {"a": 1, "b": [1]}, {}),
    ("empty-object", ["password"], {}, {}),
    ("empty-array", ["password"], [], []),
    ("bare-scalars-unchanged", ["password"], "password", "password"),
    ("null-unchanged", ["password"], None, None),
    ("values-are-never-matched-only-keys", ["password"], {"note": "password", "l": ["password"]},
     {"note": "password", "l": ["password"]}),
    ("case-sensitive", ["password"], {"Password": 1, "PASSWORD": 2, "password": 3},
     {"Password": 1, "PASSWORD": 2}),
    ("unicode-key", ["пароль"], {"пароль": "x", "имя": {"пароль": "y", "ok": "✓"}}, {"имя": {"ok": "✓"}}),
    ("unicode-key-in-path", ["ユーザー.メール"], {"ユーザー": {"メール": "m", "名前": "n"}},
     {"ユーザー": {"名前": "n"}}),
    ("falsy-values-kept", ["x"], {"a": 0, "b": "", "c": None, "d": False, "e": [], "f": {}},
     {"a": 0, "b": "", "c": None, "d": False, "e": [], "f": {}}),
]


@pytest.mark.parametrize(("patterns", "value", "expected"), [c[1:] for c in DENY_CASES],
                         ids=[c[0] for c in DENY_CASES])
def test_deny(patterns: list[str], value: Any, expected: Any) -> None:
    before = copy.deepcopy(value)
    assert deny(patterns, value) == expected
    assert value == before, "the input must not be modified"


# -- allow: anchored at the top, keeps everything under a listed path -----------------------------------

ALLOW_CASES: list[tuple[str, list[str], Any, Any]] = [
    ("top-level-names", ["id", "name"], {"id": 1, "name": "n", "password": "p", "extra": {"id": 2}},
     {"id": 1, "name": "n"}),
    ("subtree-kept-whole", ["user"], {"user": {"a": 1, "b": [{"c": 2}]}, "x": 1},
     {"user": {"a": 1, "b": [{"c": 2}]}}),
    ("anchored-not-anywhere", ["id"], {"user": {"id": 1}}, {}),
    ("nested-path", ["user.name"], {"user": {"name": "n", "email": "e"}, "name": "top"},
     {"user": {"name": "n"}}),
    (
        "array-of-objects-transparent",
        ["id", "items.sku"],
        {"id": 1, "items": [{"sku": "a", "price": 1}, {"sku": "b", "secret": 2}, {"price": 3}]},
        {"id": 1, "items": [{"sku": "a"}, {"sku": "b"}, {}]},
    ),
    (
        "array-of-arrays-transparent",
        ["m.v"],
        {"m": [[{"v": 1, "w": 2}], [[{"v": 3}]]]},
        {"m": [[{"v": 1}], [[{"v": 3}]]]},
    ),
    (
        "scalar-where-pattern-goes-deeper-dropped",
        ["user.name"],
        {"user": "just-a-string"},
        {},
    ),
    (
        "scalars-in-array-where-pattern-goes-deeper-dropped",
        ["items.sku"],
        {"items": [{"sku": 1}, 2, "three", None, [{"sku": 4}, 5]]},
        {"items": [{"sku": 1}, [{"sku": 4}]]},
    ),
    (
        "scalars-in-array-under-a-whole-kept-path-stay",
        ["tags"],
        {"tags": ["a", 1, None], "x": 1},
        {"tags": ["a", 1, None]},
    ),
    ("intermediate-object-with-nothing-kept-stays-empty", ["user.name"], {"user": {"email": "e"}},
     {"user": {}}),
    ("star-top", ["*.id"], {"a": {"id": 1, "n": 2}, "b": 3, "c": [{"id": 4, "z": 5}]},
     {"a": {"id": 1}, "c": [{"id": 4}]}),
    ("star-middle", ["data.*.id"], {"data": {"x": {"id": 1, "s": 2}, "y": {"id": 3}}, "id": 9},
     {"data": {"x": {"id": 1}, "y": {"id": 3}}}),
    ("star-end", ["user.*"], {"user": {"a": 1, "b": {"c": 2}}, "x": 1}, {"user": {"a": 1, "b": {"c": 2}}}),
    ("star-alone-keeps-all", ["*"], {"a": 1, "b": {"c": [1]}}, {"a": 1, "b": {"c": [1]}}),
    ("longer-and-shorter-pattern-shorter-wins", ["user", "user.name"], {"user": {"name": 1, "email": 2}},
     {"user": {"name": 1, "email": 2}}),
    ("nothing-matches-empty-object", ["id"], {"a": 1}, {}),
    ("empty-object", ["id"], {}, {}),
    ("top-level-array-of-objects", ["id"], [{"id": 1, "p": 2}, {"p": 3}], [{"id": 1}, {}]),
    ("top-level-array-of-scalars-emptied", ["id"], [1, "two", None], []),
    ("bare-scalar-unchanged", ["id"], "a string", "a string"),
    ("bare-number-unchanged", ["id"], 42, 42),
    ("bare-null-unchanged", ["id"], None, None),
    ("unicode-keys", ["名前", "データ.値"], {"名前": "n", "秘密": "s", "データ": {"値": 1, "秘密": 2}},
     {"名前": "n", "データ": {"値": 1}}),
    ("case-sensitive", ["id"], {"ID": 1, "Id": 2, "id": 3}, {"id": 3}),
]


@pytest.mark.parametrize(("patterns", "value", "expected"), [c[1:] for c in ALLOW_CASES],
                         ids=[c[0] for c in ALLOW_CASES])
def test_allow(patterns: list[str], value: Any, expected: Any) -> None:
    before = copy.deepcopy(value)
    assert allow(patterns, value) == expected
    assert value == before, "the input must not be modified"


# -- keys that contain dots: whole key names only, never split -------------------------------------------


class TestDottedKeys:
    """Patterns split on dots; data keys never do. A key spelled ``"user.email"`` is one key: the path
    pattern ``user.email`` does not match it, and neither does the bare name ``email``."""

    DOC = {"user.email": "flat@example.com", "user": {"email": "nested@example.com"}, "a.b": {"c": 1}}

    def test_deny_path_pattern_matches_only_nested_keys(self) -> None:
        assert deny(["user.email"], self.DOC) == {
            "user.email": "flat@example.com", "user": {}, "a.b": {"c": 1},
        }

    def test_deny_bare_name_does_not_match_inside_a_dotted_key(self) -> None:
        assert deny(["email"], {"user.email": "x"}) == {"user.email": "x"}

    def test_deny_star_path_sees_a_dotted_key_as_one_level(self) -> None:
        # "a.b" is one key above "c": *.c matches it
        assert deny(["*.c"], {"a.b": {"c": 1, "d": 2}}) == {"a.b": {"d": 2}}

    def test_allow_path_pattern_does_not_keep_a_dotted_key(self) -> None:
        assert allow(["user.email"], self.DOC) == {"user": {"email": "nested@example.com"}}

    def test_allow_star_keeps_a_dotted_key(self) -> None:
        assert allow(["*"], {"a.b": 1}) == {"a.b": 1}


class TestConstruction:
    def test_needs_exactly_one_list(self) -> None:
        with pytest.raises(ValueError):
            FieldFilter()
        with pytest.raises(ValueError):
            FieldFilter(deny=[], allow=[])
        with pytest.raises(ValueError):
            FieldFilter(deny=["a"], allow=["b"])

    def test_filter_is_reusable(self) -> None:
        f = FieldFilter(deny=["password"])
        for i in range(3):
            assert f.apply({"password": i, "n": i}) == {"n": i}

    def test_output_serialises_back_to_json(self) -> None:
        doc = json.loads('{"a": [1, 2.5, true, null, {"password": "x", "é": "ü"}], "b": {"c": "d"}}')
        out = deny(["password"], doc)
        assert json.loads(json.dumps(out)) == {"a": [1, 2.5, True, None, {"é": "ü"}], "b": {"c": "d"}}


# -- known gaps (src bugs): each test states the documented behaviour and fails today -------------------
def test_deny_star_alone_removes_every_field() -> None:
    # The config validator accepts ``deny: ["*"]``; a deny list that removes nothing fails open.
    assert deny(["*"], {"a": 1, "b": {"c": 2}}) == {}
def test_allow_patterns_are_a_union_when_a_name_and_star_overlap() -> None:
    # ``*`` keeps every top-level field whole; listing ``a.b`` as well must not narrow ``a``.
    assert allow(["a.b", "*"], {"a": {"b": 1, "c": 2}, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
def test_allow_union_named_path_and_star_path() -> None:
    assert allow(["a.b", "*.c"], {"a": {"b": 1, "c": 2, "d": 3}}) == {"a": {"b": 1, "c": 2}}


# -- properties, against a reference implementation --------------------------------------------------------

_KEYS = st.sampled_from(["a", "b", "c", "id", "token", "password", "user", "email", "ü", "a.b"])
_PATTERN_PARTS = st.sampled_from(["a", "b", "c", "id", "token", "password", "user", "email", "ü", "*"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=30,
)
_patterns = st.lists(
    st.lists(_PATTERN_PARTS, min_size=1, max_size=3).map(".".join), min_size=1, max_size=4
)
_PROPS = settings(max_examples=150, deadline=None, database=None)


def _matches(parts: tuple[str, ...], keys: tuple[str, ...]) -> bool:
    return len(parts) == len(keys) and all(p in ("*", k) for p, k in zip(parts, keys, strict=True))


def _ref_deny(value: Any, patterns: list[tuple[str, ...]], path: tuple[str, ...] = ()) -> Any:
    """Reference: drop a key when the path to it ends with some pattern; arrays carry no key."""
    if isinstance(value, list):
        return [_ref_deny(v, patterns, path) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        here = (*path, key)
        if any(len(p) <= len(here) and _matches(p, here[len(here) - len(p):]) for p in patterns):
            continue
        out[key] = _ref_deny(item, patterns, here)
    return out


def _key_paths(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (key path, value) in a document; arrays are transparent."""
    if isinstance(value, list):
        return [kp for v in value for kp in _key_paths(v, path)]
    if not isinstance(value, dict):
        return []
    out = []
    for key, item in value.items():
        here = (*path, key)
        out.append((here, item))
        out.extend(_key_paths(item, here))
    return out


@given(_json, _patterns)
@example({"user": {"email": 1}, "email": 2}, ["user.email"])
@example([{"token": 1, "a": {"token": 2}}], ["*.token"])
@_PROPS
def test_deny_matches_the_reference(value: Any, patterns: list[str]) -> None:
    out = deny(patterns, value)
    assert out == _ref_deny(value, [tuple(p.split(".")) for p in patterns])
    # and said directly: no denied bare name is a key anywhere in the output ("*": no key at all)
    bare = {p for p in patterns if "." not in p}
    assert not any(path[-1] in bare or "*" in bare for path, _ in _key_paths(out))


@given(_json, _patterns)
@_PROPS
def test_allow_keeps_only_paths_some_pattern_reaches(value: Any, patterns: list[str]) -> None:
    split = [tuple(p.split(".")) for p in patterns]
    out = allow(patterns, value)
    if not isinstance(value, (dict, list)):
        assert out == value  # a bare scalar response has no fields
        return
    for path, item in _key_paths(out):
        # either a pattern covers this path (the subtree under it is kept whole) ...
        covered = any(len(p) <= len(path) and _matches(p, path[: len(p)]) for p in split)
        # ... or the path leads towards a longer pattern, and then only objects/arrays are kept
        leading = any(len(p) > len(path) and _matches(p[: len(path)], path) for p in split)
        assert covered or leading, (path, patterns)
        if not covered:
            assert isinstance(item, (dict, list)), (path, item)


def _ref_allow(value: Any, patterns: list[tuple[str, ...]], path: tuple[str, ...] = ()) -> Any:
    """Reference (patterns without ``*``): keep a key whose path a pattern covers, descend where one
    leads; scalars where a pattern goes deeper are dropped (the sentinel below)."""
    if isinstance(value, list):
        return [k for k in (_ref_allow(v, patterns, path) for v in value) if k is not _GONE]
    if not isinstance(value, dict):
        return _GONE
    out = {}
    for key, item in value.items():
        here = (*path, key)
        if any(p == here[: len(p)] for p in patterns if len(p) <= len(here)):
            out[key] = item
        elif any(p[: len(here)] == here for p in patterns if len(p) > len(here)):
            kept = _ref_allow(item, patterns, here)
            if kept is not _GONE:
                out[key] = kept
    return out


_GONE = object()


@given(_json, st.lists(st.lists(_PATTERN_PARTS.filter(lambda s: s != "*"), min_size=1, max_size=3)
                       .map(".".join), min_size=1, max_size=4))
@_PROPS
def test_allow_without_stars_matches_the_reference(value: Any, patterns: list[str]) -> None:
    expected = _ref_allow(value, [tuple(p.split(".")) for p in patterns])
    assert allow(patterns, value) == (value if expected is _GONE else expected)


# -- the config that feeds it -----------------------------------------------------------------------------


def _route_config(response_fields: str, responses: str = "") -> str:
    return f"""
{responses}
services:
  - name: api
    upstream: http://127.0.0.1:9000
    routes:
      - path: /v1/users/{{id}}
        methods: [GET]
        auth: none
        response_fields: {response_fields}
"""


def _load(text: str) -> Any:
    return load_config_text(text, source="bastion.yaml", env={}).settings


def _fields(settings_: Any) -> Any:
    return settings_.services[0].routes[0].response_fields


class TestConfig:
    def test_deny_list_loads_with_default_max_body(self) -> None:
        rf = _fields(_load(_route_config('{deny: [password, "*.token", user.email]}')))
        assert rf.deny == ["password", "*.token", "user.email"]
        assert rf.allow == []
        assert rf.max_body == 10 * 1024**2

    def test_allow_list_with_max_body(self) -> None:
        rf = _fields(_load(_route_config("{allow: [id, items.sku], max_body: 64KiB}")))
        assert rf.allow == ["id", "items.sku"]
        assert rf.max_body == 64 * 1024

    @pytest.mark.parametrize("fields", [
        "{deny: [a], allow: [b]}",  # both
        "{}",  # neither
        "{deny: []}",
        "{max_body: 1KiB}",
    ])
    def test_exactly_one_list(self, fields: str) -> None:
        with pytest.raises(ConfigError) as info:
            _load(_route_config(fields))
        assert any("deny" in str(i) or "allow" in str(i) for i in info.value.issues)

    @pytest.mark.parametrize(
        "pattern", ["a..b", ".a", "a.", "", "a b", "a/b", "a[0]", "**", "пароль", "a.*b"]
    )
    def test_bad_patterns_rejected(self, pattern: str) -> None:
        with pytest.raises(ConfigError) as info:
            _load(_route_config(f"{{deny: [{json.dumps(pattern)}]}}"))
        assert any("field pattern" in str(i) for i in info.value.issues)

    def test_responses_defaults(self) -> None:
        settings_ = _load(_route_config("{deny: [a]}"))
        assert settings_.responses.replace_upstream_errors is True
        assert settings_.responses.hide_headers == list(DEFAULT_HIDDEN_HEADERS)
        assert {"server", "x-powered-by", "x-aspnet-version"} <= set(settings_.responses.hide_headers)

    def test_hide_headers_lowercased_and_replace_the_default(self) -> None:
        settings_ = _load(_route_config("{deny: [a]}", "responses: {hide_headers: [X-Internal-Host, Via]}"))
        assert settings_.responses.hide_headers == ["x-internal-host", "via"]

    @pytest.mark.parametrize("name", ["bad header", "x:y", "", "é"])
    def test_hide_headers_must_be_header_names(self, name: str) -> None:
        with pytest.raises(ConfigError):
            _load(_route_config("{deny: [a]}", f"responses: {{hide_headers: [{json.dumps(name)}]}}"))
