"""Which TCP endpoint the registry's HTTP clients connect with: an IP address directly, a host
name through name resolution (`registry.http.bounded_agent.tcp_endpoint`)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from registry.http.bounded_agent import bounded_agent, tcp_endpoint


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", TCP4ClientEndpoint),
        ("10.1.2.3", TCP4ClientEndpoint),
        ("::1", TCP6ClientEndpoint),
        ("2001:db8::7", TCP6ClientEndpoint),
        ("localhost", HostnameEndpoint),
        ("registry-1.docker.io", HostnameEndpoint),
        ("127.1", HostnameEndpoint),  # not an address Python reads: resolution decides
        ("fe80::1%eth0", HostnameEndpoint),  # scoped: resolution understands the scope
    ],
)
def test_ip_addresses_connect_directly_and_names_are_resolved(host: str, kind: type) -> None:
    endpoint = tcp_endpoint(MemoryReactorClock(), host, 443, timeout=5.0)
    assert type(endpoint) is kind


@pytest.mark.parametrize(
    ("url", "host"),
    [(b"http://127.0.0.1:5000/v2/", "127.0.0.1"), (b"https://[::1]:5000/v2/", "::1")],
)
def test_a_refused_connection_to_an_ip_address_fails_the_request_at_once(
    url: bytes, host: str
) -> None:
    """The request fails as the connection is refused, the clock not moving: a
    `HostnameEndpoint` would report it only when its next attempt is due (0.3 s later)."""
    reactor = MemoryReactorClock()
    agent = bounded_agent(reactor, connect_timeout=5.0)
    results: list[Any] = []
    agent.request(b"GET", url).addBoth(results.append)
    assert [(c[0], c[1], c[3]) for c in reactor.tcpClients] == [(host, 5000, 5.0)]
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert len(results) == 1
    assert isinstance(results[0], Failure)
    assert results[0].check(ConnectionRefusedError)
    assert reactor.getDelayedCalls() == []
