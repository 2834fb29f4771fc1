"""
What the per-request metrics cost, in-process and without sockets: a `RegistrySite` in front of
a resource that answers at once, fed keep-alive manifest GETs through a `StringTransport`,
with the request metrics on (``RequestAccounting``) and off, alternating.

    python bench/accounting.py [--rounds 9] [--requests 20000]

Everything but the accounting is the same in both (twisted.web's parsing and answer; the
access log off), so the difference is the accounting's own CPU time per request, without the
noise of a load generator sharing the machine.  Reported: the median CPU µs per request of
each, and the median per-round difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from registry.http.request import RegistrySite
from registry.ops.accounting import RequestAccounting
from registry.ops.metrics import Metrics

REQUEST = (
    b"GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: registry\r\n"
    b"Accept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
)


class Answer(Resource):
    """A manifest-sized answer, at once."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/vnd.oci.image.manifest.v1+json")
        return b"{}" * 200


def per_request(site: RegistrySite, requests: int) -> float:
    """CPU seconds per request for ``requests`` keep-alive GETs on one connection."""
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    started = time.process_time()
    for index in range(requests):
        channel.dataReceived(REQUEST)
        if index % 256 == 0:
            transport.clear()
    elapsed = time.process_time() - started
    assert b"200 OK" in transport.value()
    channel.connectionLost(None)
    return elapsed / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    metrics = Metrics()
    sites = {
        "off": RegistrySite(Answer(), access_log=False),
        "on": RegistrySite(Answer(), access_log=False, observer=RequestAccounting(metrics)),
    }
    for site in sites.values():
        per_request(site, 1000)  # warm up
    figures: dict[str, list[float]] = {name: [] for name in sites}
    for _ in range(args.rounds):
        for name, site in sites.items():
            figures[name].append(per_request(site, args.requests) * 1e6)
    counted = metrics.http.requests[("GET", "manifest", 200)]
    assert counted == (args.rounds * args.requests + 1000), counted
    result = {
        name: {"cpu_us_per_request": round(statistics.median(values), 2)}
        for name, values in figures.items()
    }
    result["difference_us"] = round(  # type: ignore[assignment]
        statistics.median(on - off for on, off in zip(figures["on"], figures["off"], strict=True)),
        2,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
