"""
Health and metrics over real sockets: readiness follows the storage and the upstreams, the
metrics count what went over the wire, and the ``[debug] addr`` listener takes ``/metrics``
off the registry's port.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from registry.api import mediatypes as mt
from registry.storage import layout
from tests.e2e.client import get, push_blob, sha256, start_upload
from tests.e2e.conftest import Starter
from tests.e2e.harness import RegistryProcess, free_port, sleep, write_config
from tests.fakes.upstream import FakeUpstream, start_fake_upstream
from tests.manifests import samples
from tests.ops.test_cli import cli

# Short enough for quick tests; readiness must change within cache + timeout.
FAST_HEALTH = {"cache": "500ms", "timeout": "1s"}


async def wait_until(check: Callable[[], Any], within: float = 10.0) -> Any:
    """Poll the async ``check`` until it returns something true; fail after ``within`` s."""
    deadline = reactor.seconds() + within  # type: ignore[attr-defined]
    while True:
        result = await check()
        if result:
            return result
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"condition not met within {within} s")
        await sleep(0.1)


async def ready_answer(url: str) -> tuple[int, dict[str, Any]] | None:
    """The readiness answer once it is 200, else None (to poll with `wait_until`)."""
    status, body = await answer(url)
    return (status, body) if status == 200 else None


async def answer(url: str) -> tuple[int, dict[str, Any]]:
    response, body = await get(url)
    return response.code, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_readiness_follows_the_storage(start_registry: Starter, tmp_path: Path) -> None:
    """The storage root replaced by a file (root is not stopped by chmod): 503 naming the
    storage check, on /health/ready and /health; the folder back: 200 again."""
    root = tmp_path / "root"
    registry = await start_registry(
        {"storage": {"rootdirectory": str(root)}, "health": FAST_HEALTH}
    )
    await push_blob(registry.url, "app", b"before")
    status, body = await answer(f"{registry.url}/health/ready")
    assert (status, body) == (200, {"status": "ok", "checks": {"storage": {"status": "ok"}}})
    status, body = await answer(f"{registry.url}/health/live")
    assert (status, body) == (200, {"status": "ok"})

    aside = tmp_path / "root-aside"
    os.rename(root, aside)
    root.write_bytes(b"not a folder")

    async def failing() -> dict[str, Any] | None:
        status, body = await answer(f"{registry.url}/health/ready")
        return body if status == 503 else None

    body = await wait_until(failing, within=5.0)
    assert body["status"] == "unavailable"
    assert body["failing"] == ["storage"]
    assert body["checks"]["storage"]["status"] == "failing"
    assert "directory" in body["checks"]["storage"]["error"]
    status, old = await answer(f"{registry.url}/health")
    assert status == 503
    assert old["status"] == "unavailable" and old["reason"]
    status, _ = await answer(f"{registry.url}/health/live")
    assert status == 200  # the process still serves

    root.unlink()
    os.rename(aside, root)

    async def ready() -> bool:
        status, _ = await answer(f"{registry.url}/health/ready")
        return status == 200

    await wait_until(ready, within=5.0)
    status, body = await answer(f"{registry.url}/health")
    assert (status, body) == (200, {"status": "ok"})
    response, data = await get(f"{registry.url}/v2/app/blobs/{sha256(b'before')}")
    assert (response.code, data) == (200, b"before")


@pytest_twisted.ensureDeferred
async def test_a_storage_root_that_went_away_is_not_made_again(
    start_registry: Starter, tmp_path: Path
) -> None:
    """
    The storage root moved away (a lost mount, an ``rm -rf``): health fails naming it,
    reads and writes answer 503 (not "unknown" as if the registry were empty), and nothing
    makes the root again; moved back, everything reads as before.
    """
    root = tmp_path / "root"
    registry = await start_registry(
        {"storage": {"rootdirectory": str(root)}, "health": FAST_HEALTH}
    )
    url = registry.url
    config, layer = samples.CONFIG, b"layer kept while the root is away"
    for blob in (config, layer):
        await push_blob(url, "team/app", blob)
    manifest = samples.oci_image(layers=(layer,))
    response = await treq.put(
        f"{url}/v2/team/app/manifests/v1",
        data=manifest,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201, await response.text()

    aside = tmp_path / "root-aside"
    os.rename(root, aside)

    async def failing() -> dict[str, Any] | None:
        status, body = await answer(f"{url}/health")
        return body if status == 503 else None

    body = await wait_until(failing, within=5.0)
    assert "is gone or not a folder" in body["reason"], body
    for path in (
        "/v2/team/app/manifests/v1",
        f"/v2/team/app/blobs/{sha256(layer)}",
        "/v2/team/app/tags/list",
        "/v2/_catalog",
    ):
        response, text = await get(f"{url}{path}")
        assert response.code == 503, (path, response.code, text)
        assert json.loads(text)["errors"][0]["code"] == "UNAVAILABLE", (path, text)
    response = await treq.post(
        f"{url}/v2/other/app/blobs/uploads/?digest={sha256(b'new')}", data=b"new"
    )
    assert response.code == 503, await response.text()
    assert "is gone or not a folder" in await response.text()
    assert not root.exists()

    os.rename(aside, root)

    async def ready() -> bool:
        status, _ = await answer(f"{url}/health")
        return status == 200

    await wait_until(ready, within=5.0)
    response, data = await get(f"{url}/v2/team/app/manifests/v1")
    assert (response.code, data) == (200, manifest)
    response, data = await get(f"{url}/v2/team/app/blobs/{sha256(layer)}")
    assert (response.code, data) == (200, layer)


@pytest.mark.parametrize("setting", [None, "required"])
@pytest_twisted.ensureDeferred
async def test_an_upstream_down_is_degraded_or_fails_readiness_when_required(
    start_registry: Starter, setting: str | None
) -> None:
    """Nothing listens where [proxy:hub] points: readiness names it.  By default the check is
    degraded and readiness 200: every instance of a mirror shares its upstream, and a 503
    took them all out of a load balancer's pool at once, while each served what it had
    cached.  ``[health] upstreams = required`` fails readiness instead.  /health (storage)
    is fine either way."""
    # A port nothing listens on: probing is the point here, not a port for a server.
    nowhere = f"http://127.0.0.1:{free_port()}"
    health = {**FAST_HEALTH, **({"upstreams": setting} if setting else {})}
    registry = await start_registry(
        {"proxy:hub": {"remoteurl": nowhere, "prefix": "docker.io"}, "health": health}
    )

    async def the_upstream_checked() -> tuple[int, dict[str, Any]] | None:
        status, body = await answer(f"{registry.url}/health/ready")
        checks = body["checks"]
        loaded = checks["cache:hub"]["status"] == "ok"
        return (status, body) if loaded and checks["upstream:hub"]["status"] != "ok" else None

    # Once the cache's index is loaded (at once: there is none), the upstream alone is named.
    status, body = await wait_until(the_upstream_checked)
    assert body["checks"]["storage"] == {"status": "ok"}
    upstream = body["checks"]["upstream:hub"]
    if setting == "required":
        assert status == 503
        assert body["failing"] == ["upstream:hub"]
        assert upstream["status"] == "failing"
        assert not upstream["error"].endswith("answers 503)")
    else:
        assert status == 200
        assert body["status"] == "degraded"
        assert body["degraded"] == ["upstream:hub"]
        assert upstream["status"] == "degraded"
        assert upstream["error"].endswith(
            " (cached content is served; what is not cached answers 503)"
        ), upstream
    status, body = await answer(f"{registry.url}/health")
    assert (status, body) == (200, {"status": "ok"})


@pytest_twisted.ensureDeferred
async def test_an_upstream_up_is_ready_and_can_be_left_out(start_registry: Starter) -> None:
    fake: FakeUpstream = await start_fake_upstream(reactor)
    try:
        registry = await start_registry(
            {"proxy:hub": {"remoteurl": fake.url, "prefix": "docker.io"}, "health": FAST_HEALTH}
        )
        url = f"{registry.url}/health/ready"
        # Ready once the cache's index is read back from storage (at once: there is none).
        _status, body = await wait_until(lambda: ready_answer(url))
        assert body["checks"] == {
            "storage": {"status": "ok"},
            "cache:hub": {"status": "ok"},
            "upstream:hub": {"status": "ok"},
        }
        nowhere = f"http://127.0.0.1:{free_port()}"
        registry = await start_registry(
            {
                "proxy:hub": {"remoteurl": nowhere, "prefix": "docker.io"},
                "health": {**FAST_HEALTH, "upstreams": "false"},
            }
        )
        _status, body = await wait_until(lambda: ready_answer(f"{registry.url}/health/ready"))
        assert body["checks"] == {"storage": {"status": "ok"}, "cache:hub": {"status": "ok"}}
    finally:
        await fake.stop()


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(url: str) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], str]:
    response, body = await get(f"{url}/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == [
        "text/plain; version=0.0.4; charset=utf-8"
    ]
    return samples_of(body.decode()), body.decode()


def moved(
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    name: str,
    **labels: str,
) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest_twisted.ensureDeferred
async def test_metrics_count_a_push_and_a_pull(start_registry: Starter) -> None:
    registry = await start_registry()
    url = registry.url
    before, _ = await scrape(url)

    layer = os.urandom(300_000)
    await push_blob(url, "team/blobs/app", layer)  # monolithic POST ?digest=
    config = samples.CONFIG
    location = await start_upload(url, "team/blobs/app")  # POST, PATCH, PUT
    response = await treq.patch(location, data=config)
    assert response.code == 202
    location = response.headers.getRawHeaders("location")[0]
    separator = "&" if "?" in location else "?"
    response = await treq.put(f"{url}{location}{separator}digest={sha256(config)}")
    assert response.code == 201
    manifest = samples.oci_image(config=config, layers=(layer,))
    response = await treq.put(
        f"{url}/v2/team/blobs/app/manifests/v1",
        data=manifest,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201
    response, got = await get(f"{url}/v2/team/blobs/app/manifests/v1")
    assert got == manifest
    response, got = await get(f"{url}/v2/team/blobs/app/blobs/{sha256(layer)}")
    assert got == layer
    response, _ = await get(f"{url}/v2/team/blobs/app/blobs/{sha256(b'missing')}")
    assert response.code == 404

    after, text = await scrape(url)
    requests = "txregistry_http_requests_total"
    assert moved(before, after, requests, method="POST", route="upload", status="201") == 1
    assert moved(before, after, requests, method="POST", route="upload", status="202") == 1
    assert moved(before, after, requests, method="PATCH", route="upload", status="202") == 1
    assert moved(before, after, requests, method="PUT", route="upload", status="201") == 1
    assert moved(before, after, requests, method="PUT", route="manifest", status="201") == 1
    assert moved(before, after, requests, method="GET", route="manifest", status="200") == 1
    assert moved(before, after, requests, method="GET", route="blob", status="200") == 1
    assert moved(before, after, requests, method="GET", route="blob", status="404") == 1
    assert moved(before, after, requests, method="GET", route="metrics", status="200") == 1
    received = "txregistry_http_request_body_bytes_total"
    assert moved(before, after, received, route="upload") == len(layer) + len(config)
    assert moved(before, after, received, route="manifest") == len(manifest)
    sent = "txregistry_http_response_body_bytes_total"
    assert moved(before, after, sent, route="manifest") == len(manifest)
    assert moved(before, after, sent, route="blob") > len(layer)  # the layer and a 404 body
    duration = "txregistry_http_request_duration_seconds_count"
    assert moved(before, after, duration, method="GET", route="blob") == 2
    assert moved(before, after, "txregistry_storage_operation_duration_seconds_count",
                 driver="filesystem", operation="put_content") >= 3  # fmt: skip
    assert after[("txregistry_http_requests_in_flight", (("route", "metrics"),))] == 1
    assert after[("txregistry_uploads_open", ())] == 0
    # Client-chosen names never become label values.
    assert "team/blobs/app" not in text


@pytest_twisted.ensureDeferred
async def test_the_debug_listener_takes_metrics_off_the_main_port(
    start_registry: Starter,
) -> None:
    # A probed port: the debug listener's bound port is neither logged nor reachable from
    # the in-process registry's handle, so it is chosen up front.
    port = free_port()
    registry = await start_registry({"debug": {"addr": f"tcp:{port}:interface=127.0.0.1"}})
    debug = f"http://127.0.0.1:{port}"
    await push_blob(registry.url, "app", b"counted")
    response, body = await get(f"{registry.url}/metrics")
    assert response.code == 404
    assert json.loads(body)["errors"][0]["code"] == "NOT_FOUND"
    found, _ = await scrape(debug)
    key = (
        "txregistry_http_requests_total",
        (("method", "POST"), ("route", "upload"), ("status", "201")),
    )
    assert found[key] == 1
    for path in ("/health/ready", "/debug/health"):
        status, body = await answer(debug + path)
        assert (status, body["checks"]) == (200, {"storage": {"status": "ok"}})
    assert await answer(debug + "/health/live") == (200, {"status": "ok"})
    response, _ = await get(f"{debug}/v2/")
    assert response.code == 404  # no registry API on the debug port
    status, _ = await answer(f"{registry.url}/health/ready")
    assert status == 200  # load balancers keep their checks on the main port


@pytest_twisted.ensureDeferred
async def test_no_metrics_on_an_authenticated_main_port(
    start_registry: Starter, tmp_path: Path
) -> None:
    """A registry that denies by default does not publish its figures to anonymous callers."""
    password = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"alice:{password}\n")
    registry = await start_registry({"auth.htpasswd": {"path": str(tmp_path / "htpasswd")}})
    response, body = await get(f"{registry.url}/metrics")
    assert response.code == 404
    assert json.loads(body)["errors"][0]["code"] == "NOT_FOUND"
    status, _ = await answer(f"{registry.url}/health/ready")
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_gc_results_reach_the_metrics(start_registry: Starter, tmp_path: Path) -> None:
    """``txregistry gc`` (another process) leaves a report the serving registry exposes."""
    root = tmp_path / "root"
    registry = await start_registry({"storage": {"rootdirectory": str(root)}})
    orphan = os.urandom(4321)
    await push_blob(registry.url, "app", orphan)  # no manifest references it
    config = write_config(tmp_path / "gc.cfg", {"storage": {"rootdirectory": str(root)}})
    result = await cli("gc", "--config", str(config), "--grace", "0")
    assert result.code == 0, result
    found, _ = await scrape(registry.url)
    assert found[("txregistry_gc_last_run_blobs_deleted", ())] == 1
    assert found[("txregistry_gc_last_run_bytes_freed", ())] == len(orphan)
    assert found[("txregistry_gc_last_run_errors", ())] == 0
    assert found[("txregistry_gc_last_run_timestamp_seconds", ())] > 0
    assert found[("txregistry_gc_last_run_blobs_stored", ())] == 0
    assert found[("txregistry_gc_last_run_bytes_stored", ())] == 0


@pytest_twisted.ensureDeferred
async def test_an_upload_streaming_now_is_an_open_upload(start_registry: Starter) -> None:
    registry = await start_registry()
    location = await start_upload(registry.url, "app")
    path = location.removeprefix(registry.url)
    port = int(registry.url.rsplit(":", 1)[1])
    body = os.urandom(100_000)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        head = f"PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body[:1000])  # small: the kernel takes it at once

        async def open_uploads() -> float | None:
            found, _ = await scrape(registry.url)
            value = found[("txregistry_uploads_open", ())]
            return value if value else None

        assert await wait_until(open_uploads, within=5.0) == 1
        sock.sendall(body[1000:])
        answer_line = await deferToThread(sock.recv, 200)
        assert answer_line.startswith(b"HTTP/1.1 202"), answer_line
    finally:
        sock.close()
    found, _ = await scrape(registry.url)
    assert found[("txregistry_uploads_open", ())] == 0


def in_flight(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str) -> float:
    return found.get(("txregistry_http_requests_in_flight", (("route", route),)), 0.0)


@pytest_twisted.ensureDeferred
async def test_a_client_gone_before_the_answer_is_counted_once_as_499(
    start_registry: Starter,
) -> None:
    """A pull-through manifest GET waits on an upstream that never answers; the client leaves:
    in flight while it waits, then one request with status 499 and nothing left in flight,
    and one access line saying so (as nginx logs a client that closed before the answer)."""
    fake: FakeUpstream = await start_fake_upstream(reactor)
    fake.switches.stall = True
    access: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("access"):
            access.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        registry = await start_registry(
            {"proxy:hub": {"remoteurl": fake.url, "prefix": "docker.io"}}
        )
        before, _ = await scrape(registry.url)
        port = int(registry.url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            path = "/v2/docker.io/library/alpine/manifests/latest"
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

            async def waiting() -> bool:
                found, _ = await scrape(registry.url)
                return in_flight(found, "manifest") == 1

            await wait_until(waiting, within=5.0)
        finally:
            sock.close()
        requests = "txregistry_http_requests_total"

        async def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            found, _ = await scrape(registry.url)
            key = (requests, (("method", "GET"), ("route", "manifest"), ("status", "499")))
            return found if found.get(key) else None

        after = await wait_until(counted, within=5.0)
        assert moved(before, after, requests, method="GET", route="manifest", status="499") == 1
        assert in_flight(after, "manifest") == 0
        duration = "txregistry_http_request_duration_seconds_count"
        assert moved(before, after, duration, method="GET", route="manifest") == 1
        lines = [formatEvent(e) for e in access if e["path"] == path]
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            f"access method=GET path={path} status=499 bytes=0 complete=false duration_ms="
        ), lines
        fake.switches.stall = False
        fake.drop_connections()
    finally:
        globalLogPublisher.removeObserver(observer)
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_an_upload_refused_before_its_body_is_counted(start_registry: Starter) -> None:
    """``Expect: 100-continue`` to an unknown upload: answered 404 at once and the connection
    closed, the body never sent.  Counted as answered, never in flight."""
    registry = await start_registry()
    before, _ = await scrape(registry.url)
    port = int(registry.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        head = (
            "PATCH /v2/app/blobs/uploads/no-such-upload HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        answer_line = await deferToThread(sock.recv, 200)
        assert answer_line.startswith(b"HTTP/1.1 404"), answer_line
    finally:
        sock.close()
    after, _ = await scrape(registry.url)
    requests = "txregistry_http_requests_total"
    assert moved(before, after, requests, method="PATCH", route="upload", status="404") == 1
    assert moved(before, after, "txregistry_http_request_duration_seconds_count",
                 method="PATCH", route="upload") == 1  # fmt: skip
    assert in_flight(after, "upload") == 0
    assert after[("txregistry_uploads_open", ())] == 0


@pytest_twisted.ensureDeferred
async def test_the_debug_listener_answers_an_unknown_sync_with_a_404(
    start_registry: Starter,
) -> None:
    """Not Klein's HTML 500 and a logged traceback: the OCI 404 the main port answers when
    it serves /sync/status (no debug listener)."""
    port = free_port()
    registry = await start_registry({"debug": {"addr": f"tcp:{port}:interface=127.0.0.1"}})
    response, body = await get(f"http://127.0.0.1:{port}/sync/status/nonesuch")
    assert response.code == 404, body
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    expected = {"code": "NOT_FOUND", "message": "no such sync", "detail": {"sync": "nonesuch"}}
    assert json.loads(body) == {"errors": [expected]}
    assert not response.headers.hasHeader(b"server")  # no framework name and version
    response, body = await get(f"http://127.0.0.1:{port}/sync/status")
    assert response.code == 200, body
    assert not response.headers.hasHeader(b"server")
    response, body = await get(f"{registry.url}/sync/status/nonesuch")
    assert response.code == 404  # not served on the main port once the debug listener is


@pytest_twisted.ensureDeferred
async def test_the_health_probe_file_goes_with_the_process(tmp_path: Path) -> None:
    """Named after the process, each start left one more probe file behind (on a shared
    bucket, one per restart and per SIGHUP's new worker)."""
    registry = RegistryProcess(tmp_path, {"http": {"workers": "2"}})
    registry.start()
    try:
        for _ in range(4):  # both workers, most likely
            response = await treq.get(f"{registry.url}/health")
            assert response.code == 200, await response.text()
        folder = registry.workdir / "data" / layout.OWN / "health"
        assert list(folder.iterdir()), "no probe file was written"
    finally:
        registry.stop()
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("retry_after", [7200, None], ids=["retry-after", "no-retry-after"])
@pytest_twisted.ensureDeferred
async def test_a_rate_limit_shows_in_readiness_and_the_metrics(
    start_registry: Starter, retry_after: int | None
) -> None:
    """Docker Hub's 429 on manifest GETs (with Retry-After, or without: held off for
    ``hold_off``): every image not cached is then answered 429 for a while, and readiness
    and the metrics said nothing (its /v2/ answers, and the upstream is not "out").  Now the
    upstream check is degraded with what is held back, and
    ``txregistry_proxy_upstream_rate_limited`` is 1."""
    fake: FakeUpstream = await start_fake_upstream(reactor)
    try:
        fake.content.add_image("library/alpine", "3", [100])
        hub = {"remoteurl": fake.url, "prefix": "docker.io", "hold_off": "1h"}
        registry = await start_registry({"proxy:hub": hub, "health": FAST_HEALTH})
        url = registry.url
        _status, body = await wait_until(lambda: ready_answer(f"{url}/health/ready"))
        assert body["checks"]["upstream:hub"] == {"status": "ok"}
        samples, _ = await scrape(url)
        assert samples[("txregistry_proxy_upstream_rate_limited", (("upstream", "hub"),))] == 0
        fake.switches.ratelimit_remaining = 0
        fake.switches.ratelimit_retry_after = retry_after
        response, _ = await get(f"{url}/v2/docker.io/library/alpine/manifests/3")
        assert response.code == 429
        # The cache asks again after 5 minutes at most, or after hold_off.
        told = "300" if retry_after is not None else "3600"
        assert response.headers.getRawHeaders("Retry-After") == [told]

        async def degraded() -> tuple[int, dict[str, Any]] | None:
            status, body = await answer(f"{url}/health/ready")
            return (status, body) if body["checks"]["upstream:hub"]["status"] != "ok" else None

        status, body = await wait_until(degraded)
        assert status == 200
        check = body["checks"]["upstream:hub"]
        assert check["status"] == "degraded"
        assert check["error"].startswith(
            "the upstream rate-limits this cache: manifest GET not asked for "
        ), check
        samples, _ = await scrape(url)
        assert samples[("txregistry_proxy_upstream_rate_limited", (("upstream", "hub"),))] == 1
        assert samples[("txregistry_proxy_upstream_out", (("upstream", "hub"),))] == 0
    finally:
        await fake.stop()
