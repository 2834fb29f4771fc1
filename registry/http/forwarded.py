"""
Who is calling, and at which address they reached us: the client address, scheme and host of a
request, as seen through the reverse proxies named in ``[http] trusted_proxies``.

Behind nginx or a load balancer every connection comes from the proxy, which says who the
client really is in ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` or in ``Forwarded`` (RFC 7239).
Anyone can send those headers, so they are read only when the direct peer is a trusted proxy;
from anyone else they are ignored.  `origin` is the one place that decides: the access log,
the failed-login limiter, notifications and absolute URLs all ask it, so they never disagree
about who a client is.

The rules, for a request from a trusted peer:

* One header family is read.  ``X-Forwarded-*`` when any of them is present (what nginx, cloud
  load balancers, HAProxy and Traefik send), otherwise ``Forwarded``.  A proxy passes the family
  it does not manage through untouched, so reading both would let a client speak for the proxy.
* The hops are walked from the right (the nearest proxy's entry) leftwards, skipping trusted
  addresses; the first untrusted address is the client.  Everything left of it was written by
  the client itself and is never looked at.  When every hop is trusted, the leftmost is the
  client.  A hop a proxy could not name (``unknown``, an obfuscated ``_name``) stops the walk,
  and the client is the trusted proxy that reported it.
* Scheme and host come from the same hop: the ``Forwarded`` element of the chosen hop, or the
  ``X-Forwarded-Proto``/``-Host`` entry at the same position when those lists are as long as
  ``X-Forwarded-For`` (proxies that append, like Apache).  Otherwise their rightmost entry, the
  one the nearest proxy vouches for.  Values that are not ``http``/``https`` or not a host
  (``name[:port]``) are ignored.
* A malformed header in the part that trusted proxies wrote is ignored as a whole: the request
  is answered as if it had come directly, and nothing is logged for it (it is a per-request
  matter, and the access log already has the line).

The answer is computed once per request and kept on it: the access log asks on every request.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The word in ``trusted_proxies`` that trusts peers on UNIX sockets (a proxy on the same host).
UNIX = "unix"
# What a client on a UNIX socket is called when nobody says otherwise.
LOCAL = "local"

# A host as it may appear in an absolute URL: a name or IPv4 address, or a bracketed IPv6
# address, and an optional port.  Anything else (paths, user info, spaces) is refused.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")
_SCHEMES = ("http", "https")
# RFC 7239: forwarded-pair = token "=" ( token / quoted-string ), pairs joined by ";",
# elements by ",".
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR_RE = re.compile(rf"\s*({_TOKEN})=({_TOKEN}|\"(?:[^\"\\]|\\.)*\")\s*")
_UNESCAPE_RE = re.compile(r"\\(.)")
# The attribute `origin` caches its answer in, on the request.
_CACHE = "registry_origin"


@attrs.frozen
class TrustedProxies:
    """The peers whose forwarding headers are believed: addresses, networks, UNIX sockets."""

    networks: tuple[Network, ...] = ()
    unix: bool = False

    @classmethod
    def from_words(cls, words: Iterable[str]) -> TrustedProxies:
        """
        From ``[http] trusted_proxies``: IPv4/IPv6 addresses and CIDR networks, and ``unix``
        for peers on a UNIX socket.  Raises ValueError naming a word that is neither.
        """
        networks: list[Network] = []
        unix = False
        for word in words:
            if word.lower() == UNIX:
                unix = True
                continue
            try:
                networks.append(ipaddress.ip_network(word, strict=True))
            except ValueError as exc:
                raise ValueError(
                    f"not an address or network: {word!r} ({exc}); "
                    "examples: 127.0.0.1, 10.0.0.0/8, ::1, unix"
                ) from None
        return cls(tuple(networks), unix)

    def __bool__(self) -> bool:
        return bool(self.networks) or self.unix

    def trusts(self, ip: IP) -> bool:
        return any(ip in network for network in self.networks)


@attrs.frozen
class Origin:
    """
    A request as its client made it.

    ``client`` is the client's address as text (``203.0.113.7``, ``2001:db8::1``; ``local`` on
    a UNIX socket that no proxy speaks for), ``client_ip`` the same as an address object when it
    is one.  ``scheme`` and ``host`` are what the client used to reach the registry (``host``
    as ``name[:port]``, None when the request had no Host).  ``peer`` is the direct peer, and
    ``forwarded`` says whether a trusted proxy's headers were used.
    """

    client: str
    client_ip: IP | None
    scheme: str
    host: str | None
    peer: str
    forwarded: bool = False

    def url(self, path: str) -> str:
        """``path`` as an absolute URL the client can use: the one home of that form, so that
        a ``Location`` and a notification's ``target.url`` never disagree."""
        return f"{self.scheme}://{self.host or 'localhost'}{path}"


