"""
The first bytes of a response body the client has no use for beyond a log line (a webhook's
"ok", a peer's error page): read within a bound of size and of time, whatever the other end
sends.  treq's ``content()`` reads a body whole, and a body that never ends would fill memory
and keep its reader waiting for good.

A body that ends within both bounds leaves its connection to the pool; past either bound, or
when the wait is cancelled, reading stops and the connection is closed.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse


class _Head(Protocol):
    """Keeps the first ``limit`` bytes; more than ``limit`` in all closes the connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._received = 0
        self._data = bytearray()
        self.done: Deferred[bytes] = Deferred(lambda _: self.stop())

    def dataReceived(self, data: bytes) -> None:
        self._data += data[: self._limit - len(self._data)]
        self._received += len(data)
        if self._received > self._limit:
            self.stop()

    def stop(self) -> None:
        """Enough, too slow, or no longer wanted: the connection does not go back to a pool."""
        if self.transport is not None:
            # A response's transport is an IPushProducer (IResponse.deliverBody).
            cast(IPushProducer, self.transport).stopProducing()
        self._finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The end of the body (the connection goes back to the pool) or of the connection.
        self._finish()

    def _finish(self) -> None:
        if not self.done.called:
            self.done.callback(bytes(self._data))


async def read_head(response: IResponse, limit: int, reactor: Any, within: float) -> bytes:
    """At most ``limit`` bytes of ``response``'s body, for at most ``within`` seconds."""
    head = _Head(limit)
    response.deliverBody(head)
    head.done.addTimeout(within, reactor, onTimeoutCancel=lambda result, timeout: result)
    return await head.done
