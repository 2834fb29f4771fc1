"""
Who the client is behind a reverse proxy (`registry.http.forwarded.resolve`): forwarding headers
count only from trusted peers, the client is the first untrusted hop from the right, and
nothing a client writes itself (spoofed entries, junk, the other header family) changes that.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.http_headers import Headers

from registry import config
from registry.http.forwarded import Origin, TrustedProxies, origin, parse_forwarded, resolve

LOOPBACK = TrustedProxies.from_words(["127.0.0.1", "::1"])
PROXY = IPv4Address("TCP", "127.0.0.1", 40000)
STRANGER = IPv4Address("TCP", "198.51.100.9", 40000)


def seen(
    headers: dict[str, str | list[str]],
    peer: object = PROXY,
    trusted: TrustedProxies = LOOPBACK,
    secure: bool = False,
) -> Origin:
    raw = Headers({"host": ["registry.internal:5000"]})
    for name, value in headers.items():
        raw.setRawHeaders(name, [value] if isinstance(value, str) else value)
    return resolve(peer, secure, raw, trusted)


def test_without_headers_the_request_speaks_for_itself() -> None:
    origin = seen({})
    assert (origin.client, origin.scheme, origin.host) == (
        "127.0.0.1",
        "http",
        "registry.internal:5000",
    )
    assert origin.forwarded is False
    assert seen({}, secure=True).scheme == "https"


def test_trusted_proxy_names_client_scheme_and_host() -> None:
    origin = seen(
        {
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "registry.example.com",
        }
    )
    assert origin.client == "203.0.113.7"
    assert origin.client_ip == ipaddress.ip_address("203.0.113.7")
    assert (origin.scheme, origin.host) == ("https", "registry.example.com")
    assert (origin.peer, origin.forwarded) == ("127.0.0.1", True)


@pytest.mark.parametrize(
    "trusted",
    [TrustedProxies(), TrustedProxies.from_words(["10.0.0.0/8"])],
    ids=["nobody-trusted", "other-network-trusted"],
)
def test_headers_from_anyone_else_are_ignored(trusted: TrustedProxies) -> None:
    headers = {
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "evil.example",
        "forwarded": "for=203.0.113.8;proto=https;host=evil.example",
    }
    for peer in (PROXY, STRANGER):
        origin = seen(headers, peer=peer, trusted=trusted)
        assert origin.client == peer.host
        assert (origin.scheme, origin.host) == ("http", "registry.internal:5000")
        assert origin.forwarded is False


def test_spoofed_entries_left_of_the_proxy_entry_are_not_believed() -> None:
    # The client sent "X-Forwarded-For: 127.0.0.1, 10.1.1.1"; nginx appended the real address.
    origin = seen({"x-forwarded-for": "127.0.0.1, 10.1.1.1, 203.0.113.7"})
    assert origin.client == "203.0.113.7"
    # Junk a client wrote is never even parsed.
    assert seen({"x-forwarded-for": "not an address, 203.0.113.7"}).client == "203.0.113.7"


def test_a_chain_of_trusted_proxies_is_walked_from_the_right() -> None:
    trusted = TrustedProxies.from_words(["127.0.0.1", "10.0.0.0/8"])
    origin = seen({"x-forwarded-for": "6.6.6.6, 203.0.113.7, 10.0.0.5, 10.2.0.9"}, trusted=trusted)
    assert origin.client == "203.0.113.7"
    # Every hop trusted: the furthest one is the client.
    assert seen({"x-forwarded-for": "10.0.0.7, 10.0.0.5"}, trusted=trusted).client == "10.0.0.7"


def test_several_header_lines_are_one_list() -> None:
    origin = seen({"x-forwarded-for": ["6.6.6.6", "203.0.113.7"]})
    assert origin.client == "203.0.113.7"


@pytest.mark.parametrize(
    ("entry", "client"),
    [
        ("203.0.113.7:51234", "203.0.113.7"),
        ("2001:db8::7", "2001:db8::7"),
        ("[2001:db8::7]:51234", "2001:db8::7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("unknown", "127.0.0.1"),  # the proxy could not tell: it is the client
    ],
)
def test_address_forms(entry: str, client: str) -> None:
    assert seen({"x-forwarded-for": entry}).client == client


def test_ipv6_and_ipv4_mapped_peers() -> None:
    v6 = IPv6Address("TCP", "::1", 40000)
    assert seen({"x-forwarded-for": "203.0.113.7"}, peer=v6).client == "203.0.113.7"
    mapped = IPv6Address("TCP", "::ffff:127.0.0.1", 40000)
    origin = seen({"x-forwarded-for": "203.0.113.7"}, peer=mapped)
    assert (origin.client, origin.peer) == ("203.0.113.7", "127.0.0.1")
    network = TrustedProxies.from_words(["fd00::/8"])
    peer = IPv6Address("TCP", "fd00::2", 40000)
    assert (
        seen({"x-forwarded-for": "2001:db8::7"}, peer=peer, trusted=network).client == "2001:db8::7"
    )
    # A /64 network does not trust its neighbour.
    peer = IPv6Address("TCP", "fe00::2", 40000)
    assert seen({"x-forwarded-for": "2001:db8::7"}, peer=peer, trusted=network).client == "fe00::2"


def test_unix_socket_peers_are_trusted_only_when_named() -> None:
    peer = UNIXAddress(None)
    headers = {"x-forwarded-for": "203.0.113.7"}
    assert seen(headers, peer=peer).client == "local"
    trusted = TrustedProxies.from_words(["unix"])
    assert seen(headers, peer=peer, trusted=trusted).client == "203.0.113.7"
    # ... and naming unix trusts no TCP peer.
    assert seen(headers, peer=PROXY, trusted=trusted).client == "127.0.0.1"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forwarded-for": "203.0.113.7, not-an-address"},
        {"x-forwarded-for": "203.0.113.7:port"},
        {"x-forwarded-for": "[2001:db8::7"},
        {"x-forwarded-for": "256.1.1.1"},
        {"forwarded": 'for="unterminated'},
        {"forwarded": "for=203.0.113.7;for=203.0.113.8"},
        {"forwarded": "for 203.0.113.7"},
        {"forwarded": "=203.0.113.7"},
        {"forwarded": "for=203.0.113.7 proto=https"},
        {"forwarded": "for=not-an-address"},
    ],
)
def test_malformed_headers_from_the_proxy_are_ignored(headers: dict[str, str]) -> None:
    origin = seen(headers)
    assert (origin.client, origin.scheme, origin.host) == (
        "127.0.0.1",
        "http",
        "registry.internal:5000",
    )


@pytest.mark.parametrize(
    ("proto", "host"),
    [("ftp", "evil.example/path"), ("javascript", "user@evil.example"), ("", "a b")],
)
def test_unusable_scheme_or_host_falls_back_to_the_request(proto: str, host: str) -> None:
    origin = seen(
        {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": proto, "x-forwarded-host": host}
    )
    assert origin.client == "203.0.113.7"
    assert (origin.scheme, origin.host) == ("http", "registry.internal:5000")


def test_scheme_and_host_lists() -> None:
    trusted = TrustedProxies.from_words(["127.0.0.1", "10.0.0.0/8"])
    # Appending proxies (one entry per hop): the entries of the chosen hop.
    origin = seen(
        {
            "x-forwarded-for": "203.0.113.7, 10.0.0.5",
            "x-forwarded-proto": "https, http",
            "x-forwarded-host": "registry.example.com, lb.internal",
        },
        trusted=trusted,
    )
    assert (origin.client, origin.scheme, origin.host) == (
        "203.0.113.7",
        "https",
        "registry.example.com",
    )
    # Lists of another length: only the nearest proxy's (rightmost) entry is believed.
    origin = seen(
        {"x-forwarded-for": "203.0.113.7", "x-forwarded-host": "evil.example, registry.example.com"}
    )
    assert origin.host == "registry.example.com"
    # Scheme alone (what many load balancers send), and upper case.
    origin = seen({"x-forwarded-proto": "HTTPS"})
    assert (origin.client, origin.scheme) == ("127.0.0.1", "https")


def test_forwarded_header() -> None:
    origin = seen({"forwarded": 'For="[2001:db8:cafe::17]:4711";Proto=https;HOST="r.example:8443"'})
    assert (origin.client, origin.scheme, origin.host) == (
        "2001:db8:cafe::17",
        "https",
        "r.example:8443",
    )
    # One element per hop; the chosen hop's own proto and host.
    trusted = TrustedProxies.from_words(["127.0.0.1", "10.0.0.0/8"])
    origin = seen(
        {
            "forwarded": "for=6.6.6.6;proto=http, for=203.0.113.7;proto=https;host=r.example, for=10.0.0.5"
        },
        trusted=trusted,
    )
    assert (origin.client, origin.scheme, origin.host) == ("203.0.113.7", "https", "r.example")
    # Unknown and obfuscated nodes: the proxy that reported them is the client.
    assert seen({"forwarded": "for=unknown;proto=https"}).client == "127.0.0.1"
    assert seen({"forwarded": "for=_hidden, for=10.0.0.5"}, trusted=trusted).client == "10.0.0.5"
    # Empty list elements are allowed and skipped.
    assert seen({"forwarded": ", for=203.0.113.7 ,"}).client == "203.0.113.7"


def test_x_forwarded_wins_over_a_forwarded_header_passed_through() -> None:
    # nginx sets X-Forwarded-For and passes a client's own Forwarded header along untouched.
    origin = seen(
        {
            "forwarded": "for=6.6.6.6;proto=https;host=evil.example",
            "x-forwarded-for": "203.0.113.7",
        }
    )
    assert (origin.client, origin.scheme, origin.host) == (
        "203.0.113.7",
        "http",
        "registry.internal:5000",
    )


def test_parse_forwarded() -> None:
    assert parse_forwarded(
        'for=192.0.2.60;proto=http;by=203.0.113.43, for="[::1]";host="a\\"b"'
    ) == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        {"for": "[::1]", "host": 'a"b'},
    ]
    assert parse_forwarded("") == []
    assert parse_forwarded("for=a;;proto=b") == [{"for": "a", "proto": "b"}]


# Header text a client can send: anything but CR, LF and NUL.
header_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", max_codepoint=0x17F), max_size=80
)
public_v4 = st.ip_addresses(v=4).filter(lambda ip: ip.is_global)
public_v6 = st.ip_addresses(v=6).filter(lambda ip: ip.is_global and ip.ipv4_mapped is None)


@given(
    xff=header_text,
    proto=header_text,
    host=header_text,
    forwarded=header_text,
    trusted_peer=st.booleans(),
)
def test_any_header_text_gives_a_sane_answer(
    xff: str, proto: str, host: str, forwarded: str, trusted_peer: bool
) -> None:
    """Never an exception; always a usable scheme and host; untrusted peers change nothing."""
    peer = PROXY if trusted_peer else STRANGER
    headers = {"x-forwarded-for": xff, "x-forwarded-proto": proto, "x-forwarded-host": host}
    for chosen in (headers, {"forwarded": forwarded}):
        origin = seen(chosen, peer=peer)
        assert origin.scheme in ("http", "https")
        assert origin.host is not None
        assert "/" not in origin.host and "@" not in origin.host and " " not in origin.host
        if not trusted_peer:
            assert origin == seen({}, peer=peer)
        elif origin.client != "127.0.0.1":
            assert str(ipaddress.ip_address(origin.client)) == origin.client


@given(
    injected=header_text,
    client=st.one_of(public_v4, public_v6),
    port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_a_client_cannot_choose_its_address(
    injected: str, client: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None
) -> None:
    """Whatever a client puts in X-Forwarded-For, the address the proxy appends is the client."""
    entry = str(client)
    if port is not None:
        entry = f"{entry}:{port}" if client.version == 4 else f"[{entry}]:{port}"
    for header in (f"{injected}, {entry}", f"{injected},{entry}"):
        assert seen({"x-forwarded-for": header}).client == str(client)


@given(injected=header_text, client=st.one_of(public_v4, public_v6))
def test_a_client_cannot_choose_its_address_with_forwarded(
    injected: str, client: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    """
    Through a proxy appending to Forwarded, the client is the appended address; a malformed
    header sent by the client can at worst make the proxy itself the client, never anyone else.
    """
    node = str(client) if client.version == 4 else f'"[{client}]"'
    origin = seen({"forwarded": [injected, f"for={node}"]})
    assert origin.client in (str(client), "127.0.0.1")


def test_trusted_proxies_config(tmp_path: Path) -> None:
    path = tmp_path / "r.cfg"
    path.write_text("[http]\ntrusted_proxies = 127.0.0.1, 10.0.0.0/8\n  ::1 unix\n")
    loaded = config.load(str(path), environ={})
    assert loaded.http.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "::1/128", "unix")
    trusted = TrustedProxies.from_words(loaded.http.trusted_proxies)
    assert trusted.unix and trusted.trusts(ipaddress.ip_address("10.9.8.7"))
    loaded = config.load(str(path), environ={"REGISTRY_HTTP_TRUSTED_PROXIES": "192.0.2.0/24"})
    assert loaded.http.trusted_proxies == ("192.0.2.0/24",)
    assert config.Config().http.trusted_proxies == ()
    for bad in ("10.0.0.1/8", "nginx.local", "10.0.0.0/33"):
        with pytest.raises(config.ConfigError, match=r"\[http\] trusted_proxies: not an address"):
            config.load(None, environ={"REGISTRY_HTTP_TRUSTED_PROXIES": bad})


class _Request:
    """What `origin` reads from a twisted.web request, and counts of how often it asked."""

    def __init__(self, site: object) -> None:
        self.site = site
        self.requestHeaders = Headers({"x-forwarded-for": ["203.0.113.7"], "host": ["r:1"]})
        self.asked = 0

    def getClientAddress(self) -> IPv4Address:
        self.asked += 1
        return PROXY

    def isSecure(self) -> bool:
        return False


def test_origin_is_computed_once_per_request_with_the_sites_trust() -> None:
    class Site:
        trusted_proxies = LOOPBACK

    request = _Request(Site())
    first = origin(request)  # type: ignore[arg-type]
    assert first.client == "203.0.113.7"
    request.requestHeaders.setRawHeaders("x-forwarded-for", ["198.51.100.1"])
    assert origin(request) is first  # type: ignore[arg-type]
    assert request.asked == 1
    # A site that names no trusted proxies (or no RegistrySite at all) trusts nobody.
    assert origin(_Request(object())).client == "127.0.0.1"  # type: ignore[arg-type]
