"""
The pipe between the supervisor and each worker (`registry.server.workers`): JSON lines.

A message is one JSON object on one line.  ``{"op": NAME, ...}`` asks the other side to do
``NAME``; with an ``"id"`` it wants an answer, ``{"reply": ID, "result": ...}`` or
``{"reply": ID, "error": "..."}``.  Both directions use the same `Channel`: the worker asks the
supervisor for the whole tree's metrics, the supervisor asks each worker for its own.

The pipe carries a few small messages per scrape or health check, never request data, so
JSON's cost does not matter; a line longer than `registry.server.control_lines.MAX_LINE`
ends the channel rather than growing a buffer without bound (the framing is shared with the
supervisor's end, `registry.server.pipe_channel`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from registry.server.control_lines import LineBuffer, LineTooLong

log = Logger()

# A worker's metrics are tens of KiB; a line this long is a broken peer.

Handler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


class ChannelClosed(Exception):
    """The other side is gone (its process exited, or it closed the pipe)."""


class Channel:
    """
    Requests and answers over a byte pipe.  ``write`` sends bytes to the peer; feed what
    arrives to `data_received`, and call `lost` when the pipe closes.
    """

    def __init__(
        self, write: Callable[[bytes], None], handlers: Mapping[str, Handler], clock: Any
    ) -> None:
        self._write = write
        self._handlers = handlers
        self._clock = clock
        self._lines = LineBuffer()
        self._next_id = 0
        self._waiting: dict[int, Deferred[Any]] = {}
        self.closed = False

    def send(self, op: str, **fields: Any) -> None:
        """Tell the peer something; no answer expected."""
        self._send({"op": op, **fields})

    def request(self, op: str, timeout: float, **fields: Any) -> Deferred[Any]:
        """Ask the peer; fires with its result, fails with `ChannelClosed` or on ``timeout``."""
        if self.closed:
            return Deferred.fromCoroutine(_raise(ChannelClosed(op)))
        self._next_id += 1
        ident = self._next_id

        def forget(_: Deferred[Any]) -> None:
            self._waiting.pop(ident, None)

        answer: Deferred[Any] = Deferred(forget)
        self._waiting[ident] = answer
        timer = self._clock.callLater(timeout, answer.cancel)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        answer.addBoth(done)
        self._send({"op": op, "id": ident, **fields})
        return answer

    def _send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self._write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        try:
            lines = self._lines.feed(data)
        except LineTooLong as exc:
            log.error("{error}", error=str(exc))
            self.lost()
            return
        for line in lines:
            self._received(line)

    def _received(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.error("control pipe: not JSON: {line!r}", line=line[:200])
            return
        if "reply" in message:
            answer = self._waiting.pop(message["reply"], None)
            if answer is None:
                return  # timed out already
            if "error" in message:
                answer.errback(RuntimeError(str(message["error"])))
            else:
                answer.callback(message.get("result"))
            return
        op = message.get("op")
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            log.error("control pipe: unknown operation {op!r}", op=op)
            return
        ident = message.get("id")
        d = Deferred.fromCoroutine(_call(handler, message))
        if ident is not None:
            d.addCallbacks(
                lambda result: self._send({"reply": ident, "result": result}),
                lambda failure: self._send({"reply": ident, "error": failure.getErrorMessage()}),
            )
        else:
            d.addErrback(lambda f: log.failure("control pipe: {op} failed", f, op=op))

    def lost(self) -> None:
        """The pipe closed: every question still waiting fails with `ChannelClosed`."""
        self.closed = True
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            if not answer.called:
                answer.errback(ChannelClosed())


async def _call(handler: Handler, message: dict[str, Any]) -> Any:
    result = handler(message)
    if isinstance(result, Awaitable):
        return await result
    return result


async def _raise(exc: Exception) -> Any:
    raise exc


def is_timeout(failure_value: BaseException) -> bool:
    """Whether a `Channel.request` failed because the peer did not answer in time."""
    return isinstance(failure_value, CancelledError)