def origin(request: IRequest) -> Origin:
    """
    The `Origin` of ``request``, computed on first use and kept on the request.  The trusted
    proxies are the ``RegistrySite``'s; a request served by any other site trusts nobody.
    """
    cached = getattr(request, _CACHE, None)
    if isinstance(cached, Origin):
        return cached
    channel = getattr(request, "channel", None)
    site = getattr(request, "site", None) or getattr(channel, "site", None)
    trusted = getattr(site, "trusted_proxies", None)
    if not isinstance(trusted, TrustedProxies):
        trusted = TrustedProxies()
    answer = resolve(
        request.getClientAddress(),
        request.isSecure(),
        request.requestHeaders,
        trusted,
    )
    setattr(request, _CACHE, answer)
    return answer


def client_address(request: IRequest) -> str:
    """The client's address as text: what logs, notifications and metrics show."""
    return origin(request).client


def resolve(peer: Any, secure: bool, headers: Headers, trusted: TrustedProxies) -> Origin:
    """The `Origin` of a request from ``peer``; pure, for `origin` and for tests."""
    peer_ip, peer_text = _peer(peer)
    direct = Origin(
        client=peer_text,
        client_ip=peer_ip,
        scheme="https" if secure else "http",
        host=_valid_host(_last(headers, b"host")),
        peer=peer_text,
    )
    if not trusted:
        return direct
    if peer_ip is None:
        if not (trusted.unix and isinstance(peer, UNIXAddress)):
            return direct
    elif not trusted.trusts(peer_ip):
        return direct
    try:
        hops = _hops(headers)
        if hops is None:
            return direct
        return _walk(hops, direct, trusted)
    except ValueError:
        return direct


@attrs.frozen
class _Hops:
    """One header family as per-hop lists, left (furthest) to right (nearest)."""

    nodes: list[str]
    protos: Sequence[str | None]
    hosts: Sequence[str | None]
    # Whether protos/hosts are per hop (Forwarded) or lists of their own (X-Forwarded-*).
    aligned: bool


def _walk(hops: _Hops, direct: Origin, trusted: TrustedProxies) -> Origin:
    client_ip = direct.client_ip
    index: int | None = None
    for i in range(len(hops.nodes) - 1, -1, -1):
        index = i
        ip = _node_ip(hops.nodes[i])
        if ip is None:
            break  # a hop the proxy could not name: the proxy that said so is the client
        client_ip = ip
        if not trusted.trusts(ip):
            break
    scheme = _pick(hops.protos, index, hops)
    host = _pick(hops.hosts, index, hops)
    if scheme is not None:
        scheme = scheme.lower()
    return Origin(
        client=direct.client if client_ip is direct.client_ip else _text(client_ip),
        client_ip=client_ip,
        scheme=scheme if scheme in _SCHEMES else direct.scheme,
        host=_valid_host(host) or direct.host,
        peer=direct.peer,
        forwarded=True,
    )


def _pick(values: Sequence[str | None], index: int | None, hops: _Hops) -> str | None:
    if not values:
        return None
    if index is not None and (hops.aligned or len(values) == len(hops.nodes)):
        return values[index]
    return values[-1]


