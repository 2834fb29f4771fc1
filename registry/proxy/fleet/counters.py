"""
A fleet's cache figures in Redis, so that every instance's cache page shows the fleet's.

Per cache ``C``:

- ``txregistry:stats:C`` (hash): the counters of `registry.proxy.totals` added up over every
  instance and restart, and ``since`` (when counting began).  Each instance adds what it
  counted since its last flush (``HINCRBY``, every ``flush_interval`` and at stop), so
  nothing one instance counts overwrites another's.  When the hash is missing (Redis
  restarted empty or flushed), the flush that finds it so seeds it with the figures that
  instance last knew, in the same script: counts since then from other instances are lost,
  never counted twice.
- ``txregistry:fills:C`` (hash): ``<instance>`` → ``<fills in flight>|<until, ms>``, written
  by each instance's push every second; the cache page adds up the entries that have not
  lapsed (a stopped or killed instance's lapses within seconds) and the script drops the
  others, so the hash holds one field per live instance.
"""

from __future__ import annotations

from typing import Any

import attrs

from registry.proxy.fleet._redis import FleetRedis

# How long an instance's count of fills in flight stands without a newer one (pushes come
# every second).
FILLS_FOR = 5.0

# KEYS: the counters hash; ARGV[1]: ``since`` for a new hash, then (name, seed, delta)
# triples.  The hash afterwards, as HGETALL gives it.
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'since', ARGV[1])
  for i = 2, #ARGV, 3 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
for i = 2, #ARGV, 3 do
  if ARGV[i + 2] ~= '0' then
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: the fills hash; ARGV: instance, its fills in flight, until (ms), now (ms).  The sum
# over the instances whose count has not lapsed; lapsed (or unreadable) fields are dropped.
_FILLS = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
local sum = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local count, untilms = string.match(fields[i + 1], '^(%d+)|(%d+)$')
  if count == nil or tonumber(untilms) < tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    sum = sum + tonumber(count)
  end
end
return sum
"""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@attrs.define(eq=False)
class FleetCounters:
    redis: FleetRedis
    cache: str
    instance: str
    # The fleet's fills in flight as of this instance's last push (None before the first).
    fills: int | None = None

    @property
    def stats_key(self) -> str:
        return f"txregistry:stats:{self.cache}"

    @property
    def fills_key(self) -> str:
        return f"txregistry:fills:{self.cache}"

    async def add(
        self, seed: dict[str, int], since: float, deltas: dict[str, int]
    ) -> tuple[dict[str, int], float | None]:
        """Add ``deltas`` to the fleet's counters (first seeding them with ``seed`` and
        ``since`` if Redis has none); the fleet's counters and ``since`` afterwards."""
        args: list[Any] = [repr(since)]
        for name, value in seed.items():
            args += [name, str(value), str(deltas.get(name, 0))]
        script = self.redis.registered(_ADD)
        reply = await self.redis.run(lambda r: script(keys=[self.stats_key], args=args, client=r))
        fields = {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
        counters: dict[str, int] = {}
        for name in seed:
            try:
                counters[name] = max(0, int(fields.get(name, "0")))
            except ValueError:
                counters[name] = 0
        try:
            started: float | None = float(fields["since"])
        except (KeyError, ValueError):
            started = None
        return counters, started

    async def report_fills(self, count: int, now: float) -> int:
        """Record this instance's fills in flight; the fleet's (every live instance's)."""
        args = [self.instance, str(count), str(int((now + FILLS_FOR) * 1000)), str(int(now * 1000))]
        script = self.redis.registered(_FILLS)
        total = await self.redis.run(lambda r: script(keys=[self.fills_key], args=args, client=r))
        self.fills = int(total)
        return self.fills
