"""
Parts of a registry stop one after the other, the last started first: a part stopping may
still need what was started before it (the upload purge's storage walk needs the storage
thread pool).  Stopped all at once, as Twisted's `MultiService` does, the pool stopped under a
purge in progress and the registry's stop waited forever (a CI run hung on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from registry.server.service import STOP_REPORT_EVERY, OrderedMultiService
from tests.e2e.harness import start_in_process


class Part(Service):
    def __init__(self, name: str, log: list[str], finish: Deferred[None] | None = None) -> None:
        self.name = name
        self._log = log
        self._finish = finish

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._log.append(f"{self.name} stopping")
        if self._finish is None:
            return None
        self._finish.addCallback(lambda _: self._log.append(f"{self.name} stopped"))
        return self._finish


def test_the_last_started_stops_first_and_the_next_waits_for_it() -> None:
    clock = Clock()
    log: list[str] = []
    purge_done: Deferred[None] = Deferred()
    parent = OrderedMultiService(clock)
    Part("pool", log).setServiceParent(parent)
    Part("purge", log, purge_done).setServiceParent(parent)
    parent.startService()
    stopped: list[object] = []
    parent.stopService().addCallback(stopped.append)
    assert log == ["purge stopping"]  # the pool is not stopped under the purge
    lines: list[str] = []
    globalLogPublisher.addObserver(lambda event: lines.append(formatEvent(event)))
    clock.advance(STOP_REPORT_EVERY)
    assert "stopping: still waiting for purge" in lines
    purge_done.callback(None)
    assert log == ["purge stopping", "purge stopped", "pool stopping"]
    assert stopped == [None]
    assert not parent.running


@pytest_twisted.ensureDeferred
async def test_a_registry_stops_while_its_upload_purge_walks_the_storage(
    tmp_path: Path,
) -> None:
    """A purge every 10 ms over 400 repositories with an upload each is nearly always in
    progress: each stop below lands in one (three in a row, to make a miss unlikely)."""
    data = tmp_path / "data"
    for i in range(400):
        (data / f"docker/registry/v2/repositories/r{i}/_uploads/u{i}").mkdir(parents=True)
    sections: dict[str, Any] = {
        "storage": {"rootdirectory": str(data)},
        "uploads": {"purge_interval": "10ms", "purge_age": "168h"},
    }
    for attempt in range(3):
        folder = tmp_path / f"run{attempt}"
        folder.mkdir()
        registry = await start_in_process(folder, sections)
        await registry.stop()  # bounded by the harness: a hang fails here
