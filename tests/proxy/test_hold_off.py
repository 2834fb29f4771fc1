"""The cache stops asking an upstream that is out (`registry.proxy.health`): after three
failures in a row, requests are answered at once (a cached tag served stale, else 503) and
none reaches the upstream, with one warning instead of a line per request; a 429 holds off
its kind of call (manifest GETs) while the others (HEADs, blob GETs) go on, for its
Retry-After, or without one for ``hold_off`` doubled while the 429s go on; once the hold
has passed, one request probes, and an answer ends the outage with one line."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from registry.proxy.errors import (
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
    UpstreamUntrustedCertificate,
)
from registry.proxy.health import (
    MAX_RETRY_AFTER,
    HeldOff,
    HeldOffRateLimited,
    HeldOffUnavailable,
    UpstreamHealth,
)
from tests.e2e.client import get, sha256
from tests.e2e.harness import sleep
from tests.e2e.test_monitoring import scrape
from tests.fakes.content import Image
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.test_fill_storage_failure import Logs


def _run(health: UpstreamHealth, outcome: BaseException | None, kind: str = "manifest GET") -> Any:
    """One call through ``health`` that ends with ``outcome`` (None: an answer); what the
    caller got (the call's result or its error)."""

    async def make() -> str:
        if outcome is not None:
            raise outcome
        return "answer"

    got: list[Any] = []
    Deferred.fromCoroutine(health.call(make, kind)).addBoth(got.append)
    assert got, "the call did not end at once"
    result = got[0]
    return result.value if hasattr(result, "value") else result


def test_the_hold_starts_after_three_failures_doubles_at_each_failed_probe_and_ends() -> None:
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds, first_hold=5.0)
    out = UpstreamUnavailable(None, "no answer from https://upstream.example: refused")
    with Logs() as logs:
        for _ in range(3):
            assert _run(health, out) is out  # asked, and failed
        refused = _run(health, None)  # held off: not asked (the answer is never made)
        assert isinstance(refused, HeldOff) and isinstance(refused, UpstreamUnavailable)
        # Not the reason of the failure (another request's): the log has that.
        assert refused.reason == "not asked while it is out (no answer)"
        clock.advance(5)
        assert _run(health, out) is out  # the probe, which fails: held off for 10 s
        clock.advance(9)
        assert isinstance(_run(health, None), HeldOff)
        clock.advance(1)
        assert _run(health, UpstreamBadResponse(None, "bad body")).reason == "bad body"
        assert _run(health, None) == "answer"  # an answer ended it
    assert [(level, text) for level, text, _ in logs.events] == [
        (
            "warn",
            "proxy hub: https://upstream.example out (3 failures in a row): no answer from"
            " https://upstream.example: refused; answering without asking it for 5s",
        ),
        (
            "warn",
            "proxy hub: https://upstream.example still out: no answer from"
            " https://upstream.example: refused; answering without asking it for 10s",
        ),
        (
            "info",
            "proxy hub: https://upstream.example answers again after 15s out; 2 requests were"
            " answered without it meanwhile",
        ),
    ]


def test_a_certificate_that_does_not_verify_holds_the_upstream_off_too() -> None:
    """The client raises it at once, without retries (a configuration error): three in a
    row hold the upstream off as an outage does, and those held off are told why."""
    health = UpstreamHealth("hub", "https://upstream.example", Clock().seconds)
    untrusted = UpstreamUntrustedCertificate(
        "https://upstream.example", "certificate verify failed"
    )
    for _ in range(3):
        assert _run(health, untrusted) is untrusted
    refused = _run(health, None)
    assert isinstance(refused, HeldOff) and isinstance(refused, UpstreamUnavailable)
    assert refused.reason == "not asked while it is out (its TLS certificate did not verify)"


def test_a_rate_limit_holds_off_its_kind_of_call_only_as_long_as_it_says() -> None:
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds)
    limited = UpstreamRateLimited(429, "pull rate limit reached", retry_after=60.0)
    assert _run(health, limited, "manifest GET") is limited
    refused = _run(health, None, "manifest GET")
    assert isinstance(refused, HeldOff) and isinstance(refused, UpstreamRateLimited)
    assert refused.retry_after == 60.0
    # Docker Hub limits manifest GETs: HEADs, blobs, tag lists go on.
    for kind in ("manifest HEAD", "blob GET", "blob HEAD", "tags", "referrers"):
        assert _run(health, None, kind) == "answer", kind
    clock.advance(59.5)
    assert _run(health, None, "manifest GET").retry_after == 1.0  # (at least a second)
    clock.advance(0.5)
    assert _run(health, None, "manifest GET") == "answer"


