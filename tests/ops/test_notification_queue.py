"""The notification queue's log file, the endpoint settings, and the metrics, without HTTP."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

from registry.config import ConfigError, load
from registry.ops.notifications import check_notifications, parse_endpoints
from registry.ops.notifications.config import parse_endpoint
from registry.ops.notifications.events import Notifier, envelope, timestamp
from registry.ops.notifications.lock import QueueInUse, QueueLock
from registry.ops.notifications.metrics import register_notification_metrics
from registry.ops.notifications.queue import REWRITE_RETRY, DurableQueue, LogContents, read_log
from tests.e2e.test_full_disk import fill, small_disk  # noqa: F401 - fixture


def event(n: int) -> bytes:
    return b'{"id":"%d"}' % n


def queue(path: Path, pool: ThreadPool, max_events: int = 1000) -> DurableQueue:
    return DurableQueue(str(path), reactor, pool, max_events, fsync=True)


def test_read_log_skips_done_torn_and_damaged_lines(tmp_path: Path) -> None:
    log = tmp_path / "ci.log"
    log.write_bytes(
        b'E 1 {}\nE 2 {"a":1}\nE 3 {}\nD 1 2\nE x {}\nE 4 {}\nE 5 {"torn'  # no newline
    )
    assert read_log(str(log)) == LogContents([(3, b"{}"), (4, b"{}")], 4, damaged=1)
    assert read_log(str(tmp_path / "missing.log")) == LogContents([], 0)


@pytest_twisted.ensureDeferred
async def test_pending_events_survive_a_restart_in_order(
    tmp_path: Path, one_thread_pool: ThreadPool
) -> None:
    path = tmp_path / "ci.log"
    first = queue(path, one_thread_pool)
    first.append(event(0))  # before load: kept, and written after what load finds
    await first.load()
    for n in range(1, 5):
        first.append(event(n))
    assert first.take(2) == [(1, event(0)), (2, event(1))]
    first.done(2)
    first.take(2)
    first.release()  # a failed POST: the events stay first in line
    await first.flush()
    second = queue(path, one_thread_pool)
    second.append(event(5))
    await second.load()
    assert list(second.pending) == [(3, event(2)), (4, event(3)), (5, event(4)), (6, event(5))]
    await second.flush()
    assert path.read_bytes().splitlines()[0] == b"E 3 " + event(2)  # rewritten at start


@pytest_twisted.ensureDeferred
async def test_done_events_are_compacted_away(tmp_path: Path, one_thread_pool: ThreadPool) -> None:
    path = tmp_path / "ci.log"
    q = queue(path, one_thread_pool, max_events=10_000)
    await q.load()
    for n in range(3000):
        q.append(event(n))
    await q.flush()
    for _ in range(20):
        q.take(100)
        q.done(100)
    await q.flush()  # 2000 of 3000 done: the file is rewritten with the 1000 pending
    lines = path.read_bytes().splitlines()
    assert len(lines) == 1000 and lines[0] == b"E 2001 " + event(2000)
    q.take(1)
    q.done(1)
    await q.flush()  # few done: appended
    assert path.read_bytes().splitlines()[-1] == b"D 2001 2001"
    await q.flush(compact=True)
    assert read_log(str(path)).pending[0] == (2002, event(2001))
    assert len(path.read_bytes().splitlines()) == 999


@pytest_twisted.ensureDeferred
async def test_bound_drops_the_oldest_not_in_flight(
    tmp_path: Path, one_thread_pool: ThreadPool
) -> None:
    drops: list[int] = []
    q = DurableQueue(str(tmp_path / "ci.log"), reactor, one_thread_pool, 3, on_drop=drops.append)
    await q.load()
    for n in range(3):
        q.append(event(n))
    assert q.take(1) == [(1, event(0))]  # being delivered: not counted in the bound
    q.append(event(3))
    q.append(event(4))
    assert [seq for seq, _ in q.pending] == [1, 3, 4, 5]
    assert q.dropped == 1 and drops == [1]
    q.done(1)
    await q.flush()
    reread = queue(tmp_path / "ci.log", one_thread_pool, max_events=3)
    await reread.load()
    assert [seq for seq, _ in reread.pending] == [3, 4, 5]
    # A failed delivery of the whole queue: what came meanwhile stays, the oldest go.
    assert reread.take(100) == [(3, event(2)), (4, event(3)), (5, event(4))]
    reread.append(event(5))
    reread.append(event(6))
    assert [seq for seq, _ in reread.pending] == [3, 4, 5, 6, 7]
    reread.release()
    assert [seq for seq, _ in reread.pending] == [5, 6, 7] and reread.dropped == 2
    await reread.flush()
    assert [seq for seq, _ in read_log(str(tmp_path / "ci.log")).pending] == [5, 6, 7]


def test_endpoint_settings() -> None:
    config = parse_endpoint(
        "ci",
        {
            "url": "https://hooks.example/registry",
            "headers": "Authorization: Bearer x:y\nX-Team: ci\nX-Team: ops",
            "timeout": "500ms",
            "backoff": "1s",
            "ignoredmediatypes": "application/octet-stream",
            "ignore_mediatypes": "application/vnd.oci.image.config.v1+json",
            "ignore_actions": "pull, mount",
        },
    )
    assert config.headers == (
        ("Authorization", "Bearer x:y"),
        ("X-Team", "ci"),
        ("X-Team", "ops"),
    )
    assert config.timeout == 0.5 and config.threshold == 10 and config.maxevents == 100_000
    assert config.ignoredmediatypes == (
        "application/octet-stream",
        "application/vnd.oci.image.config.v1+json",
    )
    assert not config.wants("pull", None)
    assert not config.wants("push", "application/octet-stream")
    assert config.wants("delete", None) and config.wants("push", "x/y")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "[notifications:ci] url: required"),
        ({"url": "ftp://x"}, "[notifications:ci] url: 'ftp://x' is not an http(s) URL"),
        ({"url": "http://x", "colour": "red"}, "[notifications:ci] colour: unknown key"),
        ({"url": "http://x", "headers": "no colon"}, "[notifications:ci] headers: 'no colon'"),
        (
            {"url": "http://x", "headers": "Content-Length: 5"},
            "[notifications:ci] headers: header Content-Length is set by the registry",
        ),
        ({"url": "http://x", "headers": "Transfer-Encoding: chunked"}, "Transfer-Encoding is set"),
        ({"url": "http://x", "ignore_actions": "pul"}, "[notifications:ci] ignore_actions:"),
        (
            {"url": "http://x", "threshold": "0"},
            "[notifications:ci] threshold: '0' is not a number of 1 or more",
        ),
        ({"url": "http://x", "backoff": "5s", "maxbackoff": "1s"}, "maxbackoff: must not"),
        ({"url": "http://"}, "[notifications:ci] url: 'http://' names no host"),
        ({"url": "http://bad host/x"}, "url: 'http://bad host/x': 'bad host' is not a host"),
        ({"url": "http://127.0.0.1:99999/"}, "the port is not a number from 1 to 65535"),
        (
            {"url": "http://user:s3cret@bad host/"},
            "url: 'http://bad host/': 'bad host' is not a host name",  # no password in it
        ),
    ],
)
def test_bad_endpoint_settings_name_the_key(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_endpoint("ci", values)
    assert str(raised.value).startswith(message) or message in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_credentials_in_the_url_become_a_basic_header_and_leave_the_url() -> None:
    config = parse_endpoint("ci", {"url": "http://hook%40ci:p%3Ass@127.0.0.1:9/in"})
    assert config.url == "http://127.0.0.1:9/in"
    assert config.headers == (("Authorization", "Basic aG9va0BjaTpwOnNz"),)  # hook@ci:p:ss
    configured = parse_endpoint(
        "ci", {"url": "http://u:p@127.0.0.1:9/in", "headers": "Authorization: Bearer t"}
    )
    assert configured.url == "http://127.0.0.1:9/in"
    assert configured.headers == (("Authorization", "Bearer t"),)


def test_read_log_skips_a_damaged_event_and_a_range_beyond_the_file(tmp_path: Path) -> None:
    """An event that is not JSON would make every envelope invalid, and a done range of
    10**11 events was looped over one by one: both are damaged lines, counted."""
    log = tmp_path / "ci.log"
    log.write_bytes(
        b'E 1 {"id":"x", truncated-by-hand\nE 2 {}\nD 2 100000000000\nE 3 []\n'
        b"E 4 {}\nE 5 {}\nD 4 4\nD 4 5\n\xff\xfe\nE 6 {}\n"
    )
    contents = read_log(str(log))
    assert contents.pending == [(2, b"{}"), (6, b"{}")]
    assert (contents.last, contents.damaged) == (6, 4)


def test_sections_environment_and_queue_folder(tmp_path: Path) -> None:
    path = tmp_path / "registry.cfg"
    path.write_text(
        "[notifications:ci]\nurl = http://a/\n[notifications:off]\nurl = http://b/\ndisabled = false\n"
    )
    environ = {
        "REGISTRY_NOTIFICATIONS_CI_URL": "http://c/",
        "REGISTRY_NOTIFICATIONS_OFF_DISABLED": "true",
    }
    config = load(str(path), environ)
    assert [(e.name, e.url) for e in parse_endpoints(config)] == [("ci", "http://c/")]
    s3 = load(str(path), {}, {("storage", "driver"): "s3"})
    with pytest.raises(ConfigError, match=r"\[notifications\] queuedir: required"):
        check_notifications(s3)
    check_notifications(
        load(str(path), {}, {("storage", "driver"): "s3", ("notifications", "queuedir"): "/q"})
    )


def test_event_encoding_helpers() -> None:
    assert timestamp(1_700_000_000.25) == "2023-11-14T22:13:20.250000Z"
    assert timestamp(1_700_000_000.9999999) == "2023-11-14T22:13:21.000000Z"
    assert envelope([b"{}", b'{"a":1}']) == b'{"events":[{},{"a":1}]}'
    assert Notifier().stats() == {}


def test_prometheus_metrics() -> None:
    class Endpoint:
        name = "ci"

        def stats(self) -> dict[str, int]:
            return {"pending": 4, "delivered": 10, "failed": 2, "errors": 1, "dropped": 3}

    registry = CollectorRegistry()
    register_notification_metrics(registry, Notifier([Endpoint()]))  # type: ignore[list-item]
    text = generate_latest(registry).decode()
    for line in (
        'txregistry_notifications_pending{endpoint="ci"} 4.0',
        'txregistry_notifications_delivered_total{endpoint="ci"} 10.0',
        'txregistry_notifications_failed_total{endpoint="ci"} 2.0',
        'txregistry_notifications_errors_total{endpoint="ci"} 1.0',
        'txregistry_notifications_dropped_total{endpoint="ci"} 3.0',
    ):
        assert line in text.splitlines()


class _Stepped:
    """The reactor, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def seconds(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


@pytest_twisted.ensureDeferred
async def test_a_failed_write_is_tried_again_whole_and_not_at_every_flush(
    tmp_path: Path, one_thread_pool: ThreadPool
) -> None:
    """Once writing the log failed (a full disk, a lost folder), every pending event is
    written again in one new file, at most every REWRITE_RETRY seconds (each try formats the
    whole backlog); the new file of a try that failed is not left behind."""
    folder = tmp_path / "queue"
    folder.mkdir()
    path = folder / "ci.log"
    clock = _Stepped()
    q = DurableQueue(str(path), clock, one_thread_pool, 1000, fsync=True)
    await q.load()
    q.append(event(1))
    await q.flush()
    assert path.read_bytes() == b"E 1 " + event(1) + b"\n"

    path.unlink()
    folder.rmdir()  # the log cannot be written
    q.append(event(2))
    await q.flush()
    folder.mkdir()  # it can again, but a retry waits
    for n in range(3, 6):
        q.append(event(n))
        clock.now += 1
        await q.flush()
    assert list(folder.iterdir()) == []
    clock.now += REWRITE_RETRY
    q.append(event(6))
    await q.flush()
    assert path.read_bytes() == b"".join(b"E %d %s\n" % (n, event(n)) for n in range(1, 7))
    q.append(event(7))
    await q.flush()  # appended again, at once
    assert path.read_bytes().endswith(b"E 7 " + event(7) + b"\n")


@pytest_twisted.ensureDeferred
async def test_a_rewrite_that_does_not_fit_leaves_no_new_file(
    small_disk: Path,  # noqa: F811
    one_thread_pool: ThreadPool,
) -> None:
    path = small_disk / "ci.log"
    clock = _Stepped()
    q = DurableQueue(str(path), clock, one_thread_pool, 100_000, fsync=True)
    await q.load()
    big = b'{"id":"%s"}' % (b"x" * 4000)
    for _ in range(200):  # 800 KB of events
        q.append(big)
    await q.flush()
    assert path.stat().st_size > 800_000
    filler = fill(small_disk)
    q.append(big + b" " * 9000)  # more than the slack of the log's last page
    await q.flush()  # the append fails
    clock.now += REWRITE_RETRY
    q.append(event(2))
    await q.flush()  # the rewrite does not fit beside the log
    assert sorted(p.name for p in small_disk.iterdir()) == ["ci.log", "filler"]
    filler.unlink()
    clock.now += REWRITE_RETRY
    await q.flush()
    assert path.read_bytes().endswith(b"E 202 " + event(2) + b"\n")
    assert read_log(str(path)).last == 202


@pytest.mark.parametrize(
    ("written", "named"),
    [
        ("4242 {host}\n", " (pid 4242)"),
        ("4242 build-7\n", " (pid 4242 on build-7)"),  # a network folder
        ("", ""),  # the holder has not written its name yet
    ],
)
def test_a_held_queue_names_its_holder(tmp_path: Path, written: str, named: str) -> None:
    """Another open file, as another process has: the flock refuses it (whatever the file
    says), and the message names what the holder wrote."""
    queue = str(tmp_path / "ci.log")
    with open(queue + ".lock", "w") as holder:
        holder.write(written.format(host=socket.gethostname()))
        holder.flush()
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(QueueInUse) as refused:
            QueueLock.take(queue)
    assert str(refused.value) == (
        f"the notifications queue {queue} is in use by another process{named}: give each"
        " instance its own [notifications] queuedir"
    )
    lock = QueueLock.take(queue)  # the holder closed its file: free
    assert (tmp_path / "ci.log.lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    with pytest.raises(QueueInUse):
        QueueLock.take(queue)
    lock.release()
    QueueLock.take(queue).release()


@pytest_twisted.ensureDeferred
async def test_adopting_queues_with_nothing_left_is_no_warning(
    tmp_path: Path, one_thread_pool: ThreadPool
) -> None:
    """A worker beyond ``[http] workers`` whose every event was delivered left a queue with
    nothing pending: removing it is an info line, not a warning about 0 events adopted."""
    from twisted.logger import formatEvent, globalLogPublisher

    (tmp_path / "ci.worker1.log").write_bytes(b"E 1 {}\nD 1 1\n")
    seen: list[tuple[str, str]] = []

    def observe(log_event: dict[str, Any]) -> None:
        seen.append((log_event["log_level"].name, formatEvent(log_event)))

    globalLogPublisher.addObserver(observe)
    try:
        q = DurableQueue(
            str(tmp_path / "ci.log"), reactor, one_thread_pool, 10,
            adopt=(str(tmp_path / "ci.worker1.log"),),
        )  # fmt: skip
        await q.load()
    finally:
        globalLogPublisher.removeObserver(observe)
    said = [(level, text) for level, text in seen if "ci.worker1.log" in text]
    assert said == [
        (
            "info",
            "notifications: removed ci.worker1.log (queues of workers beyond [http] workers,"
            " every event delivered)",
        )
    ], seen
    assert not (tmp_path / "ci.worker1.log").exists()
    assert q.pending == type(q.pending)()
