"""Small test helpers: a hashing IConsumer and waiting on a condition without sleeping blind."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.internet.task import deferLater
from zope.interface import implementer

reactor: Any = _reactor


@implementer(IConsumer)
class HashingConsumer:
    """Hashes what it is given; optionally pauses its producer after each write for a while,
    to exercise back-pressure."""

    def __init__(self, pause_for: float | None = None) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0
        self.producer: IProducer | None = None
        self.pauses = 0
        self._pause_for = pause_for

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        self.size += len(data)
        if self._pause_for is not None and self.producer is not None:
            self.pauses += 1
            producer = self.producer
            producer.pauseProducing()  # type: ignore[attr-defined]
            reactor.callLater(self._pause_for, producer.resumeProducing)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


async def wait_until(
    condition: Callable[[], bool], within: float = 5.0, context: Callable[[], str] | None = None
) -> None:
    """Poll ``condition`` until it holds, for at most ``within`` seconds; ``context`` says
    what to show when it never does (a server's log tail, say)."""
    deadline = reactor.seconds() + within
    while not condition():
        if reactor.seconds() > deadline:
            shown = context() if context is not None else ""
            raise AssertionError(f"condition not met in time {shown}".rstrip())
        await deferLater(reactor, 0.02, lambda: None)
