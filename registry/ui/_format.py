"""How numbers, dates and platforms read on a page."""

from __future__ import annotations

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


def platform(value: Mapping[str, Any] | None) -> str:
    """``linux/arm64/v8``, as docker writes it; ``unknown/unknown`` for attestations."""
    if not value:
        return "—"
    parts = [str(value.get("os", "?")), str(value.get("architecture", "?"))]
    if value.get("variant"):
        parts.append(str(value["variant"]))
    return "/".join(parts)


def short_digest(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}:{hex_[:12]}" if hex_ else digest
