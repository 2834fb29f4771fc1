"""
The supervisor's end of a worker's control pipe, on `registry.server.loop`: the same JSON
lines as `registry.server.control` (the worker's end, on Twisted), with callbacks instead of
Deferreds.  The message format is described there.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from registry.server.control_lines import LineBuffer, LineTooLong
from registry.server.loop import Loop, Timer

# A handler answers a message: ``reply(result)`` or ``reply(None, "error")``, now or later.
Reply = Callable[..., None]
Handler = Callable[[dict[str, Any], Reply], None]
# What a request's caller gets: (result, None) or (None, reason).
Answer = Callable[[Any, str | None], None]


class PipeChannel:
    """Requests and answers over a pair of pipes, ``read_fd`` and ``write_fd``."""

    def __init__(
        self,
        loop: Loop,
        read_fd: int,
        write_fd: int,
        handlers: Mapping[str, Handler],
        log: Callable[[str, str], None],
    ) -> None:
        self._loop = loop
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._handlers = handlers
        self._log = log
        self._lines = LineBuffer()
        self._out = b""
        self._next_id = 0
        self._waiting: dict[int, tuple[Answer, Timer]] = {}
        self.closed = False
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        loop.add_reader(read_fd, self._readable)

    def send(self, op: str, **fields: Any) -> None:
        """Tell the peer something; no answer expected."""
        self._send({"op": op, **fields})

    def request(self, op: str, timeout: float, answer: Answer, **fields: Any) -> None:
        """Ask the peer; ``answer`` gets its result, or a reason (closed, timed out)."""
        if self.closed:
            answer(None, "closed")
            return
        self._next_id += 1
        ident = self._next_id

        def expired() -> None:
            if self._waiting.pop(ident, None) is not None:
                answer(None, "timed out")

        self._waiting[ident] = (answer, self._loop.call_later(timeout, expired))
        self._send({"op": op, "id": ident, **fields})

    def _send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        # Never blocking: a stopped worker must not stop the supervisor with it.
        pending = bool(self._out)
        self._out += json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if not pending:
            self._flush()
            if self._out and not self.closed:
                self._loop.add_writer(self._write_fd, self._writable)

    def _flush(self) -> None:
        try:
            while self._out:
                written = os.write(self._write_fd, self._out)
                self._out = self._out[written:]
        except BlockingIOError:
            return
        except OSError:
            self.lost()

    def _writable(self) -> None:
        self._flush()
        if not self._out:
            self._loop.remove_reader(self._write_fd)

    def _readable(self) -> None:
        try:
            data = os.read(self._read_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.lost()
            return
        try:
            lines = self._lines.feed(data)
        except LineTooLong as exc:
            self._log("error", str(exc))
            self.lost()
            return
        for line in lines:
            self._received(line)

    def _received(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            self._log("error", f"control pipe: not JSON: {line[:200]!r}")
            return
        if "reply" in message:
            waiting = self._waiting.pop(message["reply"], None)
            if waiting is not None:
                answer, timer = waiting
                timer.cancel()
                if "error" in message:
                    answer(None, str(message["error"]))
                else:
                    answer(message.get("result"), None)
            return
        op = message.get("op")
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            self._log("error", f"control pipe: unknown operation {op!r}")
            return
        ident = message.get("id")

        def reply(result: Any, error: str | None = None) -> None:
            if ident is None:
                return
            if error is not None:
                self._send({"reply": ident, "error": error})
            else:
                self._send({"reply": ident, "result": result})

        handler(message, reply)

    def read_remaining(self, limit: int = 64) -> None:
        """Handle what the peer wrote before it ended (its exit may be seen before its last
        lines are read); at most ``limit`` reads."""
        for _ in range(limit):
            if self.closed:
                return
            try:
                data = os.read(self._read_fd, 65536)
            except OSError:
                return
            if not data:
                return
            try:
                lines = self._lines.feed(data)
            except LineTooLong:
                return
            for line in lines:
                self._received(line)

    def lost(self) -> None:
        """The pipe closed: every question still waiting is answered "closed"."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._read_fd)
        self._loop.remove_reader(self._write_fd)
        self._out = b""
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        waiting, self._waiting = self._waiting, {}
        for answer, timer in waiting.values():
            timer.cancel()
            answer(None, "closed")
