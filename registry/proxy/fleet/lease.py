"""
Fill leases: which instance of the fleet fetches a blob from the upstream.

A lease is one Redis key per (cache, digest), set with ``SET NX PX``: the instance that sets
it fetches the blob; the others see who holds it (its instance name, the URL it serves its
fills at, and the upstream repository the fill goes through) and stream from it.  The holder
renews the lease every third of its lifetime; a holder that dies (kill -9, a lost machine)
stops renewing, the key expires, and the next instance that wants the blob takes it over.
Renewal and release compare the value first (a Lua script), so an instance never extends or
deletes a lease that expired and was taken by another.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from registry.api.digests import Digest
from registry.proxy.fleet._redis import FleetRedis, log_redis

log = Logger()

KEY_PREFIX = "txregistry:fill:"

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@attrs.frozen
class Lease:
    """Who fills a blob: ``instance`` (its name), ``url`` (where it serves its fills to the
    other instances; empty when it does not), ``through`` (the upstream repository whose
    path it fetches the blob from)."""

    instance: str
    url: str
    through: str

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Lease | None:
        try:
            value = json.loads(data)
            return cls(str(value["instance"]), str(value["url"]), str(value["through"]))
        except (ValueError, KeyError, TypeError):
            return None


def lease_key(cache: str, digest: Digest) -> str:
    return f"{KEY_PREFIX}{cache}:{digest}"


@attrs.define(eq=False)
class FillLeases:
    """The leases of one instance: acquire, look up, renew while held, release."""

    redis: FleetRedis
    reactor: Any
    instance: str
    url: str
    ttl: float
    _held: dict[str, bytes] = attrs.field(init=False, factory=dict)
    _renewer: LoopingCall | None = attrs.field(init=False, default=None)

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    async def acquire(self, cache: str, digest: Digest, through: str) -> Lease | None:
        """Take the lease; None when taken, else the lease already held by another."""
        key = lease_key(cache, digest)
        value = Lease(self.instance, self.url, through).encode()
        taken = await self.redis.run(lambda r: r.set(key, value, nx=True, px=self.ttl_ms))
        if taken:
            self._held[key] = value
            self._start_renewing()
            return None
        holder = await self._orphan_cleared(key, cache, digest)
        if holder is None:  # released or expired between the two commands: try once more
            taken = await self.redis.run(lambda r: r.set(key, value, nx=True, px=self.ttl_ms))
            if taken:
                self._held[key] = value
                self._start_renewing()
                return None
            holder = await self.holder(cache, digest)
        return holder if holder is not None else Lease("", "", through)

    async def _orphan_cleared(self, key: str, cache: str, digest: Digest) -> Lease | None:
        """
        The lease's holder; None when there is none, or when it names this instance without
        this process holding it: a ``SET`` that timed out here and that Redis applied late
        (Redis hung meanwhile), or a lease of an earlier process of this instance.  Nobody
        fills under such a lease, and waiting for it to lapse would hold every client of
        the blob for the lease's whole time: it is removed (only if it is still that one).
        """
        data = await self.redis.run(lambda r: r.get(key))
        if not isinstance(data, bytes):
            return None
        holder = Lease.decode(data)
        if holder is None or holder.instance != self.instance or key in self._held:
            return holder
        log.info("fill lease {key}: ours but not held here (left over); removing it", key=key)
        await self.redis.script(_RELEASE, [key], [data])
        return None

    async def holder(self, cache: str, digest: Digest) -> Lease | None:
        key = lease_key(cache, digest)
        data = await self.redis.run(lambda r: r.get(key))
        if not isinstance(data, bytes):
            return None
        return Lease.decode(data)

    async def release(self, cache: str, digest: Digest) -> None:
        key = lease_key(cache, digest)
        value = self._held.pop(key, None)
        if not self._held and self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        if value is not None:
            await self.redis.script(_RELEASE, [key], [value])

    def _start_renewing(self) -> None:
        if self._renewer is None:
            self._renewer = LoopingCall(lambda: Deferred.fromCoroutine(self._renew_all()))
            self._renewer.clock = self.reactor
        if not self._renewer.running:
            self._renewer.start(self.ttl / 3, now=False).addErrback(
                lambda f: log.failure("renewing fill leases failed", f)
            )

    async def _renew_all(self) -> None:
        for key, value in list(self._held.items()):
            try:
                renewed = await self.redis.script(_RENEW, [key], [value, self.ttl_ms])
            except Exception as exc:  # Redis down for a moment: the next round tries again
                log_redis(
                    log,
                    exc,
                    "renewing the fill lease {key} failed: {error}",
                    key=key,
                    error=str(exc),
                )
                continue
            if not renewed and key in self._held:
                # Expired (this process was stalled longer than the lease): another instance
                # may fetch the blob too; the fill here still completes and verifies.
                log.warn("fill lease {key} expired before it was renewed", key=key)
                self._held.pop(key, None)

    def stop(self) -> None:
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
