"""
The control pipes' framing, shared by both ends: the workers' side (`registry.server.control`,
on Twisted) and the supervisor's (`registry.server.pipe_channel`, standard library only, so
this module imports nothing else).

One JSON message per line.  A line longer than `MAX_LINE` is refused rather than buffered,
so a confused peer cannot make the other end hold an unbounded buffer.
"""

from __future__ import annotations

MAX_LINE = 16 * 1024 * 1024


class LineTooLong(ValueError):
    """A peer sent more than `MAX_LINE` bytes without a newline."""


class LineBuffer:
    """Bytes as they arrive in, complete non-blank lines out."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes; `LineTooLong` once a line passes `MAX_LINE`."""
        self._buffer += data
        if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer:
            raise LineTooLong(f"control pipe: a line longer than {MAX_LINE} bytes")
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line for line in lines if line.strip()]
