"""Router: exact templates on canonical paths, deny by default, precedence, 405 data, conflicts.

The router only ever sees canonical paths (tests/unit/test_paths.py covers how they are made), so the
inputs here are canonical strings and the assertions are about which route — and which parameters —
come back.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bastion.core import router as router_module
from bastion.core.router import Endpoint, Match, Route, RouteError, Router


def route(template: str, *methods: str, id: str | None = None, either: bool = False) -> Route:
    return Route(
        id=id or f"{'+'.join(methods or ('GET',))} {template}",
        service="svc",
        template=template,
        methods=frozenset(methods or ("GET",)),
        trailing_slash_either=either,
    )


def build(*routes: Route) -> Router:
    return Router(routes)


def matched(router: Router, path: str, method: str = "GET") -> tuple[Route | None, dict[str, str]]:
    m = router.match(path)
    assert m is not None, f"{path} did not match"
    return m.endpoint.route_for(method), dict(m.params)


class TestExactMatching:
    def test_unknown_path_is_none(self) -> None:
        r = build(route("/v1/orders"))
        for path in ["/", "/v1", "/v1/order", "/v1/ordersx", "/v1/orders/x", "/v2/orders", "/V1/orders"]:
            assert r.match(path) is None, path

    def test_no_prefix_match(self) -> None:
        r = build(route("/admin"))
        assert r.match("/admin/secret") is None
        assert r.match("/administrator") is None

    def test_trailing_slash_is_a_different_path(self) -> None:
        orders = route("/v1/orders")
        r = build(orders)
        assert matched(r, "/v1/orders")[0] is orders
        assert r.match("/v1/orders/") is None

    def test_trailing_slash_route_does_not_match_without_slash(self) -> None:
        docs = route("/docs/")
        r = build(docs)
        assert matched(r, "/docs/")[0] is docs
        assert r.match("/docs") is None

    def test_both_forms_can_be_separate_routes(self) -> None:
        bare, slashed = route("/v1/orders", id="bare"), route("/v1/orders/", id="slashed")
        r = build(bare, slashed)
        assert matched(r, "/v1/orders")[0] is bare
        assert matched(r, "/v1/orders/")[0] is slashed

    def test_trailing_slash_either_accepts_both(self) -> None:
        orders = route("/v1/orders", either=True)
        r = build(orders)
        assert matched(r, "/v1/orders")[0] is orders
        assert matched(r, "/v1/orders/")[0] is orders
        assert r.match("/v1/orders//") is None  # canonical paths never have this, and it is not "either"

    def test_trailing_slash_either_from_slashed_template(self) -> None:
        docs = route("/docs/", either=True)
        r = build(docs)
        assert matched(r, "/docs")[0] is docs
        assert matched(r, "/docs/")[0] is docs

    def test_trailing_slash_either_on_placeholder(self) -> None:
        one = route("/v1/orders/{order_id}", either=True)
        r = build(one)
        assert matched(r, "/v1/orders/7/") == (one, {"order_id": "7"})
        assert matched(r, "/v1/orders/7") == (one, {"order_id": "7"})

    def test_root_route(self) -> None:
        root = route("/", either=True)
        r = build(root)
        assert matched(r, "/")[0] is root
        assert r.match("/x") is None

    def test_case_sensitive(self) -> None:
        r = build(route("/admin"))
        assert r.match("/ADMIN") is None
        assert r.match("/Admin") is None

    def test_empty_router_matches_nothing(self) -> None:
        r = Router([])
        assert r.match("/") is None
        assert r.match("/anything") is None


class TestPlaceholders:
    def test_placeholder_captures_one_segment(self) -> None:
        one = route("/v1/orders/{order_id}")
        r = build(one)
        assert matched(r, "/v1/orders/42") == (one, {"order_id": "42"})
        assert r.match("/v1/orders/42/items") is None
        assert r.match("/v1/orders") is None

    def test_placeholder_never_matches_empty_segment(self) -> None:
        r = build(route("/v1/orders/{order_id}"))
        assert r.match("/v1/orders/") is None

    def test_param_value_is_the_canonical_text(self) -> None:
        # Parameters are slices of the canonical path: still percent-encoded where the path is.
        one = route("/files/{name}")
        r = build(one)
        assert matched(r, "/files/caf%C3%A9") == (one, {"name": "caf%C3%A9"})
        assert matched(r, "/files/a%40b") == (one, {"name": "a%40b"})

    def test_placeholder_with_suffix_in_segment(self) -> None:
        msg = route("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json")
        r = build(msg)
        assert matched(r, "/2010-04-01/Accounts/AC1/Messages/SM123.json") == (
            msg,
            {"account_sid": "AC1", "sid": "SM123"},
        )
        assert r.match("/2010-04-01/Accounts/AC1/Messages/SM123") is None
        assert r.match("/2010-04-01/Accounts/AC1/Messages/SM123.xml") is None
        assert r.match("/2010-04-01/Accounts/AC1/Messages/.json") is None  # {sid} needs at least one char

    def test_placeholder_with_prefix_in_segment(self) -> None:
        v = route("/api/v{version}/status")
        r = build(v)
        assert matched(r, "/api/v2/status") == (v, {"version": "2"})
        assert r.match("/api/v/status") is None
        assert r.match("/api/x2/status") is None

    def test_several_placeholders_in_one_segment(self) -> None:
        f = route("/files/{name}.{ext}")
        r = build(f)
        assert matched(r, "/files/report.pdf") == (f, {"name": "report", "ext": "pdf"})
        assert r.match("/files/report") is None
        assert r.match("/files/.pdf") is None
        assert r.match("/files/report.") is None

    def test_placeholders_separated_by_literal_dash(self) -> None:
        rng = route("/range/{start}-{end}")
        r = build(rng)
        assert matched(r, "/range/10-20") == (rng, {"start": "10", "end": "20"})

    def test_literal_text_in_segment_is_not_a_regex(self) -> None:
        # "." in a template is a literal dot, not "any character".
        r = build(route("/Messages/{sid}.json"))
        assert r.match("/Messages/SM1xjson") is None

    def test_params_named_as_in_the_matched_template(self) -> None:
        # Two routes whose placeholder segments look alike share a trie node; the parameters must still
        # carry the names the *matched* route declared, or a handler reading params["account_id"]
        # gets a KeyError (or someone else's value).
        users = route("/accounts/{account_id}/users", id="users")
        settings = route("/accounts/{id}/settings", id="settings")
        r = build(users, settings)
        assert matched(r, "/accounts/A1/users") == (users, {"account_id": "A1"})
        assert matched(r, "/accounts/A1/settings") == (settings, {"id": "A1"})

    def test_no_stale_params_after_backtracking(self) -> None:
        # "x{a}" has more literal text, so it is tried first and fails two levels down.
        deep = route("/t/x{a}/{b}/deep", id="deep")
        shallow = route("/t/{x}/fixed", id="shallow")
        r = build(deep, shallow)
        assert matched(r, "/t/x1/fixed") == (shallow, {"x": "x1"})
        assert matched(r, "/t/x1/y/deep") == (deep, {"a": "1", "b": "y"})


class TestPrecedence:
    def test_static_beats_placeholder_beats_catch_all(self) -> None:
        me = route("/users/me", id="static")
        one = route("/users/{user_id}", id="param")
        rest = route("/users/{rest:path}", id="catch_all")
        r = build(rest, one, me)  # declaration order must not matter
        assert matched(r, "/users/me") == (me, {})
        assert matched(r, "/users/42") == (one, {"user_id": "42"})
        assert matched(r, "/users/42/avatar") == (rest, {"rest": "42/avatar"})
        assert matched(r, "/users/") == (rest, {"rest": ""})

    def test_more_literal_placeholder_segment_wins(self) -> None:
        loose = route("/Messages/{anything}", id="loose")
        json = route("/Messages/{sid}.json", id="json")
        r = build(loose, json)
        assert matched(r, "/Messages/SM1.json") == (json, {"sid": "SM1"})
        assert matched(r, "/Messages/SM1.xml") == (loose, {"anything": "SM1.xml"})

    def test_backtracks_from_static_to_placeholder(self) -> None:
        static = route("/a/b/c", id="static")
        dyn = route("/a/{x}/d", id="dynamic")
        r = build(static, dyn)
        assert matched(r, "/a/b/c") == (static, {})
        assert matched(r, "/a/b/d") == (dyn, {"x": "b"})

    def test_backtracks_from_static_to_catch_all(self) -> None:
        static = route("/a/b/c", id="static")
        rest = route("/a/{rest:path}", id="rest")
        r = build(static, rest)
        assert matched(r, "/a/b/c") == (static, {})
        assert matched(r, "/a/b/d") == (rest, {"rest": "b/d"})
        assert matched(r, "/a/b") == (rest, {"rest": "b"})

    def test_root_catch_all_loses_to_everything_specific(self) -> None:
        health = route("/health", id="health")
        root = route("/", id="root")
        every = route("/{rest:path}", id="every")
        r = build(every, health, root)
        assert matched(r, "/health")[0] is health
        assert matched(r, "/")[0] is root
        assert matched(r, "/health/x") == (every, {"rest": "health/x"})
        assert matched(r, "/other") == (every, {"rest": "other"})


class TestCatchAll:
    def test_catch_all_matches_rest_including_empty(self) -> None:
        public = route("/public/{rest:path}")
        r = build(public)
        assert matched(r, "/public/") == (public, {"rest": ""})
        assert matched(r, "/public/a") == (public, {"rest": "a"})
        assert matched(r, "/public/a/b/c.css") == (public, {"rest": "a/b/c.css"})
        assert matched(r, "/public/a/") == (public, {"rest": "a/"})

    def test_catch_all_does_not_match_parent_without_slash(self) -> None:
        r = build(route("/public/{rest:path}"))
        assert r.match("/public") is None
        assert r.match("/publicity") is None
        assert r.match("/public-x/a") is None

    def test_catch_all_after_placeholder(self) -> None:
        blob = route("/repos/{repo}/blob/{file:path}")
        r = build(blob)
        assert matched(r, "/repos/bastion/blob/src/a.py") == (blob, {"repo": "bastion", "file": "src/a.py"})


class TestMethodsAndAllow:
    def test_allow_lists_methods_with_head_implied_by_get(self) -> None:
        assert router_module.HEAD_WITH_GET is True
        orders = route("/v1/orders", "GET", "POST")
        r = build(orders)
        m = r.match("/v1/orders")
        assert isinstance(m, Match)
        assert isinstance(m.endpoint, Endpoint)
        assert m.endpoint.allow == "GET, HEAD, POST"
        assert m.endpoint.route_for("GET") is orders
        assert m.endpoint.route_for("HEAD") is orders
        assert m.endpoint.route_for("POST") is orders
        assert m.endpoint.route_for("DELETE") is None
        assert m.endpoint.template == "/v1/orders"

    def test_no_head_without_get(self) -> None:
        r = build(route("/hooks", "POST"))
        m = r.match("/hooks")
        assert m is not None
        assert m.endpoint.allow == "POST"
        assert m.endpoint.route_for("HEAD") is None
        assert m.endpoint.route_for("GET") is None

    def test_methods_from_several_routes_share_one_endpoint(self) -> None:
        reader = route("/v1/items/{item_id}", "GET", id="reader")
        writer = route("/v1/items/{item_id}", "PUT", "DELETE", id="writer")
        r = build(reader, writer)
        m = r.match("/v1/items/3")
        assert m is not None
        assert m.endpoint.allow == "DELETE, GET, HEAD, PUT"
        assert m.endpoint.route_for("GET") is reader
        assert m.endpoint.route_for("HEAD") is reader
        assert m.endpoint.route_for("PUT") is writer
        assert m.endpoint.route_for("DELETE") is writer
        assert dict(m.params) == {"item_id": "3"}

    def test_explicit_head_route_is_kept(self) -> None:
        getter = route("/x", "GET", id="getter")
        header = route("/x", "HEAD", id="header")
        r = build(getter, header)
        m = r.match("/x")
        assert m is not None
        assert m.endpoint.route_for("HEAD") is header
        assert m.endpoint.allow == "GET, HEAD"

    def test_by_method_is_read_only(self) -> None:
        r = build(route("/x"))
        m = r.match("/x")
        assert m is not None
        with pytest.raises(TypeError):
            m.endpoint.by_method["DELETE"] = m.endpoint.by_method["GET"]  # type: ignore[index]


class TestConflicts:
    @pytest.mark.parametrize(
        ("first", "second"),
        [
            ("/v1/orders", "/v1/orders"),
            ("/v1/orders/{order_id}", "/v1/orders/{order_id}"),
            ("/v1/orders/{order_id}", "/v1/orders/{id}"),
            ("/Messages/{sid}.json", "/Messages/{message}.json"),
            ("/public/{rest:path}", "/public/{tail:path}"),
            ("/f/{a}.{b}", "/f/{x}.{y}"),
        ],
        ids=["static", "same-placeholder", "renamed", "suffix-renamed", "catch-all", "two-in-segment"],
    )
    def test_same_template_same_method_is_an_error(self, first: str, second: str) -> None:
        with pytest.raises(RouteError, match="GET"):
            build(route(first, "GET", id="one"), route(second, "GET", "POST", id="two"))

    def test_trailing_slash_either_conflicts_with_explicit_slash_route(self) -> None:
        with pytest.raises(RouteError):
            build(route("/v1/orders", either=True, id="either"), route("/v1/orders/", id="slashed"))

    def test_same_template_different_methods_is_fine(self) -> None:
        r = build(route("/v1/orders", "GET", id="one"), route("/v1/orders", "POST", id="two"))
        m = r.match("/v1/orders")
        assert m is not None
        assert m.endpoint.allow == "GET, HEAD, POST"

    def test_different_suffix_is_not_a_conflict(self) -> None:
        r = build(route("/m/{sid}.json", id="json"), route("/m/{sid}.xml", id="xml"))
        assert matched(r, "/m/1.json")[0] is not None
        assert matched(r, "/m/1.xml")[0] is not None


class TestInvalidTemplates:
    @pytest.mark.parametrize(
        "template",
        [
            "v1/orders",
            "",
            "*",
            "/v1/{id:int}",
            "/v1/{id:uuid}",
            "/v1/{rest:path}/more",
            "/v1/{rest:path}/",
            "/v1/x{rest:path}",
            "/v1/{rest:path}.json",
            "/v1/{a}{b:path}",
            "/v1/{id}-{id}",
            "/v1/{id}/x/{id}",
            "/v1/{id}/{id:path}",
            "/v1/{id",
            "/v1/id}",
            "/v1/{}",
            "/v1/{1id}",
            "/v1/{{id}}",
            "/v1/{i d}",
            "/v1//orders",
            "//v1",
            "/v1/../orders",
            "/v1/./orders",
            "/v1/orders/..",
            "/v1/%2e%2e/orders",
            "/v1/%41",
            "/v1/a%3ab",
            "/v1/a%2Fb",
            "/v1/a;b",
            "/v1/a b",
            "/v1/orders?x=1",
            "/v1/orders#frag",
            "/v1/café",
            "/v1/a\\b",
            "/v1/{id}%",
        ],
    )
    def test_invalid_template_raises_route_error(self, template: str) -> None:
        with pytest.raises(RouteError):
            build(route(template))

    def test_route_error_is_a_value_error(self) -> None:
        assert issubclass(RouteError, ValueError)

    def test_valid_canonical_templates_build(self) -> None:
        # Encoded reserved characters in canonical (upper-case) form are fine.
        r = build(route("/v1/a%3Ab"), route("/files/caf%C3%A9"), route("/~user/{x}"))
        assert r.match("/v1/a%3Ab") is not None
        assert r.match("/files/caf%C3%A9") is not None
        assert r.match("/~user/y") is not None


class TestScale:
    def _routes(self, n: int) -> Iterable[Route]:
        for i in range(n):
            kind = i % 4
            if kind == 0:
                yield route(f"/svc{i}/items", "GET", "POST", id=f"r{i}")
            elif kind == 1:
                yield route(f"/svc{i}/items/{{item_id}}", "GET", id=f"r{i}")
            elif kind == 2:
                yield route(f"/svc{i}/files/{{rest:path}}", "GET", id=f"r{i}")
            else:
                yield route(f"/shared/v{i}/{{sid}}.json", "GET", id=f"r{i}")

    def test_ten_thousand_routes_match_correctly(self) -> None:
        routes = list(self._routes(10_000))
        r = Router(routes)
        by_id = {rt.id: rt for rt in routes}
        for i in (0, 1, 2, 3, 4_997, 4_998, 4_999, 5_000, 9_996, 9_997, 9_998, 9_999):
            kind = i % 4
            if kind == 0:
                assert matched(r, f"/svc{i}/items", "POST") == (by_id[f"r{i}"], {})
            elif kind == 1:
                assert matched(r, f"/svc{i}/items/x{i}") == (by_id[f"r{i}"], {"item_id": f"x{i}"})
            elif kind == 2:
                assert matched(r, f"/svc{i}/files/a/b") == (by_id[f"r{i}"], {"rest": "a/b"})
            else:
                assert matched(r, f"/shared/v{i}/SM{i}.json") == (by_id[f"r{i}"], {"sid": f"SM{i}"})
        # Near misses still miss at scale: no prefix or neighbour matches.
        assert r.match("/svc0/items/") is None
        assert r.match("/svc1/items") is None
        assert r.match("/svc4/items/1") is None
        assert r.match("/svc10000/items") is None
        assert r.match("/shared/v3/SM.xml") is None

    def test_every_one_of_ten_thousand_static_routes_is_reachable(self) -> None:
        routes = [route(f"/api/r{i}/x", id=f"r{i}") for i in range(10_000)]
        r = Router(routes)
        for rt in routes:
            m = r.match(rt.template)
            assert m is not None
            assert m.endpoint.route_for("GET") is rt


class TestMatchMemo:
    """Matches are memoised for short paths; the memo is bounded and never changes an answer."""

    def test_repeated_and_unique_paths_give_the_same_answers(self) -> None:
        r = Router([route("/v1/orders/{order_id}", "GET", id="one"), route("/v1/orders", "GET", id="all")])
        for _ in range(2):  # second pass comes from the memo
            m = r.match("/v1/orders/42")
            assert m is not None and m.params_for(m.endpoint.route_for("GET")) == {"order_id": "42"}
            assert r.match("/v1/nothing") is None
        # many more unique paths than the memo holds: still correct, and the memo stays bounded
        for i in range(router_module._CACHE_SIZE + 500):
            m = r.match(f"/v1/orders/{i}")
            assert m is not None and m.values == (str(i),)
        assert len(r._cache) <= router_module._CACHE_SIZE

    def test_long_paths_are_not_memoised(self) -> None:
        r = Router([route("/files/{rest:path}", "GET")])
        long_path = "/files/" + "a/" * 200
        m = r.match(long_path)
        assert m is not None and m.values == ("a/" * 200,)
        assert long_path not in r._cache