KINDS = ("manifest GET", "manifest HEAD", "blob GET", "blob HEAD", "tags", "referrers")


def test_a_429_without_retry_after_holds_off_its_kind_for_hold_off_doubled() -> None:
    """No Retry-After: the kind of call that met the 429 waits ``hold_off`` (its client is
    told so), doubled at each 429 that follows its hold, up to a minute; the others go on,
    and the upstream is never "out" (a 429 is an answer).  An answer other than a 429 to
    that kind starts the wait over; a 503 says nothing of the rate limit."""
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds, first_hold=5.0)
    with Logs() as logs:
        for hold in (5.0, 10.0, 20.0, 40.0, 60.0, 60.0):
            limited = UpstreamRateLimited(429, "pull rate limit reached")
            assert _run(health, limited) is limited
            assert limited.retry_after == hold  # what its client is told
            for _ in range(3):
                refused = _run(health, None)
                assert isinstance(refused, HeldOff) and isinstance(refused, UpstreamRateLimited)
                assert refused.retry_after == hold
                assert refused.reason == "not asked until its rate limit ends (it answered 429)"
            assert health.rate_limits() == f"manifest GET not asked for {hold:.0f}s more"
            for kind in KINDS[1:]:
                assert _run(health, None, kind) == "answer", kind
            assert health.held_until is None  # not an outage
            clock.advance(hold)
            assert health.rate_limits() is None
        assert _run(health, UpstreamUnavailable(503, "down")).status == 503
        limited = UpstreamRateLimited(429, "pull rate limit reached")
        assert _run(health, limited) is limited
        assert limited.retry_after == 60.0  # a 503 between: still the doubled wait
        clock.advance(60)
        assert _run(health, None) == "answer"  # starts the wait over
        limited = UpstreamRateLimited(429, "pull rate limit reached")
        assert _run(health, limited) is limited
        assert limited.retry_after == 5.0
        # Other kinds have waits of their own.
        blob = UpstreamRateLimited(429, "slow down")
        assert _run(health, blob, "blob GET") is blob
        assert blob.retry_after == 5.0
        assert health.rate_limits() == (
            "blob GET not asked for 5s more; manifest GET not asked for 5s more"
        )
    said = logs.saying("rate-limits")
    assert [level for level, _ in said] == ["warn"] * 9, said
    assert said[0][1] == (
        "proxy hub: https://upstream.example rate-limits manifest GET requests: pull rate"
        " limit reached; not asking it for 5s (it said no Retry-After)"
    )
    assert said[1][1] == (
        "proxy hub: https://upstream.example still rate-limits manifest GET requests: pull"
        " rate limit reached; not asking it for 10s (it said no Retry-After)"
    )
    assert said[7][1].startswith("proxy hub: https://upstream.example rate-limits manifest GET ")
    assert said[8][1].startswith("proxy hub: https://upstream.example rate-limits blob GET ")
    assert not logs.saying("answering without asking it")


def test_a_429_without_retry_after_is_an_answer_that_ends_an_outage() -> None:
    """Three 429s without Retry-After in a row are no outage; a 429 to the probe of an
    outage ends it (the upstream is there), and holds off its kind only."""
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds, first_hold=5.0)
    for _ in range(3):
        limited = UpstreamRateLimited(429, "slow down")
        assert _run(health, limited) is limited
        clock.advance(limited.retry_after or 0)
    assert health.held_until is None
    assert _run(health, None, "blob GET") == "answer"
    out = UpstreamUnavailable(None, "refused")
    for _ in range(3):
        assert _run(health, out, "blob GET") is out
    assert isinstance(_run(health, None, "blob GET"), HeldOffUnavailable)
    clock.advance(5)
    limited = UpstreamRateLimited(429, "slow down")
    with Logs() as logs:
        assert _run(health, limited, "tags") is limited  # the probe
    assert health.held_until is None
    (back,) = logs.saying("answers again")
    assert back[0] == "info"
    assert isinstance(_run(health, None, "tags"), HeldOffRateLimited)
    assert _run(health, None, "blob GET") == "answer"


