"""
The fleet's cache index in Redis: sizes, references and last use of everything cached, so
that eviction sees what all instances cached and keeps their sum under ``max_size``.

Each instance keeps its `CacheIndex` in memory as a single instance does, records which
entries changed (``CacheIndex.changed``) and sends them every second in one pipeline (not one
command per request).  Per cache ``C``:

- ``txregistry:index:C`` (hash): ``b|<digest>`` → blob size; ``n|<digest>|<repo>`` → a
  repository linking it; ``m|<repo>|<digest>`` → a manifest's size and references (JSON);
- ``txregistry:lru:C`` (sorted set): each ``b|``/``m|`` entry → its last use (only moves
  forward, ``ZADD GT``);
- ``txregistry:inuse:C`` (sorted set): ``<instance>|<digest>`` for what an instance serves
  or fills → until when (renewed every second while in use and removed once not, so a dead
  instance's marks lapse within seconds);
- ``txregistry:reserved:C`` (sorted set): ``<instance>|<digest>|<size>`` for the room a fill
  in flight reserved under ``max_size`` (`registry.proxy.space`) → until when (renewed with the
  in-use marks, so a dead instance's reservations lapse within seconds too);
- ``txregistry:evict:C``: the eviction lock (``SET NX PX``): one eviction at a time in the
  fleet;
- ``txregistry:alive:C:<instance>``: set by each push, lapses ``ALIVE_FOR`` seconds after
  the instance stops: the fill files of an instance without it are leftovers of a dead one
  (`ProxyCache.sweep_dead_fills`); ``txregistry:instances:C`` (set): the instances that
  started, until their leftovers are removed;
- ``txregistry:evicting:C:<digest>``: a blob being deleted by an eviction (expires by itself
  if that instance dies).

A cached blob is never deleted under a read that has begun on any instance.  The in-use marks
above are sent in batches, so they alone would leave a second in which another instance's
eviction could delete a blob a read has just opened.  So before a cached blob is opened, the
reader *holds* it (`Ledger.hold`: one Lua script writes its in-use mark unless the blob is
being evicted), and an eviction *claims* each blob before deleting it (`Ledger.claim`: one Lua
script sets the ``evicting`` key unless some instance holds a live mark).  Redis runs scripts
one at a time, so exactly one of the two wins: either the eviction sees the mark and keeps the
blob, or the reader sees the claim, does not open the cached copy and treats the blob as not
cached.  (A grace period after a last use would need the same atomic check, and would still
depend on how long reads take; the mark is renewed for as long as the read lasts.)

Eviction (`ProxyCache.evict`) takes the lock, sends its own changes, reads the whole index
back (`load`), plans with the same reference-aware `CacheIndex.plan` as a single instance,
deletes, and removes what it deleted from Redis.

Room for a fill is reserved the same way: under the lock, with the reservations of every
instance subtracted from ``max_size`` (`ProxyCache._admit`), and the grant written before the
lock is released, so two instances never count the same room.  A reservation must count until
the blob's index entry does: a committed fill's reservation is removed by the push that sends
that entry, after it in the same pipeline (`release_with_entry`), and readers read the
reservations before the index, in one transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import attrs

from registry.proxy.fleet._redis import FleetRedis
from registry.proxy.index import BlobEntry, CacheIndex, ManifestEntry, Victim

IN_USE_FOR = 5.0
# How long an instance counts as alive after its last push (pushes come every second).
ALIVE_FOR = 30.0

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: in-use set, evicting key; ARGV: member, until.
_HOLD = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: in-use set, evicting key; ARGV: '|' .. digest, now, token, ttl in ms.
_CLAIM = """
local suffix = ARGV[1]
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')) do
  if string.sub(member, -string.len(suffix)) == suffix then
    return 0
  end
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"""


def _blob_field(digest: str) -> str:
    return f"b|{digest}"


def _name_field(digest: str, name: str) -> str:
    return f"n|{digest}|{name}"


def _manifest_field(name: str, digest: str) -> str:
    return f"m|{name}|{digest}"


@attrs.define(eq=False)
class Ledger:
    redis: FleetRedis
    cache: str
    instance: str
    lock_ttl: float = 300.0
    _token: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    # In-use marks this instance holds in Redis (``<instance>|<digest>``): dropped as soon
    # as the digest is no longer in use here, so that eviction need not wait for them to lapse.
    _marked: set[str] = attrs.field(factory=set)
    # Room this instance's fills reserved: digest -> member of the reserved set, renewed by
    # every push; and those to remove with the next push, after their index entries.
    _reserved: dict[str, str] = attrs.field(factory=dict)
    _releasing: dict[str, str] = attrs.field(factory=dict)

    @property
    def index_key(self) -> str:
        return f"txregistry:index:{self.cache}"

    @property
    def lru_key(self) -> str:
        return f"txregistry:lru:{self.cache}"

    @property
    def inuse_key(self) -> str:
        return f"txregistry:inuse:{self.cache}"

    @property
    def reserved_key(self) -> str:
        return f"txregistry:reserved:{self.cache}"

    @property
    def lock_key(self) -> str:
        return f"txregistry:evict:{self.cache}"

    async def push(self, index: CacheIndex, now: float, beat: bool = False) -> None:
        """Send the entries changed since the last push, and the digests in use here; with
        ``beat`` (the timer's pushes), say this instance is alive even when nothing changed."""
        changed = index.changed
        if changed is None:
            return
        index.changed = set()
        releasing, self._releasing = self._releasing, {}
        fields: dict[str, str] = {}
        scores: dict[str, float] = {}
        # A reservation goes only with its blob's entry, sent again here in case an earlier
        # push carrying it is still on its way on another connection.
        sent = changed | {("blob", "", digest) for digest in releasing}
        for kind, name, digest in sent:
            if kind == "blob":
                blob = index.blobs.get(digest)
                if blob is None:
                    continue
                fields[_blob_field(digest)] = str(blob.size)
                for linked in blob.names:
                    fields[_name_field(digest, linked)] = ""
                scores[_blob_field(digest)] = blob.last_used
            else:
                manifest = index.manifests.get((name, digest))
                if manifest is None:
                    continue
                field = _manifest_field(name, digest)
                fields[field] = json.dumps([manifest.size, list(manifest.refs)])
                scores[field] = manifest.last_used
        in_use = {
            f"{self.instance}|{digest}": now + IN_USE_FOR
            for digest, count in index.in_use.items()
            if count > 0
        }
        released = sorted(self._marked - set(in_use))
        reserved = {member: now + IN_USE_FOR for member in self._reserved.values()}
        if not (fields or in_use or released or beat or reserved or releasing):
            return

        def send(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            if fields:
                pipe.hset(self.index_key, mapping=fields)
                pipe.zadd(self.lru_key, scores, gt=True)
                # A new entry has no score yet: GT does not add it, so add the missing ones.
                pipe.zadd(self.lru_key, scores, nx=True)
            if in_use:
                pipe.zadd(self.inuse_key, in_use)
            if released:
                pipe.zrem(self.inuse_key, *released)
            pipe.zremrangebyscore(self.inuse_key, "-inf", now)
            if reserved:
                pipe.zadd(self.reserved_key, reserved, xx=True)
            if releasing:  # after the entries above
                pipe.zrem(self.reserved_key, *releasing.values())
            pipe.zremrangebyscore(self.reserved_key, "-inf", now)
            if beat:
                pipe.set(self.alive_key(self.instance), "1", px=int(ALIVE_FOR * 1000))
            pipe.execute()

        try:
            await self.redis.run(send)
        except Exception:
            index.changed |= changed  # sent with the next push
            self._releasing.update(releasing)
            raise
        self._marked = set(in_use)

    async def load(self, now: float) -> CacheIndex:
        """The fleet's index: what every instance cached, and what any of them uses now."""
        index, _reservations = await self.load_with_reservations(now)
        return index

    async def load_with_reservations(self, now: float) -> tuple[CacheIndex, dict[str, int]]:
        """`load`, and the room reserved by fills in flight (``<instance>|<digest>`` ->
        bytes), read in one transaction (reservations first): a blob whose reservation was
        just released is in the index."""

        def read(client: Any) -> tuple[Any, Any, Any, Any]:
            pipe = client.pipeline(transaction=True)
            pipe.zrangebyscore(self.reserved_key, now, "+inf")
            pipe.hgetall(self.index_key)
            pipe.zrange(self.lru_key, 0, -1, withscores=True)
            pipe.zrangebyscore(self.inuse_key, now, "+inf")
            reserved, fields, scores, in_use = pipe.execute()
            return reserved, fields, scores, in_use

        raw_reserved, fields, scores, in_use = await self.redis.run(read)
        reservations: dict[str, int] = {}
        for raw in raw_reserved:
            member, _, size = raw.decode().rpartition("|")
            if size.isdigit():
                reservations[member] = int(size)
        last_used = {member.decode(): float(score) for member, score in scores}
        index = CacheIndex()
        names: dict[str, set[str]] = {}
        for raw_field, raw_value in fields.items():
            field = raw_field.decode()
            kind, _, rest = field.partition("|")
            if kind == "b":
                index.blobs[rest] = BlobEntry(int(raw_value), last_used.get(field, now))
            elif kind == "n":
                digest, _, name = rest.partition("|")
                names.setdefault(digest, set()).add(name)
            elif kind == "m":
                name, _, digest = rest.rpartition("|")
                size, refs = json.loads(raw_value)
                index.manifests[(name, digest)] = ManifestEntry(
                    int(size), last_used.get(field, now), tuple(str(r) for r in refs)
                )
                index.refcount.update(str(r) for r in refs)
        for digest, linked in names.items():
            if digest in index.blobs:
                index.blobs[digest].names = linked
        for member in in_use:
            index.in_use[member.decode().partition("|")[2]] += 1
        return index, reservations

    async def reserve(self, digest: str, size: int, now: float) -> None:
        """Record room for a fill of ``digest`` (hold the eviction lock: see the module's
        docstring); renewed by every push until released."""
        member = f"{self.instance}|{digest}|{size}"
        await self.redis.run(lambda r: r.zadd(self.reserved_key, {member: now + IN_USE_FOR}))
        self._reserved[digest] = member

    async def unreserve(self, digest: str) -> None:
        """The fill failed: its room is free now."""
        member = self._reserved.pop(digest, None)
        if member is not None:
            await self.redis.run(lambda r: r.zrem(self.reserved_key, member))

    def release_with_entry(self, digest: str) -> None:
        """The fill committed: its reservation goes with the next push, after the blob's
        index entry (so the room is counted by one or the other at every moment)."""
        member = self._reserved.pop(digest, None)
        if member is not None:
            self._releasing[digest] = member

    async def size(self) -> int:
        index = await self.load(0.0)
        return index.size

    async def remove(self, victims: Iterable[Victim]) -> None:
        fields: list[str] = []
        for victim in victims:
            if victim.kind == "blob":
                fields.append(_blob_field(victim.digest))
                fields += [_name_field(victim.digest, name) for name in victim.names]
            else:
                fields.append(_manifest_field(victim.name or "", victim.digest))
        if not fields:
            return

        def delete(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.hdel(self.index_key, *fields)
            pipe.zrem(self.lru_key, *fields)
            pipe.execute()

        await self.redis.run(delete)

    def alive_key(self, instance: str) -> str:
        return f"txregistry:alive:{self.cache}:{instance}"

    @property
    def instances_key(self) -> str:
        return f"txregistry:instances:{self.cache}"

    async def beat(self) -> None:
        """Say this instance is alive (at start, before its first fill; then every push),
        and list it among those whose fill files to look after once it is gone (unfinished
        S3 uploads are not listed as files)."""
        key = self.alive_key(self.instance)

        def send(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.set(key, "1", px=int(ALIVE_FOR * 1000))
            pipe.sadd(self.instances_key, self.instance)
            pipe.execute()

        await self.redis.run(send)

    async def known_instances(self) -> set[str]:
        members = await self.redis.run(lambda r: r.smembers(self.instances_key))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def forget(self, instance: str) -> None:
        await self.redis.run(lambda r: r.srem(self.instances_key, instance))

    async def alive(self, instances: list[str]) -> set[str]:
        """Those of ``instances`` that pushed within the last ``ALIVE_FOR`` seconds."""
        if not instances:
            return set()
        keys = [self.alive_key(name) for name in instances]
        found = await self.redis.run(lambda r: r.mget(keys))
        return {name for name, value in zip(instances, found, strict=True) if value is not None}

    def evicting_key(self, digest: str) -> str:
        return f"txregistry:evicting:{self.cache}:{digest}"

    async def hold(self, digest: str, now: float) -> bool:
        """Mark ``digest`` in use by this instance in Redis now, unless an eviction is
        deleting it (False: do not open the cached copy)."""
        member = f"{self.instance}|{digest}"
        held = await self.redis.script(
            _HOLD, [self.inuse_key, self.evicting_key(digest)], [member, now + IN_USE_FOR]
        )
        if held:
            # Renewed by the next push while in use here, removed by it once not.
            self._marked.add(member)
        return bool(held)

    async def claim(self, digest: str, now: float) -> bool:
        """Before deleting ``digest``: False when any instance holds it (keep it)."""
        ttl = max(1, int(self.lock_ttl * 1000))
        return bool(
            await self.redis.script(
                _CLAIM,
                [self.inuse_key, self.evicting_key(digest)],
                [f"|{digest}", now, self._token, ttl],
            )
        )

    async def unclaim(self, digest: str) -> None:
        await self.redis.script(_UNLOCK, [self.evicting_key(digest)], [self._token])

    async def lock(self) -> bool:
        ttl = max(1, int(self.lock_ttl * 1000))
        return bool(
            await self.redis.run(lambda r: r.set(self.lock_key, self._token, nx=True, px=ttl))
        )

    async def unlock(self) -> None:
        await self.redis.script(_UNLOCK, [self.lock_key], [self._token])
