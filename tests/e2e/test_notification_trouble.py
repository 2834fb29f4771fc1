"""
Notifications when something around them is wrong: a damaged queue file, a receiver that
redirects or never answers, a queue folder that goes away, a backlog above a lowered bound,
credentials in the endpoint's URL.  Real registry, real receiver, real files.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.client import push_blob
from tests.e2e.conftest import Starter
from tests.e2e.harness import sleep, start_in_process
from tests.e2e.test_notifications import (
    captured_logs,  # noqa: F401 (a fixture)
    endpoint,
    notifier_of,
    push_small_image,
    receiver,  # noqa: F401 (a fixture)
    wait_until,
)
from tests.fakes.webhook import WebhookReceiver


def _event(n: int) -> bytes:
    return json.dumps({"id": f"old-{n}", "action": "push", "target": {"tag": f"t{n}"}}).encode()


@pytest_twisted.ensureDeferred
async def test_damaged_queue_lines_are_skipped_and_said_once(
    tmp_path: Path,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
) -> None:
    """A hand-truncated event would make every envelope invalid JSON, and a done range of
    10**11 events kept the loader busy for good: both are skipped, and what follows works."""
    root = tmp_path / "data"
    (root / "notifications").mkdir(parents=True)
    (root / "notifications" / "ci.log").write_bytes(
        b'E 1 {"id":"x", truncated-by-hand\n'
        b"E 2 " + _event(2) + b"\n"
        b"D 2 100000000000\n"
        b"E 3 " + _event(3) + b"\n"
    )
    sections = {
        "storage": {"rootdirectory": str(root)},
        "notifications:ci": endpoint(receiver.url),
    }
    (tmp_path / "run").mkdir()
    registry = await start_in_process(tmp_path / "run", sections)
    try:
        await push_small_image(registry.url, "team/app", "v1")
        events = await receiver.wait_events(4)
        assert [e["id"] for e in events[:2]] == ["old-2", "old-3"]
        assert [e["action"] for e in events[2:]] == ["push", "push"]
        for delivery in receiver.deliveries:
            json.loads(delivery.body)  # every envelope is JSON
        notifier = notifier_of(registry)
        await wait_until(lambda: notifier.stats()["ci"]["delivered"] == 4)
    finally:
        await registry.stop()
    damaged = [line for line in captured_logs if "damaged lines skipped" in line]
    assert damaged == [f"notifications: {root}/notifications/ci.log: 2 damaged lines skipped"]


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_a_failure_that_says_where_it_pointed(
    start_registry: Starter,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
) -> None:
    """Counted as delivered, the events would be lost without a word (nothing is sent to
    the redirect's target, which nobody configured)."""
    elsewhere = WebhookReceiver()
    await elsewhere.start()
    try:
        receiver.status, receiver.location = 307, elsewhere.url
        registry = await start_registry(
            {
                "notifications:ci": endpoint(
                    receiver.url, threshold="1", backoff="60s", maxbackoff="60s"
                )
            }
        )
        await push_small_image(registry.url, "team/app", "v1")
        notifier = notifier_of(registry)
        await wait_until(lambda: notifier.stats()["ci"]["failed"] == 1)
        assert notifier.stats()["ci"] == {
            "pending": 2,
            "delivered": 0,
            "failed": 1,
            "errors": 0,
            "dropped": 0,
        }
        assert elsewhere.deliveries == [] and receiver.deliveries == []
        [line] = [line for line in captured_logs if "POST to ci failed" in line]
        assert f"status 307, a redirect to {elsewhere.url} (not followed" in line
        # The metrics say the same, in numbers and in their help text.
        response = await treq.get(f"{registry.url}/metrics")
        families = {
            family.name: family
            for family in text_string_to_metric_families(await response.text())
            if family.name.startswith("txregistry_notifications_")
        }
        failed = families["txregistry_notifications_failed"]
        assert [s.value for s in failed.samples if s.name.endswith("_total")] == [1.0]
        assert "anything but a 2xx status" in failed.documentation
        delivered = families["txregistry_notifications_delivered"]
        assert "(a 2xx status)" in delivered.documentation
    finally:
        await elsewhere.stop()


@pytest_twisted.ensureDeferred
async def test_no_answer_in_time_is_said_in_words(
    start_registry: Starter,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
) -> None:
    receiver.hang = True
    registry = await start_registry(
        {
            "notifications:ci": endpoint(
                receiver.url, timeout="200ms", threshold="1", backoff="60s", maxbackoff="60s"
            )
        }
    )
    await push_small_image(registry.url, "team/app", "v1")
    notifier = notifier_of(registry)
    await wait_until(lambda: notifier.stats()["ci"]["errors"] == 1)
    [line] = [line for line in captured_logs if "POST to ci failed" in line]
    assert "POST to ci failed: no answer within 0.2 s; 2 events pending" in line


@pytest_twisted.ensureDeferred
async def test_credentials_in_the_url_go_as_basic_auth_and_are_never_logged(
    start_registry: Starter,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
) -> None:
    """And so is a ``?token=`` in the query (another common way to authenticate a webhook),
    which is sent as it is."""
    with_password = receiver.url.replace("http://", "http://hook:s3cretpw@")
    query = "?access_token=querysecret&team=ci"
    registry = await start_registry({"notifications:ci": endpoint(with_password + query)})
    await push_small_image(registry.url, "team/app", "v1")
    await receiver.wait_events(2)
    expected = "Basic " + base64.b64encode(b"hook:s3cretpw").decode()
    assert {d.header("authorization") for d in receiver.deliveries} == {expected}
    response_lines = "\n".join(captured_logs)
    assert "s3cretpw" not in response_lines and "querysecret" not in response_lines
    assert f"notifications to ci ({receiver.url}?access_token=***&team=ci)" in response_lines


@pytest_twisted.ensureDeferred
async def test_a_queue_folder_that_goes_away_is_said_once_and_recovers(
    tmp_path: Path,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
) -> None:
    """Each flush (every 20 ms here) fails while the folder is gone: one line when writing
    stops working, one when it works again, no traceback; the events are delivered."""
    root = tmp_path / "data"
    folder = root / "notifications"
    sections = {
        "storage": {"rootdirectory": str(root)},
        "notifications": {"flush_interval": "20ms"},
        "notifications:ci": endpoint(receiver.url, threshold="1", backoff="60s", maxbackoff="60s"),
    }
    receiver.status = 503
    (tmp_path / "run").mkdir()
    registry = await start_in_process(tmp_path / "run", sections)
    try:
        notifier = notifier_of(registry)
        os.rename(folder, root / "gone")
        await push_small_image(registry.url, "team/app", "v1")
        await wait_until(lambda: any("cannot write" in line for line in captured_logs))
        await sleep(0.3)  # many more flushes fail
        os.rename(root / "gone", folder)
        await wait_until(lambda: any("writing" in line for line in captured_logs))
        assert (folder / "ci.log").read_bytes().count(b"\nE ") + 1 >= 2
        assert notifier.stats()["ci"]["pending"] == 2
    finally:
        await registry.stop()
    failing = [line for line in captured_logs if "cannot write" in line]
    assert failing == [
        f"notifications: cannot write {folder}/ci.log: No such file or directory; events are"
        " kept in memory (up to maxevents) and written once it works again"
    ]
    assert [line for line in captured_logs if "notifications: writing" in line] == [
        f"notifications: writing {folder}/ci.log works again"
    ]


@pytest_twisted.ensureDeferred
async def test_a_backlog_above_a_lowered_maxevents_is_dropped_and_counted(
    tmp_path: Path,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
) -> None:
    root = tmp_path / "data"
    (root / "notifications").mkdir(parents=True)
    (root / "notifications" / "ci.log").write_bytes(
        b"".join(b"E %d %s\n" % (n, _event(n)) for n in range(1, 6))
    )
    sections = {
        "storage": {"rootdirectory": str(root)},
        "notifications:ci": endpoint(receiver.url, maxevents="2"),
    }
    (tmp_path / "run").mkdir()
    registry = await start_in_process(tmp_path / "run", sections)
    try:
        events = await receiver.wait_events(2)
        assert [e["id"] for e in events] == ["old-4", "old-5"]
        notifier = notifier_of(registry)
        await wait_until(lambda: notifier.stats()["ci"]["delivered"] == 2)
        assert notifier.stats()["ci"]["dropped"] == 3
    finally:
        await registry.stop()
    assert any(
        "3 oldest events dropped (more than maxevents 2 were waiting)" in line
        for line in captured_logs
    )


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param((16 * 1024, 0.005), id="fast"),  # past the 64 KiB read at once
        pytest.param((100, 0.05), id="slow"),  # a trickle: the timeout ends it
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_answer_body_that_never_ends_is_cut_off(
    start_registry: Starter,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
    stream: tuple[int, float],
) -> None:
    """A 200 whose body streams on: the registry read it all into memory, and the timeout
    left the connection reading.  Now the 2xx status delivers the events (as documented),
    the registry reads a bounded part of the body and closes the connection (the receiver
    sees it go before the body ended), and the next POST works."""
    receiver.endless = stream
    registry = await start_registry(
        {"notifications:ci": endpoint(receiver.url, timeout="2s", maxbackoff="1s")}
    )
    notifier = notifier_of(registry)
    await push_small_image(registry.url, "team/app", "v1")
    await receiver.wait_events(2)
    await wait_until(lambda: notifier.stats()["ci"]["delivered"] == 2, within=10.0)
    # The two events went in one POST, or in two when the manifest came more than batchwait
    # after the blob: every one of those answers was cut.
    endless = len(receiver.deliveries)
    assert endless in (1, 2)
    await receiver.wait_for(lambda: receiver.cut == endless, within=10.0)
    receiver.endless = None
    await push_small_image(registry.url, "team/app", "v2")
    events = await receiver.wait_events(4, within=5.0)
    assert [e["target"].get("tag") for e in events] == [None, "v1", None, "v2"]
    await wait_until(lambda: notifier.stats()["ci"]["delivered"] == 4, within=5.0)
    assert notifier.stats()["ci"] == {
        "pending": 0,
        "delivered": 4,
        "failed": 0,
        "errors": 0,
        "dropped": 0,
    }
    assert receiver.cut == endless and len(receiver.deliveries) > endless
    assert not [line for line in captured_logs if "POST to ci failed" in line]


@pytest_twisted.ensureDeferred
async def test_overflow_while_the_whole_queue_is_in_flight_drops_the_oldest(
    start_registry: Starter,
    receiver: WebhookReceiver,  # noqa: F811
) -> None:
    """maxevents (3) below maxbatch, the endpoint not answering: the POST under way holds the
    whole queue, and the events pushed meanwhile were dropped (the newest).  Now they are kept
    while that POST may still deliver; once it failed, its events (the oldest) go."""
    receiver.hang = True
    registry = await start_registry(
        {
            "notifications:ci": endpoint(
                receiver.url,
                maxevents="3",
                batchwait="0",
                threshold="2",
                backoff="300ms",
                maxbackoff="300ms",
            )
        }
    )
    notifier = notifier_of(registry)
    blobs = [await push_blob(registry.url, "app", b"blob-0")]
    await receiver.wait_for(lambda: receiver.refused == 1)  # [0] in flight
    for i in (1, 2):
        blobs.append(await push_blob(registry.url, "app", f"blob-{i}".encode()))
    # The first POST times out; the retry (at once: threshold 2) holds all 3 events.
    await receiver.wait_for(lambda: receiver.refused == 2)
    for i in (3, 4, 5):
        blobs.append(await push_blob(registry.url, "app", f"blob-{i}".encode()))
    await wait_until(lambda: notifier.stats()["ci"]["errors"] == 2)
    assert notifier.stats()["ci"]["dropped"] == 3
    receiver.hang = False
    events = await receiver.wait_events(3)
    assert [e["target"]["digest"] for e in events] == blobs[3:]
    await wait_until(lambda: notifier.stats()["ci"]["pending"] == 0)
    assert notifier.stats()["ci"]["delivered"] == 3


@pytest_twisted.ensureDeferred
async def test_a_stop_during_a_post_abandons_it_without_a_failure_or_another_post(
    start_registry: Starter,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
) -> None:
    """A clean stop waits for the POST under way no longer than the drain's deadline (here
    0.5 s, where the POST's own timeout is 30 s), then cancels it: not an endpoint error, no
    warning, and no further POST of the same events (they stay queued for the next start)."""
    receiver.hang = True
    registry = await start_registry(
        {
            "http": {"draintimeout": "500ms"},
            "notifications:ci": endpoint(receiver.url, timeout="30s", threshold="5"),
        }
    )
    await push_small_image(registry.url, "team/app", "v1")
    notifier = notifier_of(registry)
    await wait_until(lambda: receiver.refused == 1)
    began = time.monotonic()
    await registry.stop()
    assert time.monotonic() - began < 5.0
    assert [line for line in captured_logs if "POST to ci failed" in line] == []
    assert notifier.stats()["ci"]["errors"] == 0
    await sleep(0.3)
    assert receiver.refused == 1


@pytest_twisted.ensureDeferred
async def test_queues_of_no_configured_endpoint_are_named_at_start(
    tmp_path: Path,
    receiver: WebhookReceiver,  # noqa: F811
    captured_logs: list[str],  # noqa: F811
) -> None:
    """A section renamed, removed or disabled leaves its queue undelivered: one line says
    which files, with how many events.  Those of the configured endpoints (a worker's too)
    are not named, nor logs with nothing left to deliver."""
    root = tmp_path / "data"
    queues = root / "notifications"
    queues.mkdir(parents=True)
    for name in ("ci.log", "ci.worker1.log", "old.log", "audit.worker2.log", "readme.txt"):
        (queues / name).write_bytes(b"E 1 " + _event(1) + b"\n")
    (queues / "old.log").write_bytes(b"".join(b"E %d " % i + _event(i) + b"\n" for i in (1, 2)))
    (queues / "empty.log").write_bytes(b"")
    (queues / "delivered.log").write_bytes(b"E 1 " + _event(1) + b"\nD 1 1\n")
    sections = {
        "storage": {"rootdirectory": str(root)},
        "notifications:ci": endpoint(receiver.url),
        "notifications:audit": {**endpoint(receiver.url), "disabled": "true"},
    }
    (tmp_path / "run").mkdir()
    registry = await start_in_process(tmp_path / "run", sections)
    await registry.stop()
    [line] = [line for line in captured_logs if "belong to no configured endpoint" in line]
    assert line == (
        f"notifications: audit.worker2.log (1 event), old.log (2 events) in {queues} belong to"
        " no configured endpoint (a section renamed, removed or disabled): their events are not"
        " delivered"
    )


@pytest_twisted.ensureDeferred
async def test_queues_left_when_no_endpoint_is_configured_are_named_at_start(
    tmp_path: Path,
    captured_logs: list[str],  # noqa: F811
) -> None:
    """Every endpoint section removed: the queue left behind is still named."""
    root = tmp_path / "data"
    queues = root / "notifications"
    queues.mkdir(parents=True)
    (queues / "ci.log").write_bytes(b"E 1 " + _event(1) + b"\n")
    (tmp_path / "run").mkdir()
    registry = await start_in_process(tmp_path / "run", {"storage": {"rootdirectory": str(root)}})
    await registry.stop()
    [line] = [line for line in captured_logs if "belong to no configured endpoint" in line]
    assert line == (
        f"notifications: ci.log (1 event) in {queues} belong to no configured endpoint (a"
        " section renamed, removed or disabled): their events are not delivered"
    )
