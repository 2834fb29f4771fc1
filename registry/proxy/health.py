"""
What the cache knows of its upstream's health, from the answers it gets: while the upstream
is out (refusing connections, hanging, answering 5xx, showing a TLS certificate that does
not verify) or rate-limiting us, the cache stops
asking it for a while, instead of making every client wait for a connection timeout and
sending the upstream one more request (and token fetch) per client request.

- ``THRESHOLD`` failures in a row (no usable answer, a certificate that does not verify: the
  client raises that at once, without retries, or a 429 without ``Retry-After``) hold
  the upstream off for ``[proxy:NAME] hold_off`` seconds (5 by default; 0: never), doubled
  at each failed try up to ``MAX_HOLD``.
- A 429 with ``Retry-After`` holds off the calls of its kind (manifest GETs, blob GETs...)
  that long (at most ``MAX_RETRY_AFTER``, which is what its client is told too): Docker
  Hub's pull limit counts manifest GETs, not the HEADs the cache revalidates tags with nor
  blob downloads, so those go on.  With ``hold_off = 0`` too: that turns off the holds
  after failures, and asking during a rate limit would only use it up.
- While held off, every upstream call fails at once with the last failure's class (so the
  cache answers as it would have: a cached tag served stale, a 429 with the time left, else
  503), and no request reaches the upstream.  Its client is told the failure's status, not
  its reason: that names what another request asked for (another team's repository, say).
- Once the hold has passed, one call goes through as a probe (the others still fail at once
  until it is answered): an answer ends the outage, a failure holds the upstream off again.
- A call that would need one more upstream token while the token table's bound of fetches
  is in flight is not made (`HeldOffOverloaded`: 503 with ``Retry-After: 1``, as for the
  cache's ``max_inflight``); that is the cache's overload, neither an answer nor a failure.

Any answer counts as one (404, 401, a bad body: the upstream is there).  The outage is one
event in the log: one warning when the upstream is held off, one more per failed probe (the
hold doubles, so at most one a minute then), and one line when it answers again, with how many
requests were answered without it.
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
        # 0: no hold after failures ([proxy:NAME] hold_off); a 429's Retry-After still holds.
        self.first_hold = first_hold
        # The outage: failures in a row, the last one, until when no call is made.
        self.failures = 0
        self.last: UpstreamError | None = None
        self.held_until: float | None = None
        self.hold = first_hold
        self.probing = False  # the call that asks once the hold has passed is in flight
        self.since: float | None = None  # when the outage began
        self.spared = 0  # calls answered at once while held off
        # A 429 with Retry-After, by kind of call: Docker Hub limits manifest GETs, not the
        # HEADs tags are revalidated with, nor blob downloads, which go on meanwhile.
        self.limited: dict[str, tuple[float, UpstreamRateLimited]] = {}

    def rate_limits(self) -> str | None:
        """The rate limits the upstream holds this cache to now, in words (None: none): for
        the health check and the metrics, which showed nothing while every manifest GET of
        an image not cached was answered 429."""
        now = self.clock()
        left = {kind: until - now for kind, (until, _) in self.limited.items() if until > now}
        if not left:
            return None
        return "; ".join(f"{kind} not asked for {s:.0f}s more" for kind, s in sorted(left.items()))

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
        if isinstance(last, UpstreamRateLimited):
            return HeldOffRateLimited(None, reason, retry_after=left), False
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
        the call that asked once the hold had passed.  A 429's ``Retry-After`` is waited out
        whatever ``first_hold``: 0 turns off the holds after failures, not that."""
        if probe:
            self.probing = False
        if isinstance(error, UpstreamRateLimited) and error.retry_after is not None:
            self._rate_limited(error, kind, error.retry_after)
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

    async def call(self, make: Callable[[], Awaitable[T]], kind: str = "manifest GET") -> T:
        """Run one upstream call of ``kind`` through this state."""
        refused, probe = self.refusal(kind)
        if refused is not None:
            raise refused
        try:
            result = await make()
        except (UpstreamUnavailable, UpstreamRateLimited, UpstreamUntrustedCertificate) as exc:
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
            raise
        except BaseException:
            if probe:
                self.probing = False  # cancelled, or a defect: the next call probes
            raise
        self.answered()
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
