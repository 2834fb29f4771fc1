"""Fixtures for access-control tests: a worker thread pool for bcrypt, log capture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool

from tests.threads import started_pool


@pytest.fixture
def threadpool() -> Iterator[ThreadPool]:
    yield from started_pool("test-bcrypt", 2)


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
