"""
Bearer tokens per scope: cached until they expire, fetched once however many requests wait.

Docker Hub hands out tokens for ``repository:<name>:pull`` that live ``expires_in`` seconds
(the distribution spec says to treat anything under 60 as 60).  Expiry is measured from when
we *asked* for the token on the injected clock, not from the upstream's ``issued_at``: our clock
and theirs may disagree, and asking-time is the conservative end.  A token the upstream
rejects early is dropped with `TokenCache.invalidate` and fetched again by the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from registry.proxy._inflight import Inflight

MIN_EXPIRES_IN = 60
DEFAULT_EXPIRES_IN = 60


@attrs.frozen
class Token:
    value: str
    expires_at: float
    issued_at: str | None = None


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
    _tokens: dict[TokenKey, Token] = attrs.field(factory=dict)
    _inflight: Inflight[TokenKey, Token] = attrs.field(factory=Inflight)

    @property
    def fetches(self) -> int:
        """How many token fetches were started (for tests and metrics)."""
        return self._inflight.started

    def cached(self, key: TokenKey) -> Token | None:
        token = self._tokens.get(key)
        if token is not None and self.clock.seconds() >= token.expires_at:
            del self._tokens[key]
            return None
        return token

    def invalidate(self, key: TokenKey, value: str | None = None) -> None:
        """Forget the token for ``key`` (only if it is still ``value``, when given: another
        request may already have replaced it)."""
        token = self._tokens.get(key)
        if token is not None and (value is None or token.value == value):
            del self._tokens[key]

    async def get(self, key: TokenKey, fetch: Fetcher) -> Token:
        token = self.cached(key)
        if token is not None:
            return token

        async def fetch_and_store() -> Token:
            asked_at = self.clock.seconds()
            value, expires_in, issued_at = await fetch()
            fresh = Token(value, asked_at + expires_in, issued_at)
            self._tokens[key] = fresh
            return fresh

        return await self._inflight.run(key, fetch_and_store)
