"""
``Range`` (blob downloads) and ``Content-Range`` (chunked uploads) parsing.

Pure functions: a ``Range`` that is not a single byte range (another unit, several ranges,
garbage) is ignored (the whole blob is served with 200, as twisted.web's static files do); a
byte range that cannot be satisfied raises `RangeNotSatisfiable` (416 with ``Content-Range:
bytes */<size>``).  So does a reversed one (``bytes=500-0``, last before first): RFC 9110 14.2
lets a server ignore or reject that invalid range; registry:2 (Go's ServeContent) rejects it
with 416, and the distribution-spec conformance suite expects 416 there.

Positions may have any number of digits (RFC 9110 sets no bound): one with more than 19
significant digits is beyond any blob's size and is read as `_BEYOND` instead of being
converted, since ``int()`` refuses strings over 4300 digits and takes quadratic time below
that.  So ``bytes=<5000 nines>-`` is unsatisfiable (416) and ``bytes=0-<5000 nines>`` is the
whole blob (206), as the RFC reads them.
"""

from __future__ import annotations

import re

_RANGE_RE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*", re.ASCII | re.IGNORECASE)
# Larger than any size: what a position with more than 19 significant digits stands for.
_BEYOND = 10**19
_CONTENT_RANGE_RE = re.compile(
    r"\s*(?:bytes[ =])?\s*(\d{1,19})\s*-\s*(\d{1,19})\s*(?:/\s*(?:\d+|\*))?"
)


class RangeNotSatisfiable(ValueError):
    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for size {size}")
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """
    The inclusive ``(first, last)`` byte positions a single-range ``Range`` header asks for,
    clipped to ``size``; None to serve the whole content (no header, not a single byte range).
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = _position(last_text)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return (max(size - suffix, 0), size - 1) if size else _unsatisfiable(size)
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if first >= size or (last_text and last < first):
        raise RangeNotSatisfiable(size)
    return first, min(last, size - 1)


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 19 else _BEYOND


def _unsatisfiable(size: int) -> tuple[int, int]:
    raise RangeNotSatisfiable(size)


def parse_content_range(header: str) -> tuple[int, int]:
    """
    The inclusive ``(first, last)`` of an upload chunk's ``Content-Range`` (``<first>-<last>``,
    as the distribution spec writes it; a ``bytes`` prefix and ``/total`` are tolerated).
    ValueError when malformed or reversed.
    """
    match = _CONTENT_RANGE_RE.fullmatch(header)
    if match is None:
        raise ValueError(f"malformed Content-Range {header[:100]!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        raise ValueError(f"reversed Content-Range {header[:100]!r}")
    return first, last