def test_a_429_without_retry_after_to_a_call_made_before_the_hold_leaves_the_hold() -> None:
    """Calls of a kind in flight when its hold began: their 429s neither double nor
    restart the hold, and their clients are told the time left."""
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds, first_hold=5.0)
    late: list[Deferred[str]] = []

    async def hanging() -> str:
        waiting: Deferred[str] = Deferred()
        late.append(waiting)
        return await waiting

    got: list[Any] = []
    for _ in range(3):
        Deferred.fromCoroutine(health.call(hanging)).addErrback(lambda f: got.append(f.value))
    late[0].errback(UpstreamRateLimited(429, "slow down"))  # held off for 5 s
    clock.advance(2)
    late[1].errback(UpstreamRateLimited(429, "slow down"))
    assert [e.retry_after for e in got] == [5.0, 3.0]
    assert health.limited["manifest GET"][0] == 5.0 and health.waits["manifest GET"] == 5.0
    clock.advance(3)
    limited = UpstreamRateLimited(429, "slow down")
    assert _run(health, limited) is limited  # the first call after the hold: doubled
    assert limited.retry_after == 10.0
    late[2].errback(UpstreamRateLimited(429, "slow down"))
    assert got[2].retry_after == 10.0 and health.limited["manifest GET"][0] == 15.0


def test_a_late_failure_of_a_call_made_before_the_hold_neither_probes_nor_doubles() -> None:
    """Calls in flight when the hold began fail later (a hung upstream, each after its
    timeout): they neither end the probe under way nor double the hold."""
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds, first_hold=5.0)
    out = UpstreamUnavailable(None, "no answer within 30s")
    late: list[Deferred[str]] = []

    async def hanging() -> str:
        waiting: Deferred[str] = Deferred()
        late.append(waiting)
        return await waiting

    calls = [Deferred.fromCoroutine(health.call(hanging)) for _ in range(5)]
    for call in calls:
        call.addErrback(lambda f: None)
    for waiting in late[:3]:
        waiting.errback(out)  # three failures: held off for 5 s
    clock.advance(5)
    probe = Deferred.fromCoroutine(health.call(hanging))  # the probe, hanging too
    probe.addErrback(lambda f: None)
    assert len(late) == 6
    late[3].errback(out)  # made before the hold: no doubling, the probe stands
    assert health.held_until == 5.0 and health.probing
    assert isinstance(_run(health, None), HeldOff)  # no second probe meanwhile
    late[5].errback(out)  # the probe fails: held off for twice as long
    assert health.held_until == 15.0 and not health.probing
    late[4].errback(out)


def test_hold_off_0_asks_every_time() -> None:
    health = UpstreamHealth("hub", "https://upstream.example", Clock().seconds, first_hold=0)
    out = UpstreamUnavailable(None, "refused")
    for _ in range(5):
        assert _run(health, out) is out


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_is_out_is_not_asked_for_every_request(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    cached = fake.content.add_image("library/alpine", "latest", [1000])
    fake.content.add_image("library/busybox", "latest", [1000])
    registry = await proxied(hold_off="1h")
    url = f"{registry.url}/v2/library/alpine/manifests/latest"
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, cached.digest)
    found, _ = await scrape(registry.url)
    assert found[("txregistry_proxy_upstream_out", (("upstream", "hub"),))] == 0
    fake.switches.fail_status = 503
    with Logs() as logs:
        for _ in range(3):  # each asks the upstream (tag_freshness = 0), and is served stale
            response, body = await get(url)
            assert (response.code, sha256(body)) == (200, cached.digest)
        asked = len(fake.log)
        for _ in range(5):  # answered without asking
            response, body = await get(url)
            assert (response.code, sha256(body)) == (200, cached.digest)
        response, body = await get(f"{registry.url}/v2/library/busybox/manifests/latest")
        assert response.code == 503, body
        assert response.headers.getRawHeaders("Retry-After") is not None
        (error,) = json.loads(body)["errors"]
        assert error["code"] == "UNAVAILABLE"
        assert error["detail"]["upstream"] == "not asked while it is out (it answered 503)"
        assert len(fake.log) == asked
        found, _ = await scrape(registry.url)
        assert found[("txregistry_proxy_upstream_out", (("upstream", "hub"),))] == 1
        logs.assert_clean()
        out = logs.saying("answering without asking it")
        assert len(out) == 1, out
        assert out[0][0] == "warn"
        assert out[0][1].startswith(f"proxy hub: {fake.url} out (3 failures in a row): ")
        # One line per request only before the hold: not during it.
        stale = logs.saying("proxy hub: serving cached docker.io/library/alpine:latest")
        assert len(stale) == 3, stale
        assert len(logs.saying("manifest revalidation")) == 3


