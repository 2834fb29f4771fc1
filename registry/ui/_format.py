"""How numbers, dates and platforms read on a page."""

from __future__ import annotations

import re
import time
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
# controls other than tab and newline, bidirectional overrides and isolates, zero-width ones.
# A pusher chooses every config value a page shows, so these are shown as escapes.
_UNSEEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def visible(text: str) -> str:
    """``text`` with each unseen character written as its ``\\uXXXX`` escape."""
    return _UNSEEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text``, or its first ``limit`` characters and how many more there are; unseen
    characters shown as escapes."""
    text = visible(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def listed(items: tuple[str, ...] | list[str], shown: int) -> str:
    """The first ``shown`` items, comma-separated, and how many more there are."""
    head = ", ".join(items[:shown])
    rest = len(items) - shown
    return f"{head} and {rest} more" if rest > 0 else head
