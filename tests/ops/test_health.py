"""`HealthChecker` on a `Clock`: results cached, probes bounded by the timeout, one probe for
many callers, a caller that leaves does not stop the probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from registry.ops.health import HealthCheck, HealthChecker, storage_probe
from registry.server.workers import TreeReady, workers_probe
from registry.storage.driver import StorageError
from registry.storage.filesystem import FilesystemDriver
from registry.storage.memory import MemoryDriver


class Probe:
    """A probe whose answers the test gives: each call waits for `answer` or `fail`."""

    def __init__(self) -> None:
        self.calls = 0
        self.pending: list[Deferred[None]] = []
        self.cancelled = 0

    async def __call__(self) -> None:
        self.calls += 1

        def cancelled(d: Deferred[None]) -> None:
            self.cancelled += 1

        d: Deferred[None] = Deferred(cancelled)
        self.pending.append(d)
        await d

    def answer(self) -> None:
        self.pending.pop(0).callback(None)

    def fail(self, why: str) -> None:
        self.pending.pop(0).errback(RuntimeError(why))


def checker(clock: Clock, probe: Any, name: str = "dep") -> HealthChecker:
    health = HealthChecker(clock, cache_for=2.0, timeout=1.0)
    health.add(HealthCheck(name, probe))
    return health


def results(d: Deferred[Any]) -> list[tuple[str, bool, str | None]]:
    assert d.called, "no result yet"
    found: list[Any] = []
    d.addBoth(found.append)
    return [(r.name, r.ok, r.error) for r in found[0]]


def test_a_result_is_reused_for_cache_for_seconds() -> None:
    clock, probe = Clock(), Probe()
    health = checker(clock, probe)
    first = Deferred.fromCoroutine(health.run())
    probe.answer()
    assert results(first) == [("dep", True, None)]
    clock.advance(1.9)
    assert results(Deferred.fromCoroutine(health.run())) == [("dep", True, None)]
    assert probe.calls == 1
    clock.advance(0.2)
    again = Deferred.fromCoroutine(health.run())
    assert probe.calls == 2
    probe.fail("disk on fire")
    assert results(again) == [("dep", False, "disk on fire")]


def test_a_probe_without_answer_fails_after_the_timeout() -> None:
    clock, probe = Clock(), Probe()
    health = checker(clock, probe)
    d = Deferred.fromCoroutine(health.run())
    clock.advance(0.9)
    assert not d.called
    clock.advance(0.2)
    assert results(d) == [("dep", False, "no answer within 1s")]
    assert probe.cancelled == 1


def test_callers_share_one_probe_and_one_may_leave() -> None:
    clock, probe = Clock(), Probe()
    health = checker(clock, probe)
    leaving = Deferred.fromCoroutine(health.run())
    staying = Deferred.fromCoroutine(health.run())
    assert probe.calls == 1
    leaving.cancel()
    failures: list[Any] = []
    leaving.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    assert probe.cancelled == 0  # the probe goes on for the others
    probe.answer()
    assert results(staying) == [("dep", True, None)]


def test_run_names_checks_and_readiness_is_the_default() -> None:
    clock = Clock()
    health = HealthChecker(clock)

    async def ok() -> None:
        pass

    health.add(HealthCheck("storage", ok))
    health.add(HealthCheck("extra", ok, readiness=False))
    assert [r[0] for r in results(Deferred.fromCoroutine(health.run()))] == ["storage"]
    only = Deferred.fromCoroutine(health.run(["extra"]))
    assert [r[0] for r in results(only)] == ["extra"]


def test_the_storage_probe_writes_and_reads_back(tmp_path: Path, thread_pool: Any) -> None:
    """A root that became a file fails the writable probe, and the read-only one (a registry
    cannot serve from it either)."""
    from twisted.internet import reactor

    memory = MemoryDriver()
    d = Deferred.fromCoroutine(storage_probe(memory)())
    assert d.called
    root = tmp_path / "root"
    root.write_bytes(b"a file")
    driver = FilesystemDriver(str(root), reactor, thread_pool)
    failures: list[Any] = []
    Deferred.fromCoroutine(storage_probe(driver)()).addErrback(failures.append)
    assert failures and isinstance(failures[0].value, StorageError)
    failures.clear()
    Deferred.fromCoroutine(storage_probe(driver, writable=False)()).addErrback(failures.append)
    assert failures and isinstance(failures[0].value, StorageError)
    assert "is gone or not a folder" in str(failures[0].value)


def test_readiness_leads_with_draining_once_stopping() -> None:
    """Once the process stops, readiness fails with a ``draining`` check of its own, saying
    what is left at the time of asking, without waiting for a probe; the checks asked by name
    (``/health``'s storage check) are as they were."""
    clock, probe = Clock(), Probe()
    health = checker(clock, probe, "storage")
    first = Deferred.fromCoroutine(health.run())
    probe.answer()
    assert results(first) == [("storage", True, None)]
    left = [2]
    health.stopping(lambda: f"stopping: draining {left[0]} request(s)")
    assert results(Deferred.fromCoroutine(health.run())) == [
        ("draining", False, "stopping: draining 2 request(s)"),
        ("storage", True, None),
    ]
    left[0] = 1
    assert results(Deferred.fromCoroutine(health.run())) == [
        ("draining", False, "stopping: draining 1 request(s)"),
        ("storage", True, None),
    ]
    assert results(Deferred.fromCoroutine(health.run(["storage"]))) == [("storage", True, None)]
    assert probe.calls == 1


def test_a_worker_replaced_alone_drains_degraded() -> None:
    """
    A worker that drains while the supervisor is not stopping (a rolling restart) is being
    replaced while the others serve: its ``draining`` check is degraded, readiness 200.  It
    failed, so a load balancer's probe reaching that worker took the instance out.  Once the
    supervisor stops (or does not answer within the timeout), the check fails as a single
    process's does.
    """
    clock, probe = Clock(), Probe()
    health = checker(clock, probe, "storage")
    first = Deferred.fromCoroutine(health.run())
    probe.answer()
    assert results(first) == [("storage", True, None)]
    answers: list[Deferred[bool]] = []

    async def instance_stopping() -> bool:
        answers.append(Deferred())
        return await answers[-1]

    health.instance_stopping = instance_stopping
    health.stopping(lambda: "stopping: draining 1 request(s)")
    running = Deferred.fromCoroutine(health.run())
    assert not running.called
    answers[-1].callback(False)
    found: list[Any] = []
    running.addCallback(found.append)
    draining = found[0][0]
    assert (draining.name, draining.ok, draining.degraded) == ("draining", True, True)
    assert draining.as_json() == {
        "status": "degraded",
        "error": "this worker is being replaced (stopping: draining 1 request(s)); "
        "the other workers serve",
    }
    running = Deferred.fromCoroutine(health.run())
    answers[-1].callback(True)
    assert results(running) == [
        ("draining", False, "stopping: draining 1 request(s)"),
        ("storage", True, None),
    ]
    running = Deferred.fromCoroutine(health.run())
    clock.advance(1.0)  # the timeout: no answer
    assert results(running) == [
        ("draining", False, "stopping: draining 1 request(s)"),
        ("storage", True, None),
    ]


class FakeLink:
    """What `workers_probe` asks: the supervisor's readiness answer, given by the test."""

    def __init__(self, tree: TreeReady) -> None:
        self.tree = tree

    async def tree_ready(self) -> TreeReady:
        return self.tree


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (TreeReady(2, 2, (), False), ("ok", None)),
        (
            TreeReady(1, 2, ("worker 1 (pid 7) not serving: draining",), False),
            ("degraded", "1 of 2 workers serving; worker 1 (pid 7) not serving: draining"),
        ),
        (
            TreeReady(0, 2, ("worker 0 (pid 6) not serving: starting",), False),
            ("failing", "0 of 2 workers serving; worker 0 (pid 6) not serving: starting"),
        ),
        (
            TreeReady(0, 2, ("worker 0 (pid 6) not serving: draining",), True),
            ("failing", "the instance is stopping; worker 0 (pid 6) not serving: draining"),
        ),
        (TreeReady(2, 2, (), True), ("failing", "the instance is stopping")),
    ],
)
def test_the_workers_check_fails_only_when_none_serves_or_the_instance_stops(
    tree: TreeReady, expected: tuple[str, str | None]
) -> None:
    health = HealthChecker(Clock())
    health.add(HealthCheck("workers", workers_probe(FakeLink(tree))))  # type: ignore[arg-type]
    found: list[Any] = []
    Deferred.fromCoroutine(health.run()).addCallback(found.append)
    (checked,) = found[0]
    status = "failing" if not checked.ok else "degraded" if checked.degraded else "ok"
    assert (status, checked.error) == expected