@pytest_twisted.ensureDeferred
async def test_a_failing_redirect_target_holds_off_nothing(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Blob downloads failing at the host the upstream redirects them to (its CDN answering
    503) fail those downloads only: the upstream answered each with its redirect, so it is
    not out, and manifests are still asked for (three such failures held it off)."""
    image = fake.content.add_image("library/alpine", "latest", [1000])
    fake.content.add_image("library/busybox", "latest", [1000])
    registry = await proxied(hold_off="1h")
    fake.switches.cdn_status = 503
    with Logs() as logs:
        for _ in range(4):
            response, body = await get(
                f"{registry.url}/v2/library/alpine/blobs/{image.layers[0].digest}"
            )
            assert response.code == 503, body
        response, body = await get(f"{registry.url}/v2/library/busybox/manifests/latest")
        assert response.code == 200, body
        found, _ = await scrape(registry.url)
        assert found[("txregistry_proxy_upstream_out", (("upstream", "hub"),))] == 0
        assert logs.saying("answering without asking it") == []
    fake.switches.cdn_status = None
    response, body = await get(f"{registry.url}/v2/library/alpine/blobs/{image.layers[0].digest}")
    assert (response.code, sha256(body)) == (200, image.layers[0].digest)


@pytest_twisted.ensureDeferred
async def test_a_rate_limited_manifest_get_holds_off_manifest_gets_only(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Docker Hub's pull limit: manifest GETs answer 429; tags are still revalidated with
    HEADs, and layers not cached yet are still fetched."""
    cached = fake.content.add_image("library/alpine", "latest", [1000])
    busybox = fake.content.add_image("library/busybox", "latest", [1000])
    registry = await proxied()
    response, body = await get(f"{registry.url}/v2/library/alpine/manifests/latest")
    assert (response.code, sha256(body)) == (200, cached.digest)
    fake.switches.ratelimit_remaining = 0  # manifest GETs answer 429, Retry-After: 60
    uncached = f"{registry.url}/v2/library/busybox/manifests/latest"
    with Logs() as logs:
        response, body = await get(uncached)
        assert response.code == 429, body
        assert response.headers.getRawHeaders("Retry-After") == ["60"]
        gets = fake.count("GET", "manifest")
        response, body = await get(uncached)
        assert response.code == 429, body
        (seconds,) = response.headers.getRawHeaders("Retry-After")
        assert 1 <= int(seconds) <= 60
        assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert fake.count("GET", "manifest") == gets  # not asked
        heads = fake.count("HEAD", "manifest")
        response, body = await get(f"{registry.url}/v2/library/alpine/manifests/latest")
        assert (response.code, sha256(body)) == (200, cached.digest)
        assert fake.count("HEAD", "manifest") == heads + 1  # revalidated: HEADs are free
        layer = busybox.layers[0].digest
        response, body = await get(f"{registry.url}/v2/library/busybox/blobs/{layer}")
        assert (response.code, sha256(body)) == (200, layer)  # blobs are not limited
        said = logs.saying("rate-limits")
        assert [level for level, _ in said] == ["warn"], said
        assert said[0][1].startswith(f"proxy hub: {fake.url} rate-limits manifest GET requests: ")
        assert said[0][1].endswith("; not asking it for 60s")
        logs.assert_clean()


async def _limited_without_retry_after(
    proxied: Proxied, fake: FakeUpstream, hold_off: str
) -> tuple[Any, Image, Image, str]:
    """A cache with ``hold_off`` whose alpine:latest is cached (its manifest URL), busybox not,
    and an upstream whose manifest GETs now answer 429 without Retry-After."""
    cached = fake.content.add_image("library/alpine", "latest", [1000])
    busybox = fake.content.add_image("library/busybox", "latest", [1000])
    registry = await proxied(hold_off=hold_off)
    alpine = f"{registry.url}/v2/library/alpine/manifests/latest"
    response, body = await get(alpine)
    assert (response.code, sha256(body)) == (200, cached.digest)
    fake.switches.ratelimit_remaining = 0  # manifest GETs answer 429,
    fake.switches.ratelimit_retry_after = None  # without Retry-After
    return registry, cached, busybox, alpine


@pytest_twisted.ensureDeferred
async def test_429s_without_retry_after_hold_off_manifest_gets_only_and_not_for_long(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Manifest GETs answer 429 without Retry-After, again and again: manifest GETs are not
    asked for ``hold_off`` (1 s), then 2 s, then 4 s (their clients get 429 with the time
    left), and each hold is asked again after it; meanwhile tags are revalidated (HEADs) and
    layers fetched: the upstream is not out."""
    registry, cached, busybox, alpine = await _limited_without_retry_after(proxied, fake, "1s")
    uncached = f"{registry.url}/v2/library/busybox/manifests/latest"
    with Logs() as logs:
        for hold in (1, 2, 4):
            gets = fake.count("GET", "manifest")
            response, body = await get(uncached)  # asks, and meets the 429
            assert fake.count("GET", "manifest") == gets + 1
            assert response.code == 429, body
            assert response.headers.getRawHeaders("Retry-After") == [str(hold)]
            (error,) = json.loads(body)["errors"]
            assert error["code"] == "TOOMANYREQUESTS"
            assert error["detail"]["upstream"] == (
                "manifest library/busybox:latest: TOOMANYREQUESTS pull rate limit reached"
            )
            response, body = await get(uncached)  # held off: not asked
            assert fake.count("GET", "manifest") == gets + 1
            assert response.code == 429, body
            (seconds,) = response.headers.getRawHeaders("Retry-After")
            assert 1 <= int(seconds) <= hold
            assert json.loads(body)["errors"][0]["detail"]["upstream"] == (
                "not asked until its rate limit ends (it answered 429)"
            )
            if hold < 4:
                await sleep(hold + 0.1)
        # Three 429s in a row: the upstream is not out, only manifest GETs are held off.
        heads = fake.count("HEAD", "manifest")
        response, body = await get(alpine)
        assert (response.code, sha256(body)) == (200, cached.digest)
        assert fake.count("HEAD", "manifest") == heads + 1  # revalidated
        layer = busybox.layers[0].digest
        blobs = fake.count("GET", "cdn")
        response, body = await get(f"{registry.url}/v2/library/busybox/blobs/{layer}")
        assert (response.code, sha256(body)) == (200, layer)
        assert fake.count("GET", "cdn") == blobs + 1  # fetched from the upstream
        found, _ = await scrape(registry.url)
        assert found[("txregistry_proxy_upstream_rate_limited", (("upstream", "hub"),))] == 1
        assert found[("txregistry_proxy_upstream_out", (("upstream", "hub"),))] == 0
        gets = fake.count("GET", "manifest")
        response, body = await get(uncached)
        assert response.code == 429, body
        assert fake.count("GET", "manifest") == gets  # still held off
        logs.assert_clean()
        said = logs.saying("rate-limits")
        assert [level for level, _ in said] == ["warn"] * 3, said
        assert said[0][1] == (
            f"proxy hub: {fake.url} rate-limits manifest GET requests: manifest"
            " library/busybox:latest: TOOMANYREQUESTS pull rate limit reached; not asking it"
            " for 1s (it said no Retry-After)"
        )
        assert said[2][1].startswith(f"proxy hub: {fake.url} still rate-limits manifest GET ")
        assert said[2][1].endswith("; not asking it for 4s (it said no Retry-After)")
        assert not logs.saying("answering without asking it")


@pytest_twisted.ensureDeferred
async def test_after_429s_without_retry_after_tag_heads_and_blob_gets_still_reach_the_upstream(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Three manifest GETs in a row meet a 429 without Retry-After (each after the hold of
    the one before): the upstream is not held off as if it were out, a cached tag is still
    revalidated and a layer still fetched, with their bytes."""
    registry, cached, busybox, alpine = await _limited_without_retry_after(proxied, fake, "200ms")
    gets = fake.count("GET", "manifest")
    with Logs() as logs:
        for hold in (0.2, 0.4, 0.8):
            response, body = await get(f"{registry.url}/v2/library/busybox/manifests/latest")
            assert response.code == 429, body
            if hold < 0.8:
                await sleep(hold + 0.05)
        assert fake.count("GET", "manifest") == gets + 3  # each asked, each met a 429
        heads = fake.count("HEAD", "manifest")
        response, body = await get(alpine)
        assert (response.code, sha256(body)) == (200, cached.digest)
        assert fake.count("HEAD", "manifest") == heads + 1
        layer = busybox.layers[0].digest
        blobs = fake.count("GET", "cdn")
        response, body = await get(f"{registry.url}/v2/library/busybox/blobs/{layer}")
        assert (response.code, sha256(body)) == (200, layer)
        assert fake.count("GET", "cdn") == blobs + 1
        logs.assert_clean()


@pytest.mark.parametrize("value", ["0", "30s"])
def test_hold_off_is_a_proxy_key(value: str) -> None:
    from registry.proxy.config import parse_proxy

    parsed = parse_proxy(
        "hub", {"remoteurl": "https://r.example", "default": "true", "hold_off": value}
    )
    assert parsed.hold_off == {"0": 0.0, "30s": 30.0}[value]


def test_the_back_line_counts_the_outages_refusals_only() -> None:
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds, first_hold=5.0)
    limited = UpstreamRateLimited(429, "pull rate limit reached", retry_after=60.0)
    assert _run(health, limited) is limited
    for _ in range(3):
        assert isinstance(_run(health, None), HeldOff)  # the rate limit's refusals
    out = UpstreamUnavailable(None, "refused")
    for _ in range(3):
        assert _run(health, out, "blob GET") is out
    assert isinstance(_run(health, None, "blob GET"), HeldOff)  # the outage's one refusal
    clock.advance(5)
    with Logs() as logs:
        assert _run(health, None, "blob GET") == "answer"
    (said,) = logs.saying("answers again")
    assert said[1].endswith("; 1 requests were answered without it meanwhile"), said


TEAM_A = "teama/private"  # another team's repository: its name and tag are not bob's to see
SECRET_TAG = "secret-release-2027"


@pytest_twisted.ensureDeferred
async def test_a_hold_off_tells_a_client_nothing_another_request_asked_for(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """One team's requests put the upstream out; another team's request, answered at once,
    is told the upstream's state (its last status, the time left), never what those requests
    asked for (repository, tag): the log keeps that."""
    fake.content.add_image(TEAM_A, SECRET_TAG, [100])
    fake.content.add_image("teamb/other", "v1", [100])
    registry = await proxied(hold_off="1h")
    response, _ = await get(f"{registry.url}/v2/{TEAM_A}/manifests/none")  # its token, a 404
    assert response.code == 404
    fake.switches.fail_status = 503
    with Logs() as logs:
        for _ in range(3):  # each asks the upstream, and fails: held off
            response, body = await get(f"{registry.url}/v2/{TEAM_A}/manifests/{SECRET_TAG}")
            assert response.code == 503, body
        asked = len(fake.log)
        response, body = await get(f"{registry.url}/v2/teamb/other/manifests/v1")
    assert response.code == 503, body
    assert response.headers.getRawHeaders("Retry-After") in (["3600"], ["3599"])
    assert json.loads(body) == {
        "errors": [
            {
                "code": "UNAVAILABLE",
                "message": "upstream registry unavailable",
                "detail": {
                    "name": "docker.io/teamb/other",
                    "reference": "v1",
                    "upstream": "not asked while it is out (it answered 503)",
                },
            }
        ]
    }
    assert b"teama" not in body and SECRET_TAG.encode() not in body
    assert len(fake.log) == asked  # not asked
    (out,) = logs.saying("answering without asking it")
    assert f"manifest {TEAM_A}:{SECRET_TAG}: " in out[1]  # the log has it


@pytest_twisted.ensureDeferred
async def test_a_rate_limit_hold_tells_a_client_nothing_another_request_asked_for(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """The same for the hold of a 429 with Retry-After: the status and the time left."""
    fake.content.add_image(TEAM_A, SECRET_TAG, [100])
    fake.content.add_image("teamb/other", "v1", [100])
    registry = await proxied()
    fake.switches.ratelimit_remaining = 0  # manifest GETs answer 429, Retry-After: 60
    response, body = await get(f"{registry.url}/v2/{TEAM_A}/manifests/{SECRET_TAG}")
    assert response.code == 429, body  # (its own request: told its own answer)
    gets = fake.count("GET", "manifest")
    response, body = await get(f"{registry.url}/v2/teamb/other/manifests/v1")
    assert response.code == 429, body
    assert response.headers.getRawHeaders("Retry-After") in (["60"], ["59"])
    assert json.loads(body) == {
        "errors": [
            {
                "code": "TOOMANYREQUESTS",
                "message": "upstream rate limit reached",
                "detail": {
                    "name": "docker.io/teamb/other",
                    "reference": "v1",
                    "upstream": "not asked until its rate limit ends (it answered 429)",
                },
            }
        ]
    }
    assert b"teama" not in body and SECRET_TAG.encode() not in body
    assert fake.count("GET", "manifest") == gets  # not asked


def test_hold_off_0_still_waits_out_a_429s_retry_after() -> None:
    """``hold_off = 0`` turns off the holds after failures, not the respect for a 429's
    Retry-After: asking again during it would only use up the rate limit."""
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds, first_hold=0)
    limited = UpstreamRateLimited(429, "pull rate limit reached", retry_after=40.0)
    assert _run(health, limited) is limited
    refused = _run(health, None)
    assert isinstance(refused, HeldOff) and isinstance(refused, UpstreamRateLimited)
    assert refused.retry_after == 40.0
    assert _run(health, None, "blob GET") == "answer"  # only its kind of call waits
    clock.advance(40)
    assert _run(health, None) == "answer"
    for _ in range(5):  # no Retry-After: no hold with hold_off = 0, told as it is
        slow = UpstreamRateLimited(429, "slow down")
        assert _run(health, slow) is slow
        assert slow.retry_after is None
    assert health.rate_limits() is None


def test_a_429s_client_is_told_the_hold_applied_not_a_longer_retry_after() -> None:
    """Docker Hub's pull limit answers a Retry-After of hours; the cache asks again after
    `MAX_RETRY_AFTER`, and says so to the client that met the 429 as to those after it."""
    clock = Clock()
    health = UpstreamHealth("hub", "https://upstream.example", clock.seconds)
    limited = UpstreamRateLimited(429, "pull rate limit reached", retry_after=21600.0)
    assert _run(health, limited).retry_after == MAX_RETRY_AFTER == 300.0
    assert _run(health, None).retry_after == 300.0
    clock.advance(299.5)
    assert _run(health, None).retry_after == 1.0
    clock.advance(0.5)
    assert _run(health, None) == "answer"


@pytest.mark.parametrize(
    ("hold_off", "retry_after", "told"),
    [("0", 40, 40), ("5s", 21600, 300), ("0", 21600, 300)],
    ids=["hold_off-0", "capped", "hold_off-0-capped"],
)
@pytest_twisted.ensureDeferred
async def test_a_429s_retry_after_is_waited_out_and_told_as_the_hold_applied(
    proxied: Proxied, fake: FakeUpstream, hold_off: str, retry_after: int, told: int
) -> None:
    """Manifest GETs answer 429 with ``Retry-After``: the client that met it and those after
    it get 429 with the seconds until the cache asks again (the upstream's, at most 5
    minutes), and none of them reaches the upstream meanwhile, ``hold_off = 0`` or not."""
    fake.content.add_image("library/busybox", "latest", [100])
    registry = await proxied(hold_off=hold_off)
    fake.switches.ratelimit_remaining = 0
    fake.switches.ratelimit_retry_after = retry_after
    url = f"{registry.url}/v2/library/busybox/manifests/latest"
    response, body = await get(url)
    assert response.code == 429, body
    assert response.headers.getRawHeaders("Retry-After") == [str(told)]
    reason = "manifest library/busybox:latest: TOOMANYREQUESTS pull rate limit reached"
    assert json.loads(body)["errors"][0]["detail"]["upstream"] == reason
    gets = fake.count("GET", "manifest")
    assert gets == 1
    for _ in range(3):
        response, body = await get(url)
        assert fake.count("GET", "manifest") == gets  # not asked again
        assert response.code == 429, body
        assert response.headers.getRawHeaders("Retry-After") in ([str(told)], [str(told - 1)])
        assert json.loads(body) == {
            "errors": [
                {
                    "code": "TOOMANYREQUESTS",
                    "message": "upstream rate limit reached",
                    "detail": {
                        "name": "docker.io/library/busybox",
                        "reference": "latest",
                        "upstream": "not asked until its rate limit ends (it answered 429)",
                    },
                }
            ]
        }
