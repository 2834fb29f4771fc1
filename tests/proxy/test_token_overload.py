"""More distinct upstream token fetches in flight than the upstream client's token table
holds (`registry.client._tokens`, 1024 by default): a request that needs one more is not
made, and its client gets what the cache's own bound (``max_inflight``) answers,
``503 UNAVAILABLE`` with ``Retry-After: 1``, whatever it asked for (a manifest by digest, a
blob, a tag list, referrers), not a 500 with a traceback in the log.  The upstream is not
asked, and the overload says nothing of its health: the next request is asked as usual.

Real HTTP on loopback; the registry's token table is made small (`few_tokens`) and the fake
upstream's token service holds its answers, so that a few requests fill the table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from registry.client._inflight import Overloaded
from registry.client._tokens import TokenCache
from registry.proxy import service as service_module
from registry.proxy.config import ProxyConfig
from registry.proxy.errors import UpstreamUnavailable
from registry.proxy.health import HeldOff, UpstreamHealth
from registry.proxy.upstream import UpstreamClient
from tests.e2e.client import header, sha256
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.test_fill_storage_failure import Logs
from tests.proxy.test_hold_off import _run
from tests.proxy.util import fetch, wait_for

# Upstream tokens the registries of these tests hold (and fetch at once) at most.
TOKENS = 2


@pytest.fixture
def few_tokens(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registries started by the test hold at most `TOKENS` upstream tokens."""
    build = service_module.build_client

    def with_few_tokens(config: ProxyConfig, reactor: Any) -> UpstreamClient:
        client = build(config, reactor)
        client.session.tokens = TokenCache(reactor, TOKENS)
        return client

    monkeypatch.setattr(service_module, "build_client", with_few_tokens)
    yield


def _registry_lines(logs: Logs) -> list[tuple[str, str]]:
    """What the registry logged (the test's own HTTP client logs its connections)."""
    return [
        (level, text)
        for level, text, event in logs.events
        if str(event.get("log_namespace", "")).startswith("registry")
    ]


def _asked(fake: FakeUpstream, name: str) -> int:
    """How many requests about repository ``name`` reached the fake (any kind)."""
    return fake.count(name=name)


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("manifests/{manifest}", {"reference": "{manifest}"}),
        ("manifests/latest", {"reference": "latest"}),
        ("blobs/{layer}", {"digest": "{layer}"}),
        ("tags/list", {}),
        ("referrers/{manifest}", {"reference": "sha256-{hex}"}),
    ],
    ids=["manifest-by-digest", "manifest-by-tag", "blob", "tag-list", "referrers"],
)
@pytest_twisted.ensureDeferred
async def test_a_request_past_the_token_fetches_in_flight_is_answered_503_retry_after_1(
    proxied: Proxied, fake: FakeUpstream, few_tokens: None, path: str, detail: dict[str, str]
) -> None:
    images = {n: fake.content.add_image(f"team/app{n}", "latest", [100]) for n in range(3)}
    registry = await proxied()
    tokens = fake.hold("GET", "token")
    waiting = [
        ensureDeferred(fetch(f"{registry.url}/v2/team/app{n}/manifests/{images[n].digest}"))
        for n in range(TOKENS)
    ]
    try:
        await wait_for(lambda: tokens.arrived == TOKENS)
        third = images[2]
        values = {
            "manifest": third.digest,
            "layer": third.layers[0].digest,
            "hex": third.digest.removeprefix("sha256:"),
        }
        with Logs() as logs:
            response, body = await fetch(f"{registry.url}/v2/team/app2/{path.format(**values)}")
        assert response.code == 503, body
        assert header(response, "retry-after") == "1"
        assert header(response, "content-type") == "application/json"
        assert json.loads(body) == {
            "errors": [
                {
                    "code": "UNAVAILABLE",
                    "message": "too many upstream requests in flight; try again",
                    "detail": {
                        "name": "docker.io/team/app2",
                        **{key: value.format(**values) for key, value in detail.items()},
                        "upstream": "not asked: too many of its token requests in flight",
                    },
                }
            ]
        }
        # Not asked (not even for a token); in the log, its access line only: no traceback.
        assert _asked(fake, "team/app2") == 0
        assert fake.count("GET", "token") == TOKENS
        logs.assert_clean()
        (line,) = _registry_lines(logs)
        assert line[0] == "info"
        assert line[1].startswith(f"access method=GET path=/v2/team/app2/{path.split('/')[0]}")
        assert " status=503 " in line[1]
    finally:
        tokens.release()
    for n, answer in enumerate(waiting):
        response, body = await answer
        assert (response.code, sha256(body)) == (200, images[n].digest)
    # The overload said nothing of the upstream's health: it is asked as usual.
    url = f"{registry.url}/v2/team/app2/manifests/{images[2].digest}"
    response, body = await fetch(url)
    assert (response.code, sha256(body)) == (200, images[2].digest)
    assert fake.count("GET", "manifest", name="team/app2") == 1


def test_a_token_overload_is_neither_a_failure_nor_an_answer() -> None:
    """The call was not made: no failure counted (however many), no outage ended, and a
    probe that could not be made leaves the probe to the next call."""
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds, first_hold=5.0)
    overloaded = Overloaded("2 calls in flight")
    for _ in range(5):
        refused = _run(health, overloaded)
        assert isinstance(refused, HeldOff) and isinstance(refused, UpstreamUnavailable)
        assert refused.retry_after == 1.0
        assert refused.reason == "not asked: too many of its token requests in flight"
    assert (health.failures, health.held_until) == (0, None)
    out = UpstreamUnavailable(None, "refused")
    for _ in range(3):
        assert _run(health, out) is out  # held off for 5 s
    clock.advance(5)
    assert isinstance(_run(health, overloaded), HeldOff)  # the probe, not made
    assert not health.probing and (health.failures, health.held_until) == (3, 5.0)
    assert _run(health, None) == "answer"  # the next call probes, and ends the outage
    assert health.held_until is None
