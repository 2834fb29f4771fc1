"""
What the cache knows of its upstream's health, from the answers it gets: while the upstream
is out (refusing connections, hanging, answering 5xx, showing a TLS certificate that does
not verify) or rate-limiting us, the cache stops
asking it for a while, instead of making every client wait for a connection timeout and
sending the upstream one more request (and token fetch) per client request.

- ``THRESHOLD`` failures in a row (no usable answer, a certificate that does not verify: the
  client raises that at once, without retries) hold the upstream off for ``[proxy:NAME]
  hold_off`` seconds (5 by default; 0: never), doubled at each failed try up to
  ``MAX_HOLD``.
- A 429 is an answer (the upstream is there: it ends an outage, and is no failure towards
  one), and it concerns its kind of call only (manifest GETs, blob GETs...): Docker Hub's
  pull limit counts manifest GETs, not the HEADs the cache revalidates tags with nor blob
  downloads, so those go on.  The calls of its kind are held off:

  - with ``Retry-After``: that long, at most ``MAX_RETRY_AFTER``.  With ``hold_off = 0``
    too: that turns off the holds after failures, and asking during a rate limit would only
    use it up.
  - without: ``hold_off`` seconds for the first 429 of its kind; a 429 to the first call of
    that kind made after the hold doubles it (up to ``MAX_HOLD``, or ``hold_off`` if
    longer); the first answer other than a 429 to a call of that kind starts it over (no
    answer, a 5xx, say nothing of the rate limit: they leave it).  With ``hold_off = 0`` no
    hold: each such 429 goes to its client as it is, without ``Retry-After``.

  The client whose call met the 429 is told that hold in ``Retry-After`` (not the hours
  Docker Hub may ask for: the cache asks again sooner), those held off the time left.  A
  429 to a call made before its kind's hold began (calls in flight) leaves the hold as it
  is.  ``rate_limits`` (the health check, the metrics) names the kinds held off.
- While held off, every upstream call (of the kind rate-limited) fails at once (so the cache
  answers as it would have: a cached tag served stale, else a 429 for a rate limit, a 503
  for an outage, with the time left), and no request reaches the upstream.  Its client is
  told the failure's status, not its reason: that names what another request asked for
  (another team's repository, say).
- Once the hold has passed, one call goes through as a probe (the others still fail at once
  until it is answered): an answer ends the outage, a failure holds the upstream off again.
- A call that would need one more upstream token while the token table's bound of fetches
  is in flight is not made (`HeldOffOverloaded`: 503 with ``Retry-After: 1``, as for the
  cache's ``max_inflight``); that is the cache's overload, neither an answer nor a failure.

Any answer counts as one (404, 401, a 429, a bad body: the upstream is there), and so does a
failure of a host the upstream redirected to (a CDN refusing, hanging or answering 5xx: the
upstream answered with the redirect; that one download fails).  The outage is
one event in the log: one warning when the upstream is held off, one more per failed probe
(the hold doubles, so at most one a minute then), and one line when it answers again, with how
many requests were answered without it.  A rate limit is one warning per hold of its kind
(``rate-limits manifest GET requests``; ``still rate-limits`` when a 429 without
``Retry-After`` doubles the hold), not a line per request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.logger import Logger

from registry.client._inflight import Overloaded
from registry.proxy.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
    UpstreamUntrustedCertificate,
)

log = Logger()

T = TypeVar("T")

THRESHOLD = 3
FIRST_HOLD = 5.0
MAX_HOLD = 60.0
# Docker Hub's pull limit answers a Retry-After of hours: the cache asks again after this.
MAX_RETRY_AFTER = 300.0


class UpstreamHealth:
    """One upstream's state, on ``clock`` (seconds).  Calls are of a ``kind``: ``manifest
    GET``, ``manifest HEAD``, ``blob GET``, ``blob HEAD``, ``tags``, ``referrers``."""

    def __init__(
        self,
        name: str,
        url: str,
        clock: Callable[[], float] = time.monotonic,
        first_hold: float = FIRST_HOLD,
    ) -> None:
        self.name = name
        self.url = url
        self.clock = clock
        # 0: no hold after failures ([proxy:NAME] hold_off), nor after a 429 without
        # Retry-After; a 429's Retry-After still holds.
        self.first_hold = first_hold
        # The outage: failures in a row, the last one, until when no call is made.
        self.failures = 0
        self.last: UpstreamError | None = None
        self.held_until: float | None = None
        self.hold = first_hold
        self.probing = False  # the call that asks once the hold has passed is in flight
        self.since: float | None = None  # when the outage began
        self.spared = 0  # calls answered at once while held off
        # A 429's hold, by kind of call: Docker Hub limits manifest GETs, not the HEADs tags
        # are revalidated with, nor blob downloads, which go on meanwhile.
        self.limited: dict[str, tuple[float, UpstreamRateLimited]] = {}
        # The last hold of a 429 without Retry-After, by kind of call, until a call of that
        # kind gets another answer: the next such 429 doubles it.
        self.waits: dict[str, float] = {}

    def rate_limits(self) -> str | None:
        """The rate limits the upstream holds this cache to now, in words (None: none): for
        the health check and the metrics, which showed nothing while every manifest GET of
        an image not cached was answered 429."""
        now = self.clock()
        left = {kind: until - now for kind, (until, _) in self.limited.items() if until > now}
        if not left:
            return None
        return "; ".join(f"{kind} not asked for {s:.0f}s more" for kind, s in sorted(left.items()))

    def holds(self, kind: str) -> bool:
        """Whether a call of ``kind`` would be refused now (`refusal`), without counting it
        or making it the probe: for a caller deciding whether to try at all."""
        now = self.clock()
        limit = self.limited.get(kind)
        if limit is not None and now < limit[0]:
            return True
        held_until = self.held_until
        return held_until is not None and (now < held_until or self.probing)

    def refusal(self, kind: str = "manifest GET") -> tuple[UpstreamError | None, bool]:
        """The error a call gets at once now (None: it may ask the upstream), and whether
        the call is the probe (the one that asks once the hold has passed)."""
        now = self.clock()
        limit = self.limited.get(kind)
        if limit is not None:
            until, error = limit
            if now < until:
                reason = f"not asked until its rate limit ends ({_state(error)})"
                return HeldOffRateLimited(None, reason, retry_after=max(until - now, 1.0)), False
            del self.limited[kind]
        held_until = self.held_until
        if held_until is None:
            return None, False
        if now >= held_until and not self.probing:
            self.probing = True
            return None, True
        self.spared += 1
        last = self.last
        reason = f"not asked while it is out ({_state(last)})"
        # The next try is at the end of the hold (or once the probe under way is answered).
        left = max(held_until - now, 1.0)
        return HeldOffUnavailable(None, reason, retry_after=left), False

    def answered(self) -> None:
        if self.held_until is not None:
            now = self.clock()
            log.info(
                "proxy {upstream}: {url} answers again after {seconds:.0f}s out; {spared}"
                " requests were answered without it meanwhile",
                upstream=self.name,
                url=self.url,
                seconds=now - (self.since if self.since is not None else now),
                spared=self.spared,
                event="proxy_upstream_back",
            )
            self.spared = 0
        self.failures = 0
        self.last = None
        self.held_until = None
        self.hold = self.first_hold
        self.probing = False
        self.since = None

    def failed(self, error: UpstreamError, kind: str = "manifest GET", probe: bool = False) -> None:
        """A call got no usable answer (``UpstreamUnavailable``, or a TLS certificate that
        did not verify: ``UpstreamUntrustedCertificate``) or a 429; ``probe``: it was
        the call that asked once the hold had passed.  A 429 is an answer, and holds off its
        kind of call only.  A 429's ``Retry-After`` is waited out whatever ``first_hold``:
        0 turns off the holds after failures and 429s without one, not that."""
        if probe:
            self.probing = False
        if isinstance(error, UpstreamRateLimited):
            if error.retry_after is not None:
                self._rate_limited(error, kind, error.retry_after)
            else:
                self._rate_limited_unsaid(error, kind)
            return
        if self.first_hold <= 0:
            return  # hold_off = 0: no hold after failures
        now = self.clock()
        self.failures += 1
        self.last = error
        if self.since is None:
            self.since = now
        again = self.held_until is not None
        if not again:
            if self.failures < THRESHOLD:
                return
            hold = self.hold
        elif probe:
            self.hold = hold = min(self.hold * 2, MAX_HOLD)
        else:
            return  # a call made before the hold began: the hold (and any probe) stands
        self.held_until = now + hold
        log.warn(
            "proxy {upstream}: {url} {state}: {reason}; answering without asking it for"
            " {hold:.0f}s",
            upstream=self.name,
            url=self.url,
            state="still out" if again else f"out ({self.failures} failures in a row)",
            reason=error.reason[:300],
            hold=hold,
            event="proxy_upstream_out",
        )

    def _rate_limited(self, error: UpstreamRateLimited, kind: str, retry_after: float) -> None:
        """A 429 with ``Retry-After``: an answer (the upstream is there), and this kind of
        call waits as it says, up to ``MAX_RETRY_AFTER``.  The error tells its client that
        wait, not a longer one the cache does not keep to (Docker Hub's hours)."""
        self.answered()
        hold = min(retry_after, MAX_RETRY_AFTER)
        error.retry_after = hold
        if kind not in self.limited:
            log.warn(
                "proxy {upstream}: {url} rate-limits {kind} requests: {reason}; not"
                " asking it for {hold:.0f}s",
                upstream=self.name,
                url=self.url,
                kind=kind,
                reason=error.reason[:300],
                hold=hold,
                event="proxy_upstream_rate_limited",
            )
        self.limited[kind] = (self.clock() + hold, error)

    def _rate_limited_unsaid(self, error: UpstreamRateLimited, kind: str) -> None:
        """A 429 without ``Retry-After``: an answer (the upstream is there), and this kind
        of call waits a default: ``first_hold`` for the first such 429, doubled (up to
        ``MAX_HOLD``, or ``first_hold`` if longer) at each one that follows its hold, until
        a call of its kind gets another answer (`waits`).  The error tells its client that
        wait; with ``first_hold`` 0 there is none, and the client gets the 429 as it is."""
        self.answered()
        now = self.clock()
        limit = self.limited.get(kind)
        if limit is not None and now < limit[0]:
            # A call made before this kind's hold began: the hold stands, as its client hears.
            error.retry_after = max(limit[0] - now, 1.0)
            return
        if self.first_hold <= 0:
            return  # hold_off = 0: no hold of our own
        previous = self.waits.get(kind)
        if previous is None:
            hold = self.first_hold
        else:
            hold = min(previous * 2, max(MAX_HOLD, self.first_hold))
        self.waits[kind] = hold
        error.retry_after = hold
        log.warn(
            "proxy {upstream}: {url} {state} {kind} requests: {reason}; not asking it for"
            " {hold:.0f}s (it said no Retry-After)",
            upstream=self.name,
            url=self.url,
            state="rate-limits" if previous is None else "still rate-limits",
            kind=kind,
            reason=error.reason[:300],
            hold=hold,
            event="proxy_upstream_rate_limited",
        )
        self.limited[kind] = (now + hold, error)

    async def call(self, make: Callable[[], Awaitable[T]], kind: str = "manifest GET") -> T:
        """Run one upstream call of ``kind`` through this state."""
        refused, probe = self.refusal(kind)
        if refused is not None:
            raise refused
        try:
            result = await make()
        except (UpstreamUnavailable, UpstreamUntrustedCertificate) as exc:
            if exc.elsewhere is not None:
                # A host the upstream redirected to (a CDN) failed: the upstream answered
                # (with the redirect), so that is no outage of it, and one blob's trouble
                # there holds off nobody's manifests.
                self.answered()
                raise
            self.failed(exc, kind, probe)
            raise
        except UpstreamRateLimited as exc:
            self.failed(exc, kind, probe)
            raise
        except Overloaded:
            # Too many token requests in flight (the client's token table): this call was
            # not made, which says nothing of the upstream (neither an answer nor a failure).
            if probe:
                self.probing = False  # the next call probes
            raise HeldOffOverloaded() from None
        except UpstreamError:
            self.answered()  # an answer all the same: the upstream is there
            self.waits.pop(kind, None)  # and not a 429: its kind's next one starts over
            raise
        except BaseException:
            if probe:
                self.probing = False  # cancelled, or a defect: the next call probes
            raise
        self.answered()
        self.waits.pop(kind, None)
        return result


def _state(failure: UpstreamError | None) -> str:
    """What a client held off is told of the failure another request met: its status, not
    its reason, which names what that request asked for (``manifest team/app:tag: ...``, a
    token's scope): another team's repository, tag or digest.  The log has the reason."""
    if isinstance(failure, UpstreamUntrustedCertificate):
        return "its TLS certificate did not verify"
    if failure is None or failure.status is None:
        return "no answer"
    return f"it answered {failure.status}"


class HeldOff(UpstreamError):
    """What a call gets when it was not made: while the upstream is held off
    (`UpstreamHealth.refusal`; the outage was said once already), or while too many token
    requests are in flight (`HeldOffOverloaded`).  Nothing to log per request."""


class HeldOffUnavailable(UpstreamUnavailable, HeldOff):
    def __init__(self, status: int | None, reason: str, retry_after: float) -> None:
        super().__init__(status, reason)
        self.retry_after = retry_after  # when the upstream is asked again, at the earliest


class HeldOffRateLimited(UpstreamRateLimited, HeldOff):
    pass


class HeldOffOverloaded(HeldOffUnavailable):
    """A call not made because too many others wait for their upstream token: the token
    table holds a bounded number of fetches in flight (`registry.client._tokens`), and a new
    scope beyond it raises `Overloaded`, which would otherwise reach a handler as a 500.  The
    cache's own overload, answered as its ``max_inflight`` is (503, ``Retry-After: 1``)."""

    def __init__(self) -> None:
        super().__init__(
            None, "not asked: too many of its token requests in flight", retry_after=1.0
        )