class _LateWrites:
    """Storage whose writes and reads wait until the test lets them through (a hung S3 that
    answers again): a write lands when released, a read returns what is there then."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.writes: list[tuple[Deferred[None], str, bytes]] = []
        self.reads: list[Deferred[None]] = []

    async def put_content(self, path: str, data: bytes) -> None:
        d: Deferred[None] = Deferred()
        self.writes.append((d, path, data))
        await d
        self.stored[path] = data

    async def get_content(self, path: str) -> bytes:
        d: Deferred[None] = Deferred()
        self.reads.append(d)
        await d
        return self.stored[path]

    def land(self, index: int) -> None:
        self.writes.pop(index)[0].callback(None)

    def answer_reads(self) -> None:
        while self.reads:
            self.reads.pop(0).callback(None)


def test_a_late_write_of_an_earlier_storage_probe_is_no_failure() -> None:
    """A probe that timed out on a hung storage still has its write on the way: landing after
    the next probe's write, it is what that probe reads back.  That is the storage keeping
    the last write it got (health flapped to 503 "reads back differently" right after S3
    came back); other bytes than any probe wrote still fail it, in those words."""
    storage = _LateWrites()
    probe = storage_probe(storage)  # type: ignore[arg-type]
    outcomes: list[Any] = []
    first = Deferred.fromCoroutine(probe())  # hangs: its caller gave up on it
    second = Deferred.fromCoroutine(probe())
    storage.land(1)  # the second probe's write
    storage.land(0)  # the first's, late
    storage.answer_reads()
    for d in (first, second):
        d.addBoth(outcomes.append)
    assert outcomes == [None, None]
    third = Deferred.fromCoroutine(probe())
    storage.land(0)
    [path] = storage.stored
    storage.stored[path] = b"other bytes"
    storage.answer_reads()
    failures: list[Any] = []
    third.addErrback(failures.append)
    assert failures and str(failures[0].value) == "what was written reads back differently"
