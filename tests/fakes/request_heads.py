"""
A client's HTTP/1.1 byte stream split into requests, for the relays the tests put in front of
servers (`tests.fakes.cutter`, `tests.storage.s3front`): each request's head, and where its
body starts in the stream.  Bodies must have a ``Content-Length`` (the clients relayed send
them so); a chunked one raises, as the relays cannot follow it.
"""

from __future__ import annotations

import attrs

MAX_HEAD = 64 * 1024


@attrs.frozen
class Head:
    """One request head: its method, its target, its headers (names lower-cased)."""

    method: str
    target: str
    headers: dict[str, str]

    @property
    def length(self) -> int:
        return int(self.headers.get("content-length", "0"))


def parse_head(head: bytes, relay: str) -> Head:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ValueError(f"chunked request bodies are not followed by {relay}")
    return Head(method, target, headers)


class RequestHeads:
    """Feed it a connection's bytes; it says where each request starts.  ``relay`` names the
    relay in its errors."""

    def __init__(self, relay: str) -> None:
        self._relay = relay
        self._buffer = b""
        self._body_left = 0
        self.offset = 0  # bytes of the stream consumed so far

    def feed(self, data: bytes) -> list[tuple[Head, int]]:
        """Read on; each request whose head ended in ``data``, with where its body starts in
        the stream."""
        started: list[tuple[Head, int]] = []
        while data:
            if self._body_left:
                taken = min(self._body_left, len(data))
                self._body_left -= taken
                self.offset += taken
                data = data[taken:]
                continue
            self._buffer += data
            data = b""
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    raise ValueError(f"request head too long for {self._relay}")
                return started
            head, data = self._buffer[:end], self._buffer[end + 4 :]
            self._buffer = b""
            self.offset += end + 4
            parsed = parse_head(head, self._relay)
            self._body_left = parsed.length
            started.append((parsed, self.offset))
        return started