def _hops(headers: Headers) -> _Hops | None:
    """The hops of the family in use, None when neither is present; ValueError if malformed."""
    xff = _joined(headers, b"x-forwarded-for")
    xproto = _joined(headers, b"x-forwarded-proto")
    xhost = _joined(headers, b"x-forwarded-host")
    if xff is not None or xproto is not None or xhost is not None:
        return _Hops(
            nodes=_split(xff),
            protos=_split(xproto),
            hosts=_split(xhost),
            aligned=False,
        )
    forwarded = _joined(headers, b"forwarded")
    if forwarded is None:
        return None
    elements = parse_forwarded(forwarded)
    return _Hops(
        # An element without ``for`` names no hop address: treated like ``unknown``.
        nodes=[element.get("for", "unknown") for element in elements],
        protos=[element.get("proto") for element in elements],
        hosts=[element.get("host") for element in elements],
        aligned=True,
    )


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """
    The elements of a ``Forwarded`` header (RFC 7239), each a dict of lower-cased parameter
    names to unquoted values.  Raises ValueError for anything that is not the grammar.
    """
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    position = 0
    while True:
        match = _PAIR_RE.match(value, position)
        if match is not None:
            name = match.group(1).lower()
            if name in element:
                raise ValueError(f"repeated Forwarded parameter {name!r}")
            text = match.group(2)
            if text.startswith('"'):
                text = _UNESCAPE_RE.sub(r"\1", text[1:-1])
            element[name] = text
            position = match.end()
        else:  # an empty pair or element (``for=a,,for=b``) is allowed, and skipped
            while position < len(value) and value[position] in " \t":
                position += 1
        if position == len(value) or value[position] == ",":
            if element:
                elements.append(element)
            element = {}
        elif value[position] != ";":
            raise ValueError("malformed Forwarded header")
        if position == len(value):
            return elements
        position += 1


# Parsing an address costs microseconds and the same clients and proxies come back request
# after request: remember the last few thousand (bounded; failures are not remembered).
@functools.lru_cache(maxsize=4096)
def _node_ip(node: str) -> IP | None:
    """
    The address of a hop: ``192.0.2.7``, ``192.0.2.7:4711``, ``2001:db8::7``,
    ``[2001:db8::7]:4711``; None for ``unknown`` and obfuscated ``_names`` (RFC 7239);
    ValueError for anything else.
    """
    if node.lower() == "unknown" or node.startswith("_"):
        return None
    if node.startswith("["):
        address, bracket, port = node[1:].partition("]")
        if not bracket or (port and not re.fullmatch(r":(\d{1,5}|_[A-Za-z0-9._-]+)", port)):
            raise ValueError(f"not a node: {node!r}")
        return _unmapped(ipaddress.IPv6Address(address))
    if node.count(":") == 1:  # IPv4 with a port
        address, _, port = node.partition(":")
        if not re.fullmatch(r"\d{1,5}|_[A-Za-z0-9._-]+", port):
            raise ValueError(f"not a node: {node!r}")
        return ipaddress.IPv4Address(address)
    return _unmapped(ipaddress.ip_address(node))


def _peer(peer: Any) -> tuple[IP | None, str]:
    """The peer's address, and its text (``local`` for UNIX sockets)."""
    if isinstance(peer, IPv4Address | IPv6Address):
        return _host(peer.host)
    return None, LOCAL


@functools.lru_cache(maxsize=4096)
def _host(host: str) -> tuple[IP | None, str]:
    try:
        # Twisted gives IPv6 link-local peers with their zone (fe80::1%eth0).
        ip = _unmapped(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None, LOCAL
    return ip, str(ip)


@functools.lru_cache(maxsize=4096)
def _text(ip: IP | None) -> str:
    return LOCAL if ip is None else str(ip)


def _unmapped(ip: IP) -> IP:
    """IPv4 clients of a dual-stack socket arrive as ``::ffff:a.b.c.d``: one client, one name."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _valid_host(host: str | None) -> str | None:
    if host is None:
        return None
    host = host.strip()
    return host if _HOST_RE.fullmatch(host) else None


def _joined(headers: Headers, name: bytes) -> str | None:
    """All lines of a list-valued header, joined by commas (RFC 9110), or None when absent."""
    values = headers.getRawHeaders(name)
    if not values:
        return None
    return ",".join(value.decode("latin-1") for value in values)


def _last(headers: Headers, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


def _split(value: str | None) -> list[str]:
    if value is None:
        return []
    return [part.strip() for part in value.split(",") if part.strip()]
