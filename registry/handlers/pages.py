"""The ``Link: <...>; rel="next"`` header of paginated lists (tags, catalog, referrers)."""

from __future__ import annotations

from urllib.parse import urlencode


def next_link(path: str, n: int | None, last: str, **params: str) -> str:
    query = {**params, "last": last}
    if n is not None:
        query["n"] = str(n)
    return f'<{path}?{urlencode(query)}>; rel="next"'
