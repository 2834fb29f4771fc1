"""`HealthChecker` on a `Clock`: results cached, probes bounded by the timeout, one probe for
many callers, a caller that leaves does not stop the probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from registry.ops.health import HealthCheck, HealthChecker, storage_probe
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
