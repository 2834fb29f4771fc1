"""URLs the upstream names that cannot be used as they say (a port that is no port, no host,
an IPv6 address with a bracket missing, another scheme, a host name the HTTP stack refuses)
in a blob redirect's ``Location`` or a token realm: the pull is 502 UNAVAILABLE "upstream
answer cannot be trusted", like any upstream answer not to act on, said in one warning line
and counted as an upstream failure; never a 500 with a traceback (from the request and again
from the fill)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from tests.auth.conftest import LogCapture
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.util import fetch, metric

A = "library/alpine"
PORT_RANGE = "is not a number from 1 to 65535"


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        # The reviewer's: a second port.
        ("http://127.0.0.1:{cdn}:{cdn}/x/{digest}", "port '{cdn}:{cdn}' " + PORT_RANGE),
        ("http://127.0.0.1:http/x/{digest}", "port 'http' " + PORT_RANGE),
        ("http://127.0.0.1:65536/x/{digest}", "port '65536' " + PORT_RANGE),
        ("http://127.0.0.1:-1/x/{digest}", "port '-1' " + PORT_RANGE),
        ("http://127.0.0.1:0/x/{digest}", "port '0' " + PORT_RANGE),
        ("http://127.0.0.1:/x/{digest}", "port '' " + PORT_RANGE),
        ("http://:{cdn}/x/{digest}", "no host"),
        ("http://[::1/x/{digest}", "cannot be parsed"),
        ("http://::1]/x/{digest}", "cannot be parsed"),
        ("http://[zz]/x/{digest}", "cannot be parsed"),
        ("http://[::1]x/x/{digest}", "malformed host"),
        ("http://a b/x/{digest}", "malformed host 'a b'"),
        ("ftp://127.0.0.1/x/{digest}", "not an http(s) URL"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_unusable_blob_redirect_is_502(
    proxied: Proxied, fake: FakeUpstream, logs: LogCapture, location: str, problem: str
) -> None:
    image = fake.content.add_image(A, "latest", [3000])
    layer = image.layers[0].digest
    fake.switches.blob_location = location.replace("{cdn}", str(fake.cdn_port))
    registry = await proxied()
    response, body = await fetch(f"{registry.url}/v2/alpine/blobs/{layer}")
    sent = location.replace("{cdn}", str(fake.cdn_port)).replace("{digest}", layer)
    reason = f"redirect to '{sent}': {problem.replace('{cdn}', str(fake.cdn_port))}"
    await _answered_as_untrusted(registry.url, fake, logs, response, body, layer, reason)


@pytest_twisted.ensureDeferred
async def test_a_redirect_to_a_host_name_the_http_stack_refuses_is_502(
    proxied: Proxied, fake: FakeUpstream, logs: LogCapture
) -> None:
    """A name RFC 3986 allows but IDNA (which treq applies before sending anything) does not:
    refused the same way, in the words of the refusal."""
    image = fake.content.add_image(A, "latest", [3000])
    layer = image.layers[0].digest
    fake.switches.blob_location = "http://a_b/x/{digest}"
    registry = await proxied()
    response, body = await fetch(f"{registry.url}/v2/alpine/blobs/{layer}")
    reason = (
        f"cannot request http://a_b/x/{layer}: Codepoint U+005F at position 2 of 'a_b' not allowed"
    )
    await _answered_as_untrusted(registry.url, fake, logs, response, body, layer, reason)


@pytest_twisted.ensureDeferred
async def test_an_unusable_token_realm_is_502(
    proxied: Proxied, fake: FakeUpstream, logs: LogCapture
) -> None:
    """``/v2/`` names a token realm with a second port: no token is asked for anywhere."""
    fake.content.add_image(A, "latest", [100])
    realm = f"http://127.0.0.1:{fake.port}:{fake.port}/token"
    fake.switches.token_realm = realm
    registry = await proxied()
    response, body = await fetch(f"{registry.url}/v2/alpine/manifests/latest")
    assert response.code == 502, body
    reason = f"token realm '{realm}': port '{fake.port}:{fake.port}' {PORT_RANGE}"
    assert json.loads(body) == {
        "errors": [
            {
                "code": "UNAVAILABLE",
                "message": "upstream answer cannot be trusted",
                "detail": {
                    "name": "docker.io/library/alpine",
                    "reference": "latest",
                    "upstream": reason,
                },
            }
        ]
    }
    assert [(r.method, r.kind) for r in fake.log] == [("GET", "ping")]
    assert [m for m in logs.messages() if "failed" in m] == [
        f"proxy hub: manifest revalidation {A}:latest failed: {reason}"
    ]
    _, text = await fetch(f"{registry.url}/metrics")
    assert metric(text.decode(), "txregistry_proxy_upstream_errors_total") == 1


async def _answered_as_untrusted(
    url: str,
    fake: FakeUpstream,
    logs: LogCapture,
    response: Any,
    body: bytes,
    layer: str,
    reason: str,
) -> None:
    """502 with the cache's error for an upstream answer not to act on, the redirect not
    followed, one warning, one upstream failure counted."""
    assert response.code == 502, body
    assert json.loads(body) == {
        "errors": [
            {
                "code": "UNAVAILABLE",
                "message": "upstream answer cannot be trusted",
                "detail": {"name": "docker.io/library/alpine", "digest": layer, "upstream": reason},
            }
        ]
    }
    # The blob's GET was redirected (after the HEAD that confirms it); nothing went further.
    assert [(r.method, r.kind) for r in fake.log] == [
        ("GET", "ping"),
        ("GET", "token"),
        ("HEAD", "blob"),
        ("GET", "blob"),
    ]
    failures = [m for m in logs.messages() if "failed" in m]
    assert failures == [f"proxy hub: blob GET {A}:{layer} failed: {reason}"]
    _, text = await fetch(f"{url}/metrics")
    assert metric(text.decode(), "txregistry_proxy_upstream_errors_total") == 1
