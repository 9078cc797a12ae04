"""JSON request bodies are parsed once, within hard limits: bombs and tricks are refused with a reason that
never quotes the body."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.checks.json_body import JSON_INVALID, JSON_LIMIT, JsonLimits, JsonRejected, parse_json

LIMITS = JsonLimits()


def rejected(raw: bytes, limits: JsonLimits = LIMITS) -> JsonRejected:
    with pytest.raises(JsonRejected) as info:
        parse_json(raw, limits)
    return info.value


def test_ordinary_documents_parse() -> None:
    doc = {"a": [1, 2.5, "x", None, True, {"b": "ü"}], "n": -12}
    assert parse_json(json.dumps(doc).encode(), LIMITS) == doc
    assert parse_json(b"[]", LIMITS) == []
    assert parse_json(b'"text"', LIMITS) == "text"


@pytest.mark.parametrize("depth", [31, 32])
def test_nesting_up_to_the_limit_is_fine(depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    assert parse_json(raw, LIMITS) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 33 + b"]" * 33,
        b'{"a":' * 33 + b"1" + b"}" * 33,
        b"[" * 100_000 + b"]" * 100_000,  # deep enough to exhaust a recursive parser: refused, no crash
        b'[{"a":' * 20 + b"1" + b"}]" * 20,
    ],
    ids=["arrays", "objects", "bomb", "mixed"],
)
def test_deep_nesting_is_refused(raw: bytes) -> None:
    err = rejected(raw)
    assert err.code == JSON_LIMIT and "nested deeper than 32" in err.reason


def test_total_keys_are_bounded() -> None:
    limits = JsonLimits(max_keys=100)
    wide = json.dumps([{f"k{i}": i} for i in range(101)]).encode()
    assert rejected(wide, limits).code == JSON_LIMIT
    assert len(parse_json(json.dumps([{f"k{i}": i} for i in range(100)]).encode(), limits)) == 100


def test_long_arrays_strings_keys_and_numbers_are_refused() -> None:
    limits = JsonLimits(max_array_length=10, max_string_length=20, max_number_length=8)
    assert "array longer than 10" in rejected(json.dumps(list(range(11))).encode(), limits).reason
    assert "string longer than 20" in rejected(json.dumps({"a": "x" * 21}).encode(), limits).reason
    assert "string longer than 20" in rejected(json.dumps(["x" * 21]).encode(), limits).reason
    assert "string longer than 20" in rejected(json.dumps("x" * 21).encode(), limits).reason
    assert "key longer than 20" in rejected(json.dumps({"k" * 21: 1}).encode(), limits).reason
    assert "number longer than 8" in rejected(b"[123456789]", limits).reason
    assert "number longer than 8" in rejected(b'{"a": [1, -123456789]}', limits).reason
    assert parse_json(b"[1.2345678]", limits) == [1.2345678]  # the limit is on integer digits
    assert parse_json(b"[12345678]", limits) == [12345678]


def test_a_huge_number_cannot_cost_quadratic_time() -> None:
    assert rejected(b"[" + b"9" * 100_000 + b"]").code == JSON_LIMIT


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"role":"user","role":"admin"}', "repeats a key"),
        (b'{"a":{"x":1,"x":1}}', "repeats a key"),
        (b"[NaN]", "NaN and Infinity"),
        (b"[Infinity]", "NaN and Infinity"),
        (b"[-Infinity]", "NaN and Infinity"),
        (b"[1e999]", "out of range"),
        (b"\xef\xbb\xbf{}", "byte-order mark"),
        (b'{"a":"\xff"}', "not valid UTF-8"),
        ('{"a":"x"}'.encode("utf-16"), "not valid UTF-8"),
        (b"{'a': 1}", "not valid JSON"),
        (b'{"a":1,}', "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"a":1} {"b":2}', "not valid JSON"),
    ],
)
def test_what_is_not_plain_json_is_refused(raw: bytes, words: str) -> None:
    err = rejected(raw)
    assert err.code == JSON_INVALID and words in err.reason


def test_reasons_never_quote_the_body() -> None:
    secret = "sk_live_" + "Z" * 30
    for raw in (
        ('{"' + secret + '":1,"' + secret + '":2}').encode(),
        ('["' + secret + '",' + "[" * 40).encode(),
        ('{"a":"' + secret * 5000 + '"}').encode(),
    ):
        with pytest.raises(JsonRejected) as info:
            parse_json(raw, JsonLimits(max_string_length=100))
        assert secret not in info.value.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_are_refused_never_crash(raw: bytes) -> None:
    try:
        parse_json(raw, LIMITS)
    except JsonRejected as exc:
        assert exc.code in (JSON_INVALID, JSON_LIMIT)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_what_the_standard_library_writes_reads_back_the_same(value: object) -> None:
    assert parse_json(json.dumps(value).encode(), LIMITS) == value


@pytest.mark.parametrize(
    "raw",
    [rb'{"a":"\ud800"}', rb'{"a":"\udc00x"}', rb'["\ud800\u0041"]', rb'{"\ud83d":1}'],
    ids=["high", "low", "high-then-letter", "in-a-key"],
)
def test_unpaired_surrogate_escapes_are_refused(raw: bytes) -> None:
    # parsers disagree on them (kept, replaced by U+FFFD, refused): what the validator sees could differ
    # from what the upstream reads
    err = rejected(raw)
    assert err.code == JSON_INVALID and "surrogate" in err.reason
    assert parse_json(rb'["\ud83d\ude00"]', LIMITS) == ["\U0001f600"]  # a pair is one character


@pytest.mark.parametrize(
    "raw",
    [
        b"[1e400]",
        b"[1E+400]",
        b"[1e+0400]",
        b"[-1e0400]",
        b'{"a":[2.5e309]}',
        b'{"to":"+14155550123","v":1E+309}',
        b"[" + b"9" * 400 + b".5]",
    ],
)
def test_every_spelling_of_an_overflowing_number_is_refused(raw: bytes) -> None:
    err = rejected(raw, JsonLimits(max_number_length=4300))
    assert err.code == JSON_INVALID and "out of range" in err.reason


def test_numbers_that_only_look_large_are_fine() -> None:
    assert parse_json(b'[1e-400, 1e100, 1.5E+300, "e000", "9999999999"]', LIMITS) == [
        0.0, 1e100, 1.5e300, "e000", "9999999999",
    ]
    # "+" outside an exponent (phone numbers) is not a number's sign
    assert parse_json(b'{"to":"+14155550123","from":"+1" ,"n":1E+30}', LIMITS) == {
        "to": "+14155550123", "from": "+1", "n": 1e30,
    }


def test_keys_are_counted_across_nested_objects() -> None:
    limits = JsonLimits(max_keys=10)
    nested = json.dumps({"a": {"b": {"c": 1, "d": 2}}, "e": [{"f": 1, "g": 2, "h": 3, "i": 4, "j": 5}]})
    assert parse_json(nested.encode(), limits)["e"][0]["j"] == 5  # exactly 10 keys
    more = json.dumps({"a": {"b": {"c": 1, "d": 2}}, "e": [{"f": 1, "g": 2, "h": 3, "i": 4, "j": 5, "k": 6}]})
    assert "more than 10 keys" in rejected(more.encode(), limits).reason
    # colons inside strings are not keys: no false refusal
    assert parse_json(json.dumps({"url": "a:b:c:d:e:f:g:h:i:j:k:l"}).encode(), limits)


def test_a_depth_beyond_the_parsers_own_bound_is_still_honoured() -> None:
    limits = JsonLimits(max_depth=300)
    assert parse_json(b"[" * 300 + b"]" * 300, limits) is not None
    assert "nested deeper than 300" in rejected(b"[" * 301 + b"]" * 301, limits).reason
    deep_dup = b'{"a":' * 250 + b'{"x":1,"x":2}' + b"}" * 250
    assert "repeats a key" in rejected(deep_dup, limits).reason
    assert "not valid JSON" in rejected(b"[" * 250 + b"NaN" + b"]" * 250, limits).reason


def test_jiters_messages_never_reach_the_reason() -> None:
    # jiter names line and column; Bastion's reasons name the kind of fault only
    for raw in (b'{"a":1,"a":2}', b"[1,]", b'{"a":"\xff"}', b"[" * 500):
        assert "column" not in rejected(raw).reason
