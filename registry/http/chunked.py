"""
Decoding upload bodies sent with ``Transfer-Encoding: chunked``.

Why: docker, containerd and skopeo send layer bodies this way, since they compress as they
send and do not know the length.  twisted.web's decoder copies every byte twice (into a
bytearray, then out of it) and hands the body on one HTTP chunk at a time (32-64 KiB from
these clients).  This one hands on the body bytes of a whole network read at once, with one
copy at most, and none when the read holds only body bytes: a 1 GiB chunked PATCH went from
843 to over 1,100 MiB/s here (docs/performance.md).

The grammar and limits are twisted.web's (RFC 9112, section 7.1): size lines under 1 KiB,
extensions checked only for their characters, at most 64 KiB of trailers (read and
ignored).  Malformed input raises twisted.web's own error, so the channel answers it as it
would its own decoder's: 400 and the connection closed.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.http import _DataLoss, _MalformedChunkedDataError

MAX_SIZE_LINE = 1024
MAX_TRAILERS = 64 * 1024
_HEX_DIGITS = b"0123456789abcdefABCDEF"
# RFC 9110 token and quoted-string characters: HTAB, SP, visible ASCII, obs-text.
_EXTENSION_CHARACTERS = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))

_SIZE, _BODY, _CRLF, _TRAILER, _FINISHED = range(5)


class ChunkedBodyDecoder:
    """
    Feed it what the socket gives (``dataReceived``); body bytes go to ``on_data``, and what
    follows the body (a pipelined request) to ``on_finish`` once the last chunk is in.
    """

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_finish: Callable[[bytes], None],
        on_malformed: Callable[[], None] | None = None,
    ):
        self._on_data = on_data
        self._on_finish = on_finish
        # Told first when the body turns out malformed: the channel answers 400 and closes,
        # and the request must know it was refused, not left by its client.
        self._on_malformed = on_malformed
        self._state = _SIZE
        self._remaining = 0  # body bytes still due in the current chunk
        self._pending = b""  # an unfinished size line, chunk end or trailer line
        self._trailer_bytes = 0

    def dataReceived(self, data: bytes) -> None:  # twisted.web decoder API
        if self._state == _FINISHED:
            raise RuntimeError("chunked body data after its last chunk")
        body: list[memoryview] = []
        try:
            rest = self._parse(data, body)
        except _MalformedChunkedDataError:
            if self._on_malformed is not None:
                self._on_malformed()
            raise
        finally:
            # Body bytes before a malformed part still go on, as they would one by one.
            if len(body) == 1 and len(body[0]) == len(data):
                self._on_data(data)
            elif body:
                self._on_data(b"".join(body))
        if rest is not None:
            self._on_finish(rest)

    def noMoreData(self) -> None:  # twisted.web decoder API
        if self._state != _FINISHED:
            raise _DataLoss("the chunked body ended before its last chunk")

    def _parse(self, data: bytes, body: list[memoryview]) -> bytes | None:
        """Collect body slices of ``data``; returns what follows the body once it has ended."""
        view = memoryview(data)
        position, end = 0, len(data)
        while position < end:
            if self._state == _BODY:
                taken = min(self._remaining, end - position)
                body.append(view[position : position + taken])
                position += taken
                self._remaining -= taken
                if self._remaining == 0:
                    self._state = _CRLF
                continue
            limit = MAX_SIZE_LINE if self._state != _TRAILER else MAX_TRAILERS - self._trailer_bytes
            found = self._line(data, position, limit)
            if found is None:
                return None  # the rest of the line comes with the next read
            line, position = found
            if self._state == _CRLF:
                if line:
                    raise _MalformedChunkedDataError("Chunk did not end with CRLF")
                self._state = _SIZE
            elif self._state == _SIZE:
                self._remaining = _chunk_size(line)
                self._state = _BODY if self._remaining else _TRAILER
            elif line:  # a trailer field: read and ignored, as twisted.web does
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > MAX_TRAILERS:
                    raise _MalformedChunkedDataError("Trailer headers data is too long.")
            else:
                self._state = _FINISHED
                return data[position:]
        return None

    def _line(self, data: bytes, start: int, limit: int) -> tuple[bytes, int] | None:
        """
        The line at ``start`` without its CRLF, and where the next one starts; None when it
        is not complete yet (kept in ``_pending``).  Lines are searched only ``limit`` bytes
        deep, so a peer sending no CRLF costs no more than that.
        """
        if self._pending:
            pending = self._pending
            head = pending + data[start : start + limit + 2]
            end = head.find(b"\r\n")
            if end == -1:
                if len(head) > limit:
                    raise _MalformedChunkedDataError("Chunk size or trailer line too long.")
                self._pending = head
                return None
            if end > limit:
                raise _MalformedChunkedDataError("Chunk size or trailer line too long.")
            self._pending = b""
            return head[:end], start + end + 2 - len(pending)
        end = data.find(b"\r\n", start, start + limit + 2)
        if end == -1:
            if len(data) - start > limit:
                raise _MalformedChunkedDataError("Chunk size or trailer line too long.")
            self._pending = data[start:]
            return None
        return data[start:end], end + 2


def _chunk_size(line: bytes) -> int:
    size, _, extension = line.partition(b";")
    if not size or size.translate(None, _HEX_DIGITS):
        raise _MalformedChunkedDataError("Chunk-size must be an integer.")
    if extension.translate(None, _EXTENSION_CHARACTERS):
        raise _MalformedChunkedDataError("Invalid characters in chunk extensions.")
    return int(size, 16)
