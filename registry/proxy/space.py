"""
Room under ``max_size`` reserved for the fills in flight, so that parallel fills cannot take
the cache over its bound between two evictions.

A fill learns its blob's size from the upstream's answer (``Content-Length``, else a ``HEAD``)
before it writes a byte.  It then *reserves* that size: eviction (reference-aware, least
recently used first, one at a time) frees room until what is cached plus every reservation
plus this one fits ``max_size``, and only then is the reservation granted and the first byte
written.  Granted reservations count toward the total for every later fill and eviction, so
however many fills run at once, what they will store fits: the stored total never goes above
``max_size``.  Manifests reserve their size the same way before they are stored
(`ProxyCache._room_for_manifest`), but do not wait for room: one for which nothing can be
evicted at that moment is stored all the same, and the eviction that follows it takes the
cache back under the bound.  When the fill commits, its reservation becomes the blob's index
entry; when it fails, the reservation is dropped.

When no room can be made within ``space_wait`` (what is cached is being served, or other
reservations hold the rest), the fill does not wait longer: it serves its clients from a
temporary file and does not keep the blob (`ProxyCache._make_room`).  In a fleet the same
rules hold over Redis (`registry.proxy.fleet.ledger`): a grant is written there while the
fleet's eviction lock is held, and lapses within seconds if its instance dies.

This module keeps one instance's side: the reservations it granted, and a way to wait until
something that may have freed room happened (a read, a fill or an eviction ended).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred


@attrs.define(eq=False)
class Reservations:
    """The room this instance reserved for its fills in flight: digest -> bytes."""

    reactor: Any
    granted: dict[str, int] = attrs.field(factory=dict)
    _waiters: list[Deferred[None]] = attrs.field(factory=list)

    @property
    def total(self) -> int:
        return sum(self.granted.values())

    def grant(self, digest: str, size: int) -> None:
        self.granted[digest] = size

    def release(self, digest: str) -> bool:
        """Drop the reservation of ``digest`` (committed or failed); whether there was one."""
        found = self.granted.pop(digest, None) is not None
        self.changed()
        return found

    def changed(self) -> None:
        """Something that may free room happened: wake every fill waiting for room."""
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    async def wait_for_change(self, longest: float) -> None:
        """Until the next `changed`, or ``longest`` seconds (whichever comes first).  The
        bound is also what notices changes this process is not told about (another
        instance's evictions in a fleet)."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        call = self.reactor.callLater(max(0.0, longest), d.cancel)
        try:
            await d
        except CancelledError:
            if call.active():  # cancelled from outside, not by the timer
                raise
        finally:
            if call.active():
                call.cancel()
            if d in self._waiters:
                self._waiters.remove(d)
