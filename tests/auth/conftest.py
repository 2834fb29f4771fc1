"""Fixtures for access-control tests: a worker thread pool for bcrypt, log capture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool


@pytest.fixture
def threadpool() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-bcrypt")
    pool.start()
    yield pool
    pool.stop()


class LogCapture:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def messages(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def text(self) -> str:
        return "\n".join(self.messages())


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r
