"""Who is the client: trusted-proxy resolution of X-Forwarded-For / -Proto / -Host and X-Request-Id.

The rule under test (core/forwarding.py): headers only mean something when the TCP peer is a declared
trusted proxy; then the client is the rightmost X-Forwarded-For entry that is not itself trusted.
Anything a client can write on its own (CVE-2022-24112) must not move the client address.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from bastion.core.forwarding import ForwardedInfo, NetworkSet, resolve_forwarded
from bastion.core.headers import Headers

TRUSTED = NetworkSet(["10.0.0.0/8", "fd00::/8"])
PROXY = ip_address("10.0.0.2")
CLIENT = "198.51.100.7"

SPOOFING_HEADERS = [
    ("x-forwarded-for", "127.0.0.1"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "admin.internal"),
    ("x-request-id", "attacker-chosen"),
]


def resolve(
    peer: str | IPv4Address | IPv6Address,
    headers: list[tuple[str, str]],
    *,
    scheme: str = "http",
    trusted: NetworkSet = TRUSTED,
) -> ForwardedInfo:
    peer_ip = ip_address(peer) if isinstance(peer, str) else peer
    return resolve_forwarded(peer_ip, scheme, Headers(headers), trusted)


class TestUntrustedPeer:
    def test_headers_are_ignored_entirely(self) -> None:
        info = resolve("203.0.113.9", SPOOFING_HEADERS)
        assert info == ForwardedInfo(
            client_ip=ip_address("203.0.113.9"),
            scheme="http",
            host=None,
            forwarded_for="203.0.113.9",
            request_id=None,
        )

    def test_scheme_is_the_connection_scheme(self) -> None:
        info = resolve("203.0.113.9", [("x-forwarded-proto", "http")], scheme="https")
        assert info.scheme == "https"

    def test_without_headers(self) -> None:
        info = resolve("203.0.113.9", [])
        assert info.client_ip == ip_address("203.0.113.9")
        assert info.forwarded_for == "203.0.113.9"

    def test_ipv6_peer(self) -> None:
        info = resolve("2001:db8::1", SPOOFING_HEADERS)
        assert info.client_ip == ip_address("2001:db8::1")
        assert info.forwarded_for == "2001:db8::1"
        assert info.host is None
        assert info.request_id is None

    def test_loopback_peer_is_not_trusted_by_default(self) -> None:
        # Trust is only what the config declares; 127.0.0.1 is not special.
        info = resolve("127.0.0.1", [("x-forwarded-for", CLIENT)])
        assert info.client_ip == ip_address("127.0.0.1")
        assert info.forwarded_for == "127.0.0.1"

    def test_empty_trusted_set_trusts_nobody(self) -> None:
        nobody = NetworkSet([])
        assert not nobody
        info = resolve(PROXY, SPOOFING_HEADERS, trusted=nobody)
        assert info == ForwardedInfo(PROXY, "http", None, "10.0.0.2", None)


class TestTrustedPeerClientAddress:
    def test_single_client_entry(self) -> None:
        info = resolve(PROXY, [("x-forwarded-for", CLIENT)])
        assert info.client_ip == ip_address(CLIENT)
        assert info.forwarded_for == f"{CLIENT}, 10.0.0.2"

    def test_no_forwarded_for_means_peer_is_client(self) -> None:
        info = resolve(PROXY, [])
        assert info.client_ip == PROXY
        assert info.forwarded_for == "10.0.0.2"

    def test_rightmost_untrusted_wins_over_spoofed_left_entries(self) -> None:
        # The client prepended "127.0.0.1, 6.6.6.6"; our proxy appended the real address.
        info = resolve(PROXY, [("x-forwarded-for", f"127.0.0.1, 6.6.6.6, {CLIENT}")])
        assert info.client_ip == ip_address(CLIENT)
        assert info.forwarded_for == f"127.0.0.1, 6.6.6.6, {CLIENT}, 10.0.0.2"

    def test_trusted_hops_are_skipped(self) -> None:
        info = resolve(PROXY, [("x-forwarded-for", f"6.6.6.6, {CLIENT}, 10.1.1.1, 10.2.2.2")])
        assert info.client_ip == ip_address(CLIENT)

    def test_all_entries_trusted_gives_leftmost(self) -> None:
        info = resolve(PROXY, [("x-forwarded-for", "10.9.9.9, 10.1.1.1")])
        assert info.client_ip == ip_address("10.9.9.9")

    def test_multiple_header_lines_are_one_list_in_order(self) -> None:
        headers = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", f"{CLIENT}, 10.1.1.1"),
        ]
        info = resolve(PROXY, headers)
        assert info.client_ip == ip_address(CLIENT)
        assert info.forwarded_for == f"6.6.6.6, {CLIENT}, 10.1.1.1, 10.0.0.2"

    def test_rightmost_header_line_decides(self) -> None:
        headers = [
            ("x-forwarded-for", CLIENT),
            ("x-forwarded-for", "6.6.6.6"),
        ]
        assert resolve(PROXY, headers).client_ip == ip_address("6.6.6.6")

    def test_empty_list_entries_are_skipped(self) -> None:
        info = resolve(PROXY, [("x-forwarded-for", f" {CLIENT} ,, ,10.1.1.1,")])
        assert info.client_ip == ip_address(CLIENT)
        assert info.forwarded_for == f"{CLIENT}, 10.1.1.1, 10.0.0.2"

    @pytest.mark.parametrize(
        ("entry", "expected"),
        [
            ("1.2.3.4:5678", "1.2.3.4"),
            ("[::1]:80", "::1"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            ("  1.2.3.4  ", "1.2.3.4"),
        ],
    )
    def test_entries_with_ports_and_brackets(self, entry: str, expected: str) -> None:
        info = resolve(PROXY, [("x-forwarded-for", f"{entry}, 10.1.1.1")])
        assert info.client_ip == ip_address(expected)

    def test_entry_with_port_is_forwarded_as_written(self) -> None:
        info = resolve(PROXY, [("x-forwarded-for", "1.2.3.4:5678")])
        assert info.forwarded_for == "1.2.3.4:5678, 10.0.0.2"

    def test_trusted_entry_with_port_is_skipped(self) -> None:
        info = resolve(PROXY, [("x-forwarded-for", f"{CLIENT}, 10.1.1.1:8080, [fd00::5]:443")])
        assert info.client_ip == ip_address(CLIENT)

    def test_ipv4_mapped_trusted_hop_is_skipped(self) -> None:
        info = resolve(PROXY, [("x-forwarded-for", f"{CLIENT}, ::ffff:10.1.1.1")])
        assert info.client_ip == ip_address(CLIENT)


class TestTrustedPeerGarbage:
    @pytest.mark.parametrize("garbage", ["unknown", "_hidden", "999.1.1.1", "1.2.3", "not an ip", "[::1"])
    def test_garbage_rightmost_entry_leaves_peer_as_client(self, garbage: str) -> None:
        info = resolve(PROXY, [("x-forwarded-for", f"{CLIENT}, {garbage}")])
        assert info.client_ip == PROXY

    def test_garbage_stops_the_walk_at_last_vouched_address(self) -> None:
        # 10.1.1.1 is trusted and was vouched for by our peer; what it claims beyond is unusable, so the
        # walk stops there rather than skipping the garbage to reach an address nobody vouched for.
        info = resolve(PROXY, [("x-forwarded-for", f"{CLIENT}, garbage, 10.1.1.1")])
        assert info.client_ip == ip_address("10.1.1.1")

    def test_garbage_left_of_client_does_not_matter(self) -> None:
        info = resolve(PROXY, [("x-forwarded-for", f"garbage, {CLIENT}")])
        assert info.client_ip == ip_address(CLIENT)


class TestTrustedPeerProtoHostRequestId:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("https", "https"),
            ("http", "http"),
            ("HTTPS", "https"),
            (" https ", "https"),
            ("http, https", "https"),
            ("https, http", "http"),
            ("https, ftp", "http"),
            ("ftp", "http"),
            ("", "http"),
            ("https;", "http"),
        ],
    )
    def test_proto_last_value_only_when_http_or_https(self, value: str, expected: str) -> None:
        info = resolve(PROXY, [("x-forwarded-proto", value)], scheme="http")
        assert info.scheme == expected

    def test_proto_absent_keeps_connection_scheme(self) -> None:
        assert resolve(PROXY, [], scheme="https").scheme == "https"

    def test_proto_can_downgrade_when_trusted_proxy_says_so(self) -> None:
        # A TLS-terminating hop in front of a plain-HTTP proxy: believe the trusted proxy.
        assert resolve(PROXY, [("x-forwarded-proto", "http")], scheme="https").scheme == "http"

    def test_proto_last_header_line_decides(self) -> None:
        # RFC 9110 §5.3: repeated field lines mean the same as one comma-joined line, so the last value
        # is the one the nearest trusted proxy appended.
        headers = [("x-forwarded-proto", "http"), ("x-forwarded-proto", "https")]
        assert resolve(PROXY, headers).scheme == "https"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("api.example.com", "api.example.com"),
            ("api.example.com:8443", "api.example.com:8443"),
            ("evil.example, api.example.com", "api.example.com"),
            (" api.example.com ", "api.example.com"),
            ("", None),
            ("api.example.com, ", None),
        ],
    )
    def test_forwarded_host(self, value: str, expected: str | None) -> None:
        assert resolve(PROXY, [("x-forwarded-host", value)]).host == expected

    def test_forwarded_host_absent(self) -> None:
        assert resolve(PROXY, []).host is None

    def test_forwarded_host_last_header_line_decides(self) -> None:
        headers = [("x-forwarded-host", "evil.example"), ("x-forwarded-host", "api.example.com")]
        assert resolve(PROXY, headers).host == "api.example.com"

    def test_request_id_kept_from_trusted_proxy(self) -> None:
        assert resolve(PROXY, [("x-request-id", "req-123")]).request_id == "req-123"

    def test_request_id_absent(self) -> None:
        assert resolve(PROXY, []).request_id is None


class TestNetworkSet:
    def test_ipv4_membership(self) -> None:
        nets = NetworkSet(["10.0.0.0/8", "192.168.1.0/24"])
        assert ip_address("10.255.255.255") in nets
        assert ip_address("192.168.1.9") in nets
        assert ip_address("192.168.2.9") not in nets
        assert ip_address("11.0.0.0") not in nets

    def test_ipv6_membership(self) -> None:
        nets = NetworkSet(["2001:db8::/32"])
        assert ip_address("2001:db8::5") in nets
        assert ip_address("2001:db9::5") not in nets
        assert ip_address("::1") not in nets

    def test_families_do_not_mix(self) -> None:
        assert ip_address("10.0.0.1") not in NetworkSet(["::/0"])
        assert ip_address("::1") not in NetworkSet(["0.0.0.0/0"])

    def test_ipv4_mapped_ipv6_matches_ipv4_networks(self) -> None:
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; they are the same hosts.
        nets = NetworkSet(["10.0.0.0/8"])
        assert ip_address("::ffff:10.1.2.3") in nets
        assert ip_address("::ffff:11.1.2.3") not in nets

    def test_ipv4_mapped_peer_is_trusted(self) -> None:
        info = resolve("::ffff:10.0.0.2", [("x-forwarded-for", CLIENT)])
        assert info.client_ip == ip_address(CLIENT)

    def test_ipv4_mapped_peer_not_in_set_is_untrusted(self) -> None:
        info = resolve("::ffff:203.0.113.9", [("x-forwarded-for", CLIENT)])
        assert info.client_ip == ip_address("::ffff:203.0.113.9")
        assert info.forwarded_for == str(ip_address("::ffff:203.0.113.9"))

    def test_single_host_networks(self) -> None:
        nets = NetworkSet(["127.0.0.1/32", "::1/128"])
        assert ip_address("127.0.0.1") in nets
        assert ip_address("127.0.0.2") not in nets
        assert ip_address("::1") in nets

    def test_accepts_network_objects_and_host_bits(self) -> None:
        nets = NetworkSet([ip_network("172.16.0.0/12"), "10.0.0.1/8"])
        assert ip_address("172.20.0.1") in nets
        assert ip_address("10.200.0.1") in nets

    def test_non_addresses_are_not_members(self) -> None:
        nets = NetworkSet(["0.0.0.0/0"])
        assert "10.0.0.1" not in nets
        assert None not in nets

    def test_repeated_lookups_are_stable(self) -> None:
        # Membership is cached; the cached answer must equal the computed one, for hits and misses.
        nets = NetworkSet(["10.0.0.0/8"])
        for _ in range(3):
            assert ip_address("10.0.0.1") in nets
            assert ip_address("11.0.0.1") not in nets

    def test_bool(self) -> None:
        assert NetworkSet(["10.0.0.0/8"])
        assert NetworkSet(["::1/128"])
        assert not NetworkSet([])

    def test_invalid_cidr_raises(self) -> None:
        with pytest.raises(ValueError):
            NetworkSet(["not-a-network"])


def test_headers_know_which_fields_repeat() -> None:
    from bastion.core.headers import Headers

    single = Headers([("host", "a"), ("x-api-key", "k")])
    assert not single.repeated("host") and not single.repeated("X-API-Key")
    twice = Headers([("host", "a"), ("x-api-key", "k1"), ("X-Other", "o"), ("x-api-key", "k2")])
    assert twice.repeated("X-API-Key") and not twice.repeated("host")
    assert twice.get("x-api-key") == "k1" and twice.getall("x-api-key") == ["k1", "k2"]


def test_headers_first_and_repeats_are_the_lookup_the_methods_use() -> None:
    h = Headers([("host", "a"), ("x-api-key", "k1"), ("accept", "*/*"), ("x-api-key", "k2")])
    assert h.first == {"host": "a", "x-api-key": "k1", "accept": "*/*"}
    assert h.repeats == {"x-api-key"} and h.repeated("X-API-Key") and not h.repeated("host")
    assert h.first.get("x-api-key") == h.get("X-Api-Key") == "k1"
    single = Headers([("host", "a")])
    assert single.repeats is None and single.first == {"host": "a"}
