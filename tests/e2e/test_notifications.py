"""
Webhook notifications over real sockets: a registry (in this reactor, or ``twistd`` in a child
process for restarts) POSTing to a real receiver that records what it gets, answers 503 or
goes away for a while.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import http.server
import json
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from registry import __version__
from registry.api import mediatypes as mt
from registry.ops.notifications import EVENTS_MEDIA_TYPE, NotificationService, Notifier
from tests.e2e.client import push_blob, sha256, start_upload
from tests.e2e.conftest import Starter
from tests.e2e.harness import (
    InProcessRegistry,
    RegistryProcess,
    sleep,
    start_in_process,
    write_config,
)
from tests.fakes.webhook import WebhookReceiver
from tests.manifests import samples

AGENT = "notify-test/1.0"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest_twisted.async_yield_fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = WebhookReceiver()
    await hook.start()
    yield hook
    await hook.stop()


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def endpoint(url: str, **keys: str) -> dict[str, str]:
    return {"url": url, "timeout": "2s", **keys}


def notifier_of(registry: InProcessRegistry) -> Notifier:
    pending: list[Any] = [registry.service]
    for _ in range(1000):  # the service tree is small; bounded anyway
        if not pending:
            break
        service = pending.pop()
        if isinstance(service, NotificationService):
            return service.notifier
        if isinstance(service, MultiService):
            pending.extend(service)
    raise AssertionError("no notification service")


async def wait_until(condition: Any, within: float = 30.0) -> None:
    """Poll a condition that no receiver sees (the registry's own counters)."""
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await sleep(0.02)
    raise AssertionError("condition not reached")


async def push_small_image(url: str, name: str, tag: str, **headers: str) -> tuple[str, str]:
    """A config blob (one POST) and a manifest naming it: two events. (blob, manifest)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": f"{name}:{tag}"}).encode()
    blob = sha256(config)
    response = await treq.post(
        f"{url}/v2/{name}/blobs/uploads/?digest={blob}", data=config, headers=headers
    )
    assert response.code == 201, await response.text()
    manifest = samples.oci_image(config=config, layers=())
    response = await treq.put(
        f"{url}/v2/{name}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST, **headers},
    )
    assert response.code == 201, await response.text()
    return blob, sha256(manifest)


def check_order(events: list[dict[str, Any]], pushed: dict[str, list[str]]) -> None:
    """Every pushed manifest tag arrived, per repository in push order (first arrivals)."""
    seen: dict[str, list[str]] = {}
    for event in events:
        target = event["target"]
        if event["action"] == "push" and "tag" in target:
            tags = seen.setdefault(target["repository"], [])
            if target["tag"] not in tags:
                tags.append(target["tag"])
    assert seen == pushed


@pytest_twisted.ensureDeferred
async def test_events_for_push_pull_mount_and_delete(
    start_registry: Starter, receiver: WebhookReceiver
) -> None:
    """Each operation gives registry:2's event, with its fields, in order, in the v1 envelope
    with the configured headers.  A HEAD of a manifest by tag is a pull (containerd resolves
    a tag so, then GETs by digest: the tag is in no other request); other HEADs give none."""
    # Port 0: the events' source names the port the registry is bound to.
    registry = await start_registry(
        {
            "storage": {"delete_enabled": "true"},
            "notifications:ci": endpoint(
                receiver.url,
                headers="Authorization: Bearer t0ken\n  X-Team: ci\n  X-Note: café\n  Content-Type: a/b",
            ),
        },
    )
    url, host = registry.url, registry.url.removeprefix("http://")
    ua = {"User-Agent": AGENT}
    config = samples.CONFIG
    layer = samples.LAYER_1
    manifest = samples.oci_image(layers=(layer,))
    config_digest = await push_blob(url, "team/app", config)
    location = await start_upload(url, "team/app")
    response = await treq.put(f"{location}?digest={sha256(layer)}", data=layer, headers=ua)
    assert response.code == 201
    response = await treq.put(
        f"{url}/v2/team/app/manifests/v1",
        data=manifest,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST, **ua},
    )
    assert response.code == 201
    manifest_digest = sha256(manifest)
    response = await treq.head(f"{url}/v2/team/app/manifests/{manifest_digest}", headers=ua)
    assert response.code == 200
    for method in ("HEAD", "GET"):
        response = await treq.request(method, f"{url}/v2/team/app/manifests/v1", headers=ua)
        await response.content()
        assert response.code == 200
        response = await treq.request(
            method, f"{url}/v2/team/app/blobs/{sha256(layer)}", headers=ua
        )
        await response.content()
        assert response.code == 200
    response = await treq.post(
        f"{url}/v2/other/app/blobs/uploads/?mount={sha256(layer)}&from=team/app", headers=ua
    )
    assert response.code == 201
    for path in (
        "team/app/manifests/v1",
        f"team/app/manifests/{manifest_digest}",
        f"team/app/blobs/{config_digest}",
    ):
        response = await treq.delete(f"{url}/v2/{path}", headers=ua)
        assert response.code == 202, await response.text()

    events = await receiver.wait_events(10)
    blob = "application/octet-stream"

    def blob_target(repository: str, data: bytes) -> dict[str, Any]:
        digest = sha256(data)
        return {
            "mediaType": blob,
            "size": len(data),
            "digest": digest,
            "length": len(data),
            "repository": repository,
            "url": f"http://{host}/v2/{repository}/blobs/{digest}",
        }

    manifest_target = {
        "mediaType": mt.OCI_IMAGE_MANIFEST,
        "size": len(manifest),
        "digest": manifest_digest,
        "length": len(manifest),
        "repository": "team/app",
        "url": f"http://{host}/v2/team/app/manifests/{manifest_digest}",
        "tag": "v1",
    }
    expected = [
        ("push", "POST", blob_target("team/app", config)),
        ("push", "PUT", blob_target("team/app", layer)),
        ("push", "PUT", manifest_target),
        ("pull", "HEAD", manifest_target),
        ("pull", "GET", manifest_target),
        ("pull", "GET", blob_target("team/app", layer)),
        ("mount", "POST", {**blob_target("other/app", layer), "fromRepository": "team/app"}),
        ("delete", "DELETE", {"repository": "team/app", "tag": "v1"}),
        ("delete", "DELETE", {"repository": "team/app", "digest": manifest_digest}),
        ("delete", "DELETE", {"repository": "team/app", "digest": config_digest}),
    ]
    assert [(e["action"], e["request"]["method"], e["target"]) for e in events] == expected
    # The target key order is registry:2's (Go marshals struct fields in order).
    assert list(events[2]["target"]) == list(manifest_target)
    sources = {json.dumps(e["source"]) for e in events}
    assert len(sources) == 1
    source = events[0]["source"]
    assert set(source) == {"addr", "instanceID"}
    assert source["addr"] == f"{socket.gethostname()}:{registry.url.rsplit(':', 1)[1]}"
    assert UUID.fullmatch(source["instanceID"])
    assert len({e["id"] for e in events}) == 10
    for event in events:
        assert list(event) == ["id", "timestamp", "action", "target", "request", "actor", "source"]
        assert UUID.fullmatch(event["id"])
        assert STAMP.fullmatch(event["timestamp"])
        assert event["actor"] == {}
        request = event["request"]
        assert list(request) == ["id", "addr", "host", "method", "useragent"]
        assert UUID.fullmatch(request["id"])
        assert re.fullmatch(r"127\.0\.0\.1:\d+", request["addr"])
        assert request["host"] == host
        assert request["useragent"] == (AGENT if event is not events[0] else "")
    for delivery in receiver.deliveries:
        # A configured Content-Type is left out: one, the registry's (registry:2 sends two).
        assert delivery.headers["content-type"] == [EVENTS_MEDIA_TYPE]
        assert delivery.headers["authorization"] == ["Bearer t0ken"]
        assert delivery.headers["x-team"] == ["ci"]
        assert delivery.headers["x-note"] == ["café".encode().decode("latin-1")]  # UTF-8
        assert delivery.headers["user-agent"] == [f"txregistry/{__version__}"]
        assert delivery.body.startswith(b'{"events":[{"id":"')
    notifier = notifier_of(registry)
    await wait_until(lambda: notifier.stats()["ci"]["pending"] == 0)  # the answer was read
    assert notifier.stats() == {
        "ci": {"pending": 0, "delivered": 10, "failed": 0, "errors": 0, "dropped": 0}
    }
    response = await treq.get(f"{url}/metrics")
    assert response.code == 200
    scraped = {
        (sample.name, sample.labels.get("endpoint")): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
        if sample.name.startswith("txregistry_notifications_")
    }
    assert scraped == {
        ("txregistry_notifications_pending", "ci"): 0.0,
        ("txregistry_notifications_delivered_total", "ci"): 10.0,
        ("txregistry_notifications_failed_total", "ci"): 0.0,
        ("txregistry_notifications_errors_total", "ci"): 0.0,
        ("txregistry_notifications_dropped_total", "ci"): 0.0,
    }


@pytest_twisted.ensureDeferred
async def test_actor_is_the_authenticated_user(
    start_registry: Starter, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    password = "alice-secret-pw"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"alice:{hashed}\n")
    (tmp_path / "policy.toml").write_text(
        '[[rule]]\nusers = ["alice"]\nrepositories = ["**"]\nactions = ["*"]\n'
    )
    registry = await start_registry(
        {
            "auth": {"policy": str(tmp_path / "policy.toml")},
            "auth.htpasswd": {"path": str(tmp_path / "htpasswd")},
            "notifications:ci": endpoint(receiver.url),
        }
    )
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    await push_small_image(registry.url, "team/app", "v1", Authorization=f"Basic {token}")
    events = await receiver.wait_events(2)
    assert [e["actor"] for e in events] == [{"name": "alice"}, {"name": "alice"}]
    notifier = notifier_of(registry)
    await wait_until(lambda: notifier.stats()["ci"]["pending"] == 0)


@pytest_twisted.ensureDeferred
async def test_request_addr_and_host_from_a_trusted_proxy(
    start_registry: Starter, receiver: WebhookReceiver
) -> None:
    """Behind a trusted reverse proxy, events name the client and the host it used; the same
    headers from an untrusted peer are ignored."""
    proxied = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Host": "registry.example:443",
        "X-Forwarded-Proto": "https",
    }
    trusting = await start_registry(
        {
            "http": {"trusted_proxies": "127.0.0.1", "relativeurls": "false"},
            "notifications:ci": endpoint(receiver.url),
        }
    )
    blob, manifest = await push_small_image(trusting.url, "team/app", "v1", **proxied)
    events = await receiver.wait_events(2)
    assert [e["request"]["addr"] for e in events] == ["203.0.113.9", "203.0.113.9"]
    assert [e["request"]["host"] for e in events] == ["registry.example:443"] * 2
    # The URL the client would use, as the absolute Location the push was answered with.
    assert [e["target"]["url"] for e in events] == [
        f"https://registry.example:443/v2/team/app/blobs/{blob}",
        f"https://registry.example:443/v2/team/app/manifests/{manifest}",
    ]
    notifier = notifier_of(trusting)
    await wait_until(lambda: notifier.stats()["ci"]["pending"] == 0)
    await trusting.stop()

    untrusting = await start_registry({"notifications:ci": endpoint(receiver.url)})
    await push_small_image(untrusting.url, "team/lib", "v1", **proxied)
    events = (await receiver.wait_events(4))[2:]
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", e["request"]["addr"]) for e in events), events
    direct_host = untrusting.url.removeprefix("http://")
    assert [e["request"]["host"] for e in events] == [direct_host, direct_host]


@pytest_twisted.ensureDeferred
async def test_a_delete_by_digest_notifies_the_tags_it_removed(
    start_registry: Starter, receiver: WebhookReceiver
) -> None:
    """As registry:2: the digest's delete event, then one delete event per tag that pointed at
    it, so that a receiver tracking tags forgets them (here too when a tag was added by a
    ``?tag=`` of another push)."""
    registry = await start_registry(
        {"storage": {"delete_enabled": "true"}, "notifications:ci": endpoint(receiver.url)}
    )
    url = registry.url
    _, digest = await push_small_image(url, "team/app", "a")
    _, other = await push_small_image(url, "team/app", "keep")
    manifest = await treq.get(
        f"{url}/v2/team/app/manifests/a", headers={"Accept": mt.OCI_IMAGE_MANIFEST}
    )
    body = await manifest.content()
    response = await treq.put(
        f"{url}/v2/team/app/manifests/{digest}?tag=b&tag=c",
        data=body,
        headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
    )
    assert response.code == 201, await response.text()
    pushed = len(await receiver.wait_events(7))  # 2 + 2 pushes, a pull, b and c
    response = await treq.delete(f"{url}/v2/team/app/manifests/{digest}")
    assert response.code == 202, await response.text()
    events = (await receiver.wait_events(pushed + 4))[pushed:]
    targets = [(e["action"], e["target"]) for e in events]
    assert targets[0] == ("delete", {"repository": "team/app", "digest": digest})
    assert sorted(targets[1:], key=lambda t: t[1]["tag"]) == [
        ("delete", {"repository": "team/app", "tag": tag}) for tag in ("a", "b", "c")
    ]
    response = await treq.get(f"{url}/v2/team/app/tags/list")
    assert json.loads(await response.content())["tags"] == ["keep"]
    assert other != digest


@pytest_twisted.ensureDeferred
async def test_a_delete_in_the_ui_notifies_as_the_api(
    start_registry: Starter, receiver: WebhookReceiver
) -> None:
    """The UI's delete button deletes through the same path as the API's DELETE: the
    receiver hears of it the same way (the request's method is the form's POST)."""
    registry = await start_registry(
        {"storage": {"delete_enabled": "true"}, "notifications:ci": endpoint(receiver.url)}
    )
    url = registry.url
    _, digest = await push_small_image(url, "team/app", "v1")
    await receiver.wait_events(2)
    page = await treq.get(f"{url}/ui/r/team/app/-/manifest/{digest}")
    found = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert page.code == 200 and found is not None
    response = await treq.post(
        f"{url}/ui/r/team/app/-/delete",
        data={"reference": digest, "csrf": html.unescape(found.group(1))},
        headers={"Origin": url},
        allow_redirects=False,
    )
    assert response.code == 303, await response.text()
    events = (await receiver.wait_events(4))[2:]
    assert [(e["action"], e["request"]["method"], e["target"]) for e in events] == [
        ("delete", "POST", {"repository": "team/app", "digest": digest}),
        ("delete", "POST", {"repository": "team/app", "tag": "v1"}),
    ]


@pytest_twisted.ensureDeferred
async def test_receiver_failing_then_down_then_back(
    start_registry: Starter, receiver: WebhookReceiver, captured_logs: list[str]
) -> None:
    """503s and refused connections are retried with backoff; once the receiver is back every
    event arrives once, in order, with a unique id; one log line per failed POST."""
    registry = await start_registry(
        {
            "notifications:flaky": endpoint(
                receiver.url, threshold="2", backoff="20ms", maxbackoff="100ms", maxbatch="3"
            )
        }
    )
    notifier = notifier_of(registry)
    receiver.status = 503
    pushed: dict[str, list[str]] = {"a": [], "b": []}
    await push_small_image(registry.url, "a", "t0")
    pushed["a"].append("t0")
    await receiver.wait_for(lambda: receiver.refused >= 3)
    await receiver.stop()
    await wait_until(lambda: notifier.stats()["flaky"]["errors"] >= 2)
    for i in range(1, 6):
        for name in ("a", "b"):
            await push_small_image(registry.url, name, f"t{i}")
            pushed[name].append(f"t{i}")
    assert receiver.events == []
    receiver.status = 200
    await receiver.start()
    events = await receiver.wait_events(22)
    await wait_until(lambda: notifier.stats()["flaky"]["pending"] == 0)
    assert len(events) == 22
    assert len({e["id"] for e in events}) == 22
    check_order(events, pushed)
    assert all(len(d.events) <= 3 for d in receiver.deliveries)
    stats = notifier.stats()["flaky"]
    assert stats["delivered"] == 22 and stats["pending"] == 0 and stats["dropped"] == 0
    assert stats["failed"] >= 2 and stats["errors"] >= 2  # the 3rd 503 may be cut off
    failures = [line for line in captured_logs if "POST to flaky failed" in line]
    assert len(failures) == stats["failed"] + stats["errors"], failures
    assert any("status 503" in line for line in failures)
    assert any("ConnectionRefused" in line for line in failures)
    assert sum("flaky accepts events again" in line for line in captured_logs) == 1


@pytest_twisted.ensureDeferred
async def test_ignored_media_types_and_actions(
    start_registry: Starter, receiver: WebhookReceiver
) -> None:
    everything = WebhookReceiver()
    await everything.start()
    try:
        registry = await start_registry(
            {
                "notifications:all": endpoint(everything.url),
                "notifications:ci": endpoint(
                    receiver.url,
                    ignoredmediatypes="application/octet-stream",
                    ignore_actions="pull",
                ),
            }
        )
        await push_small_image(registry.url, "app", "v1")
        response = await treq.get(f"{registry.url}/v2/app/manifests/v1")
        await response.content()
        await push_small_image(registry.url, "app", "v2")  # the last event, for both
        await everything.wait_events(5)
        events = await receiver.wait_events(2)
        assert [(e["action"], e["target"]["tag"]) for e in events] == [
            ("push", "v1"),
            ("push", "v2"),
        ]
        assert [e["action"] for e in everything.events] == ["push", "push", "pull", "push", "push"]
    finally:
        await everything.stop()


@pytest_twisted.ensureDeferred
async def test_queue_bound_drops_oldest_and_survives_restart(
    receiver: WebhookReceiver, tmp_path: Path, captured_logs: list[str]
) -> None:
    """With maxevents = 3 and the receiver failing, the oldest events are dropped (counted,
    logged once); the 3 newest are kept on disk and delivered after a restart."""
    sections = {
        "storage": {"rootdirectory": str(tmp_path / "shared")},
        "notifications:ci": endpoint(
            receiver.url, maxevents="3", threshold="1", backoff="60s", maxbackoff="60s"
        ),
    }
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    registry = await start_in_process(tmp_path / "first", sections)
    try:
        notifier = notifier_of(registry)
        receiver.status = 503
        blobs = [await push_blob(registry.url, "app", b"blob-0")]
        await wait_until(lambda: notifier.stats()["ci"]["failed"] == 1)  # now pausing 60 s
        for i in range(1, 6):
            blobs.append(await push_blob(registry.url, "app", f"blob-{i}".encode()))
        assert notifier.stats()["ci"] == {
            "pending": 3,
            "delivered": 0,
            "failed": 1,
            "errors": 0,
            "dropped": 3,
        }
        assert sum("queue full" in line for line in captured_logs) == 1
    finally:
        await registry.stop()
    receiver.status = 200
    registry = await start_in_process(tmp_path / "second", sections)
    try:
        events = await receiver.wait_events(3)
        assert [e["target"]["digest"] for e in events] == blobs[3:]
        await wait_until(lambda: notifier_of(registry).stats()["ci"]["delivered"] == 3)
    finally:
        await registry.stop()
    queue_file = tmp_path / "shared" / "notifications" / "ci.log"
    assert queue_file.read_bytes() == b""  # compacted at stop: nothing pending


def _pushes_in_process(url: str, images: list[tuple[str, str]]) -> None:
    """Push from a thread with http.client (the child registry runs in its own process)."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    for name, tag in images:
        config = json.dumps({"os": "linux", "tag": f"{name}:{tag}"}).encode()
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        connection.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", body=config)
        response = connection.getresponse()
        response.read()
        assert response.status == 201
        manifest = samples.oci_image(config=config, layers=())
        connection.request(
            "PUT",
            f"/v2/{name}/manifests/{tag}",
            body=manifest,
            headers={"Content-Type": mt.OCI_IMAGE_MANIFEST},
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 201
    connection.close()


async def push_images(url: str, images: list[tuple[str, str]]) -> None:
    from twisted.internet.threads import deferToThread

    await deferToThread(_pushes_in_process, url, images)


def events_on_disk(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(line.startswith(b"E ") for line in log.read_bytes().splitlines())


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
@pytest_twisted.ensureDeferred
async def test_restart_while_receiver_is_down(
    tmp_path: Path, receiver: WebhookReceiver, stop_signal: int
) -> None:
    """``twistd`` restarted (cleanly, or killed once the events are on disk) while the
    receiver is down: nothing is lost, order per repository holds, ids are unique."""
    server = RegistryProcess(
        tmp_path,
        {
            # One process: one queue file to watch, and one order per repository (with
            # several workers each has its own queue: docs/operations.md).
            "http": {"workers": "1"},
            "notifications": {"flush_interval": "20ms"},
            "notifications:ci": endpoint(
                receiver.url, threshold="1", backoff="50ms", maxbackoff="200ms"
            ),
        },
    )
    queue_file = tmp_path / "data" / "notifications" / "ci.log"
    pushed: dict[str, list[str]] = {"x": [], "y": []}

    def images(first: int, last: int) -> list[tuple[str, str]]:
        batch = [(name, f"t{i}") for i in range(first, last) for name in ("x", "y")]
        for name, tag in batch:
            pushed[name].append(tag)
        return batch

    server.start()
    try:
        await push_images(server.url, images(0, 3))
        await receiver.wait_events(12)
        await receiver.stop()
        await push_images(server.url, images(3, 6))
        if stop_signal == signal.SIGKILL:
            # kill -9 loses what was accepted in the last flush_interval: wait until written.
            await wait_until(lambda: events_on_disk(queue_file) >= 24)
        server.stop(stop_signal)
        server.start()
        await push_images(server.url, images(6, 8))
        await receiver.start()
        await receiver.wait_for(lambda: len({e["id"] for e in receiver.events}) >= 32)
        events = receiver.events
    finally:
        server.stop()
    log = server.log_text()
    assert "Traceback" not in log
    assert "undelivered events read back" in log
    assert len({e["id"] for e in events}) == 32
    if stop_signal == signal.SIGTERM:
        assert len(events) == 32  # a clean stop writes every acknowledgement
    check_order(events, pushed)
    instances = [e["source"]["instanceID"] for e in events]
    assert len(set(instances)) == 2


async def _stop_without_blocking(
    server: RegistryProcess, sig: int, then: int | None = None
) -> tuple[int, float]:
    """Signal the child (``then`` too, half a second later) and wait for it in a thread (the
    receiver answers in this reactor meanwhile): (its exit status, seconds it took)."""
    process = server.process
    assert process is not None
    began = time.monotonic()
    server.send_stop(sig)
    if then is not None:
        await sleep(0.5)
        process.send_signal(then)
    await deferToThread(server.wait_stopped)
    return process.returncode, time.monotonic() - began


@pytest_twisted.ensureDeferred
async def test_a_clean_stop_waits_for_the_post_in_flight(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """
    SIGTERM while a POST was in flight abandoned it: its events stayed queued and the next
    start sent them again, though the receiver had them (the reviewer: a receiver taking
    0.8 s, SIGTERM 0.45 s after a push, 6 events received for 3 ids).  A clean stop "writes
    everything": now it waits for that POST (bounded by the endpoint's timeout), drops the
    events it delivered before writing the queue, and starts no other POST; the next start
    sends only what was not delivered.
    """
    receiver.delay = 0.8
    server = RegistryProcess(
        tmp_path,
        {"http": {"workers": "1"}, "notifications:ci": endpoint(receiver.url, timeout="1s")},
    )
    queue_file = tmp_path / "data" / "notifications" / "ci.log"
    server.start()
    try:
        await push_images(server.url, [("team/app", "v1")])
        await receiver.wait_for(lambda: receiver.posts == 1)  # in flight: answered in 0.8 s
        status, took = await _stop_without_blocking(server, signal.SIGTERM)
        assert status == 0
        assert took < 5.0
        await receiver.wait_for(lambda: len(receiver.events) >= 1)
        assert receiver.posts == 1  # no POST after the one in flight
        taken, queued = len(receiver.events), events_on_disk(queue_file)
        receiver.delay = 0.0
        # Waited for in a thread: on this one it would hold the receiver (this process's
        # reactor) while the restarted server delivers, past the endpoint's 1 s timeout.
        server.launch()
        await deferToThread(server.wait_serving)
        await receiver.wait_for(lambda: len(receiver.events) >= 2)
        await sleep(0.5)  # a duplicate would come now
    finally:
        server.stop()
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == 2, ids
    # What the receiver took was done at the stop; only the rest (a second batch) was written.
    assert taken + queued == 2, (taken, queued)
    log = server.log_text()
    assert "Traceback" not in log
    assert "POST to ci failed" not in log


@pytest.mark.parametrize(
    ("signals", "status", "http"),
    [
        pytest.param((signal.SIGTERM, None), 0, {"draintimeout": "1s"}, id="drain-deadline"),
        pytest.param((signal.SIGQUIT, None), 128 + signal.SIGQUIT, {}, id="cut"),
        pytest.param(
            (signal.SIGTERM, signal.SIGQUIT), 128 + signal.SIGQUIT, {}, id="cut-while-waiting"
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_wait_for_a_post_in_flight_ends_with_the_drain(
    tmp_path: Path,
    receiver: WebhookReceiver,
    signals: tuple[int, int | None],
    status: int,
    http: dict[str, str],
) -> None:
    """
    An endpoint that does not answer, with a 30 s timeout: the stop waits for its POST no
    longer than the drain may take (``draintimeout`` from the signal; nothing after a SIGQUIT,
    which stops at once, also once the stop waits already), so that the process still exits
    before a supervisor or service manager kills it.  The POST's events stay queued and go
    after the restart.
    """
    receiver.hang = True
    server = RegistryProcess(
        tmp_path,
        {
            "http": {"workers": "1", **http},
            "notifications:ci": endpoint(receiver.url, timeout="30s"),
        },
    )
    queue_file = tmp_path / "data" / "notifications" / "ci.log"
    server.start()
    try:
        await push_images(server.url, [("team/app", "v1")])
        await receiver.wait_for(lambda: receiver.refused == 1)
        await wait_until(lambda: events_on_disk(queue_file) == 2)
        exit_status, took = await _stop_without_blocking(server, *signals)
        assert exit_status == status
        assert took < 8.0
        assert events_on_disk(queue_file) == 2
        receiver.hang = False
        server.start()
        await receiver.wait_for(lambda: len(receiver.events) >= 2)
        await sleep(0.3)
    finally:
        server.stop()
    assert len({e["id"] for e in receiver.events}) == len(receiver.events) == 2
    assert "Traceback" not in server.log_text()


@pytest_twisted.ensureDeferred
async def test_queues_of_workers_that_no_longer_run_are_adopted(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """Events queued by worker 1 (receiver down, ``workers = 2``) were never delivered after
    a restart with ``workers = 1``: no process read ``ci.worker1.log`` and nothing said so.
    Now worker 0 adopts the file at start-up (one line names it) and every event arrives,
    exactly once."""
    sections: dict[str, dict[str, str]] = {
        "http": {"workers": "2"},
        "notifications": {"flush_interval": "20ms"},
        "notifications:ci": endpoint(receiver.url, threshold="1", backoff="50ms"),
    }
    server = RegistryProcess(tmp_path, sections)
    folder = tmp_path / "data" / "notifications"
    await receiver.stop()
    server.start()
    try:
        # Two connections open at once, an image each: the balance splits them between the
        # workers (one after another, both may go to the same worker).  Rounds go on until
        # worker 1 has queued events (bounded), or there would be nothing to adopt.
        pushed = 0
        for _ in range(60):
            if pushed >= 40 and events_on_disk(folder / "ci.worker1.log") > 0:
                break
            names = [(f"r{pushed}", "t"), (f"r{pushed + 1}", "t")]
            await gatherResults(
                [Deferred.fromCoroutine(push_images(server.url, [name])) for name in names]
            )
            pushed += 2
        failed = re.compile(r"notifications: POST to ci \(worker [01]\) failed: ")
        await wait_until(lambda: failed.search(server.log_text()) is not None)
        server.stop(signal.SIGTERM)
        queued = events_on_disk(folder / "ci.log"), events_on_disk(folder / "ci.worker1.log")
        assert sum(queued) == 2 * pushed and queued[1] > 0, (queued, pushed)
        sections["http"]["workers"] = "1"
        write_config(server.config, sections)
        server.start()
        await receiver.start()
        await receiver.wait_for(lambda: len(receiver.events) >= 2 * pushed)
        await sleep(0.3)  # a duplicate would come now
    finally:
        server.stop()
    assert len(receiver.events) == 2 * pushed
    assert len({e["id"] for e in receiver.events}) == 2 * pushed
    assert not (folder / "ci.worker1.log").exists()
    log = server.log_text()
    assert "Traceback" not in log
    # Each worker counted its own failures in a row: its lines say which worker it was
    # (waited for above; which worker tried a POST first depends on when each got events).
    assert (
        f"notifications: {queued[1]} undelivered events adopted from ci.worker1.log"
        f" ({queued[1]}) (queues of workers beyond [http] workers) into {folder}/ci.log"
    ) in log


class _Http10Receiver(http.server.BaseHTTPRequestHandler):
    """Python's own HTTP/1.0 server (what a quick webhook script is): it closes the
    connection after each answer without saying so.  The first POST waits for ``go``, so the
    events behind it are sent back to back once it is answered."""

    bodies: list[bytes] = []
    go = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.bodies:
            self.go.wait(30)
        self.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http10_receiver() -> Iterator[tuple[str, type[_Http10Receiver]]]:
    handler = type("Handler", (_Http10Receiver,), {"bodies": [], "go": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events", handler
    finally:
        handler.go.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest_twisted.ensureDeferred
async def test_an_http10_endpoint_gets_each_post_on_a_new_connection(
    start_registry: Starter, http10_receiver: tuple[str, type[_Http10Receiver]]
) -> None:
    """Each POST to an endpoint answering in HTTP/1.0 reaches it: none is sent into the
    connection the endpoint closed after its last answer (lost, counted as an error)."""
    url, handler = http10_receiver
    registry = await start_registry({"notifications:old": endpoint(url, maxbatch="1")})
    for index in range(3):
        await push_small_image(registry.url, f"team/app{index}", "v1")
    handler.go.set()  # five events queued behind the first: sent one after the other
    notifier = notifier_of(registry)
    await wait_until(lambda: notifier.stats()["old"]["delivered"] == 6)
    assert notifier.stats()["old"] == {
        "pending": 0,
        "delivered": 6,
        "failed": 0,
        "errors": 0,
        "dropped": 0,
    }
    assert len(handler.bodies) == 6


@pytest_twisted.ensureDeferred
async def test_a_long_user_agent_is_cut_in_events(
    start_registry: Starter, receiver: WebhookReceiver
) -> None:
    """A client's User-Agent up to the header limit (16 KiB) was copied whole into every event
    queued, in memory and in the queue's log: about 18 times the size the docs bound."""
    registry = await start_registry({"notifications:ci": endpoint(receiver.url)})
    agent = "docker/27.0 " + "A" * 16_000
    await push_small_image(registry.url, "team/app", "v1", **{"User-Agent": agent})
    events = await receiver.wait_events(2)
    assert [e["request"]["useragent"] for e in events] == [agent[:256]] * 2
    notifier = notifier_of(registry)
    await wait_until(lambda: notifier.stats()["ci"]["pending"] == 0)


class _ClosingReceiver:
    """Reads each POST's head, then closes the connection without answering."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.closed = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for _ in range(1000):  # bounded: the test stops it well before
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                with contextlib.suppress(OSError):
                    connection.recv(65536)
                self.closed += 1

    def stop(self) -> None:
        self.listener.close()
        self._thread.join(timeout=10)


@pytest_twisted.ensureDeferred
async def test_an_endpoint_closing_without_an_answer_is_said_in_words(
    start_registry: Starter, captured_logs: list[str]
) -> None:
    closing = _ClosingReceiver()
    try:
        registry = await start_registry(
            {"notifications:a": endpoint(closing.url, backoff="50ms", maxbackoff="100ms")}
        )
        await push_small_image(registry.url, "team/app", "v1")
        notifier = notifier_of(registry)
        await wait_until(lambda: notifier.stats()["a"]["errors"] >= 1)
    finally:
        closing.stop()
    failures = [line for line in captured_logs if "POST to a failed" in line]
    assert failures, captured_logs
    assert failures[0].startswith(
        "notifications: POST to a failed: the endpoint closed the connection without an"
        " answer; 2 events pending, failure 1 in a row"
    ), failures
    assert not any("<twisted" in line for line in failures), failures
