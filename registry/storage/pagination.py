"""
The ``n``/``last`` pagination shared by the tag list, the catalog and the referrers list.

Tags and referrers are sorted by plain string order; repository names by their path
components (`repository_order`). ``last`` is exclusive (the last item the client already
has), and ``n`` bounds the page.  The spec lets ``n=0`` mean an empty page.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from registry.api.errors import PAGINATION_NUMBER_INVALID, RegistryError

# More digits than any sensible page size; also keeps int() away from huge strings.
_MAX_DIGITS = 18


def parse_count(value: int | str | None, maximum: int | None = None) -> int | None:
    """
    The ``n`` query value as an int (None when absent or empty), clamped to ``maximum``.
    Negative or non-integer values are PAGINATION_NUMBER_INVALID.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RegistryError(PAGINATION_NUMBER_INVALID, {"n": str(value)})
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > _MAX_DIGITS:
            raise RegistryError(PAGINATION_NUMBER_INVALID, {"n": value[:50]})
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise RegistryError(PAGINATION_NUMBER_INVALID, {"n": str(value)[:50]})
    if maximum is not None and value > maximum:
        return maximum
    return value


def repository_order(name: str) -> tuple[str, ...]:
    """
    The catalog's sort key: component by component, so ``x``, ``x/b``, ``x/b/c`` come before
    ``x-b`` -- the order registry:2 walks its folders in, so that a ``last`` cursor one of them
    handed out pages correctly on the other when both serve one storage folder.
    """
    return tuple(name.split("/"))


def paginate_start(
    items: Sequence[str],
    last: str | None,
    order: Callable[[str], tuple[str, ...]] | None = None,
) -> int:
    """Where the page after ``last`` (exclusive) begins in ``items`` (sorted by ``order``,
    plain string order when None)."""
    if not last:
        return 0
    if order is None:
        return bisect.bisect_right(items, last)
    return bisect.bisect_right(items, order(last), key=order)


def paginate(
    items: Sequence[str],
    n: int | None,
    last: str | None,
    order: Callable[[str], tuple[str, ...]] | None = None,
) -> tuple[list[str], bool]:
    """
    A page of ``items`` (sorted by ``order``, plain string order when None) after ``last``
    (exclusive), at most ``n`` long, and whether more items follow it.
    """
    start = paginate_start(items, last, order)
    rest = items[start:]
    if n is None:
        return list(rest), False
    if n == 0:
        # No Link to a next page: a client following it would ask for n=0 forever.
        return [], False
    return list(rest[:n]), len(rest) > n
