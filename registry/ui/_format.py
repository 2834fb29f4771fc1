"""How numbers, dates and platforms read on a page."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Mapping
from typing import Any

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(value: int | float | None) -> str:
    if value is None:
        return "—"
    amount = float(value)
    for unit in _UNITS:
        if abs(amount) < 1024 or unit == _UNITS[-1]:
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def date(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def percent(part: float, whole: float) -> str:
    if whole <= 0:
        return "—"
    return f"{100.0 * part / whole:.1f} %"


# Real platforms are like ``linux/arm64/v8``.
MAX_PLATFORM = 100


def platform(value: Mapping[str, Any] | None) -> str:
    """``linux/arm64/v8``, as docker writes it; ``unknown/unknown`` for attestations."""
    if not value:
        return "—"
    parts = [str(value.get("os", "?")), str(value.get("architecture", "?"))]
    if value.get("variant"):
        parts.append(str(value["variant"]))
    return clip("/".join(parts), MAX_PLATFORM)


def short_digest(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}:{hex_[:12]}" if hex_ else digest


# How much of one value a page shows: real values (a platform, a label, a build step) are far
# shorter, and a manifest or config may hold megabytes in one string.
MAX_TEXT = 1024


# Characters that change how the text around them reads without being seen themselves:
# controls other than tab and newline, format characters (bidirectional marks, overrides and
# isolates, zero-width ones, tag characters), line and paragraph separators, unassigned and
# private-use code points.  A pusher chooses every config value a page shows, so these are
# shown as escapes: exactly the characters `str.isprintable` refuses, apart from tab, newline
# and space-like separators (which render as space).
_KEPT = frozenset("\t\n")


def _escape(char: str) -> str:
    if char in _KEPT or unicodedata.category(char) == "Zs":
        return char
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with each unseen character written as its ``\\uXXXX`` (``\\UXXXXXXXX`` beyond
    the first plane) escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text``, or its first ``limit`` characters and how many more there are; unseen
    characters shown as escapes."""
    if len(text) <= limit:
        return visible(text)
    return f"{visible(text[:limit])}… ({len(text) - limit} more characters)"


def listed(items: tuple[str, ...] | list[str], shown: int) -> str:
    """The first ``shown`` items, comma-separated, and how many more there are."""
    head = ", ".join(items[:shown])
    rest = len(items) - shown
    return f"{head} and {rest} more" if rest > 0 else head
