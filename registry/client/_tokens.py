"""
Bearer tokens per scope: cached until they expire, fetched once however many requests wait.

Docker Hub hands out tokens for ``repository:<name>:pull`` that live ``expires_in`` seconds
(the distribution spec says to treat anything under 60 as 60).  Expiry is measured from when
we *asked* for the token on the injected clock, not from the upstream's ``issued_at``: our clock
and theirs may disagree, and asking-time is the conservative end.  A token the upstream
rejects early is dropped with `TokenCache.invalidate` and fetched again by the caller.

Scopes name repositories, which clients choose: the table holds at most ``max_entries``
tokens (least recently used first out) and drops expired ones, so pulling many distinct names
does not grow memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from registry.client._bounded import BoundedMap
from registry.client._inflight import Inflight

MIN_EXPIRES_IN = 60
DEFAULT_EXPIRES_IN = 60
# Tokens kept at most (about 2 KB each): enough for the repositories in use at one time.
MAX_TOKENS = 1024


@attrs.frozen
class Token:
    value: str
    expires_at: float
    issued_at: str | None = None
    # When it was asked for (this process's clock): a token refused right after it was asked
    # for is not asked for again.
    asked_at: float = 0.0


def clamp_expires_in(raw: object) -> int:
    """``expires_in`` as the spec wants it: missing or junk → 60, under 60 → 60."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return DEFAULT_EXPIRES_IN
    return max(int(raw), MIN_EXPIRES_IN)


TokenKey = tuple[str, str, str]  # (realm, service, scope)
Fetcher = Callable[[], Awaitable[tuple[str, int, str | None]]]


@attrs.define
class TokenCache:
    """Tokens by (realm, service, scope); concurrent misses for one key share one fetch."""

    clock: IReactorTime
    max_entries: int = MAX_TOKENS
    _tokens: BoundedMap[TokenKey, Token] = attrs.field(init=False)
    _inflight: Inflight[TokenKey, Token] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Expiry is per token (its ``expires_at``), so no default age.
        self._tokens = BoundedMap(self.clock, self.max_entries, None)
        self._inflight = Inflight(self.max_entries)

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def fetches(self) -> int:
        """How many token fetches were started (for tests and metrics)."""
        return self._inflight.started

    def cached(self, key: TokenKey) -> Token | None:
        return self._tokens.get(key)

    def invalidate(self, key: TokenKey, value: str | None = None) -> None:
        """Forget the token for ``key`` (only if it is still ``value``, when given: another
        request may already have replaced it)."""
        token = self._tokens.get(key)
        if token is not None and (value is None or token.value == value):
            self._tokens.pop(key)

    async def get(self, key: TokenKey, fetch: Fetcher) -> Token:
        token = self.cached(key)
        if token is not None:
            return token

        async def fetch_and_store() -> Token:
            asked_at = self.clock.seconds()
            value, expires_in, issued_at = await fetch()
            fresh = Token(value, asked_at + expires_in, issued_at, asked_at)
            self._tokens.put(key, fresh, fresh.expires_at)
            return fresh

        return await self._inflight.run(key, fetch_and_store)
