"""
The fleet's cache index in Redis: sizes, references and last use of everything cached, so
that eviction sees what all instances cached and keeps their sum under ``max_size``.

Redis is the fleet's index of record: an instance keeps only what it added or used since its
last push and a capped table of recent entries (`registry.proxy.fleet.index.FleetIndex`), and
sends them every second in one pipeline (not one command per request).  Per cache ``C``:

- ``txregistry:index:C`` (hash): ``b|<digest>`` → blob size; ``m|<repo>|<digest>`` → a
  manifest's size and references (JSON);
- ``txregistry:names:C:<digest>`` (set): the repositories linking a cached blob;
- ``txregistry:lru:C`` (sorted set): each ``b|``/``m|`` entry → its last use (only moves
  forward, ``ZADD GT``);
- ``txregistry:total:C``: bytes of every entry; ``txregistry:refs:C`` (hash): digest → how
  many cached manifests reference it; ``txregistry:digests:C`` (hash): digest → how many
  entries have it.  These are kept by the same Lua scripts that add and remove entries
  (`_ADD`, `_REMOVE`), so eviction needs no sum over the index and memory stays flat in the
  number of entries;
- ``txregistry:inuse:C`` (sorted set): ``<instance>|<digest>`` for what an instance serves
  or fills → until when (renewed every second while in use and removed once not, so a dead
  instance's marks lapse within seconds);
- ``txregistry:reserved:C`` (sorted set): ``<instance>|<digest>|<size>`` for the room a fill
  in flight reserved under ``max_size`` (`registry.proxy.space`) → until when (renewed with the
  in-use marks, so a dead instance's reservations lapse within seconds too);
- ``txregistry:evict:C``: the eviction lock: one eviction at a time in the fleet.  Its value
  is ``<instance>|<token>`` (a token per process); it lives ``lock_ttl`` (``[fleet] lease``)
  and its holder renews it every third of that while its eviction runs, so a holder that dies
  (kill -9) stops the fleet's evictions and admissions for at most that long.  Only the
  holder renews or releases it (the scripts compare the value).  One that names this instance
  but that this process does not hold was left by an earlier process of the instance, or by
  this one when its release failed (Redis away) or when Redis applied a ``SET`` that had
  timed out here: nobody evicts under it, so it is taken over at once (`Ledger.lock`);
- ``txregistry:alive:C:<instance>``: set by each push, lapses ``ALIVE_FOR`` seconds after
  the instance stops: the fill files of an instance without it are leftovers of a dead one
  (`ProxyCache.sweep_dead_fills`).  Its value is the URL the instance serves its fills at
  (``[fleet] advertise``, empty without ``listen``): a fill lease's URL is contacted, with
  the fleet secret, only when it is the one its instance advertises here (`Ledger.advertised`);
  ``txregistry:instances:C`` (set): the instances that started, until their leftovers are
  removed;
- ``txregistry:evicting:C:<digest>``: a blob being deleted by an eviction (renewed with the
  lock while the delete runs, so it expires by itself within ``lock_ttl`` if that instance
  dies);
- ``txregistry:epoch:C``: written once the index holds everything cached.  Every push checks
  it first (`_ESTABLISH`): when it is missing, Redis lost the fleet's state (restarted empty,
  flushed) or never had it, and the instance whose push found it missing (one: the script
  sets it) re-registers the whole cache from storage (its repositories' ``_layers`` and
  manifest revisions), then makes the key permanent.  Until then it expires after
  ``rebuild_ttl``, so another instance rebuilds if that one dies meanwhile.

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

Eviction (`ProxyCache.evict`) takes the lock, sends its own changes, reads the total and the
reservations, then walks the LRU order a page at a time (`page`), evicting what is neither in
use nor referenced by a cached manifest until the total fits, and removes what it deleted
from Redis (`remove`) page by page.

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
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from registry.proxy.fleet._redis import FleetRedis, RedisUnavailable, log_redis
from registry.proxy.fleet.index import FleetIndex
from registry.proxy.index import Victim

log = Logger()

IN_USE_FOR = 5.0
# How long an instance counts as alive after its last push (pushes come every second).
ALIVE_FOR = 30.0

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: the eviction lock; ARGV: this process's token, lifetime (ms), '<instance>|'.
# 0: another instance holds it; 1: taken; 2: taken over from a holder of this instance's
# name (not this process's eviction: see the module's docstring).
_LOCK = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, string.len(ARGV[3])) ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if held then
  return 2
end
return 1
"""

# KEYS: the eviction lock, then the evicting keys this process claimed; ARGV: this process's
# token, lifetime (ms).  Each key still holding the token lives that long again; 1 when the
# lock was one of them.
_RENEW = """
local held = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    if i == 1 then
      held = 1
    end
  end
end
return held
"""

# KEYS: the eviction lock, the reserved set; ARGV: this process's token, member, until.
# Granted only under the lock: one that lapsed meanwhile (this process stalled) may be
# another instance's now, whose admission does not count this room.
_RESERVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
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

# The scripts below keep the index hash, the LRU order and the counters derived from them
# (total, references, entries per digest, a blob's repositories) in step: Redis runs each
# script whole, so no reader ever sees one without the others.
# KEYS: index, lru, total, refs, digests; ARGV[1]: the prefix of the repositories' sets.
_ENTRIES = """
local function entry_of(field, value)
  if string.sub(field, 1, 2) == 'b|' then
    return tonumber(value), {}, string.sub(field, 3)
  end
  local decoded = cjson.decode(value)
  return tonumber(decoded[1]), decoded[2], string.match(field, '([^|]*)$')
end
local function count(field, value, sign)
  local size, refs, digest = entry_of(field, value)
  redis.call('INCRBY', KEYS[3], sign * size)
  for _, ref in ipairs(refs) do
    if redis.call('HINCRBY', KEYS[4], ref, sign) <= 0 then
      redis.call('HDEL', KEYS[4], ref)
    end
  end
  if redis.call('HINCRBY', KEYS[5], digest, sign) <= 0 then
    redis.call('HDEL', KEYS[5], digest)
  end
end
-- The counters of an index written before they existed are built once, here (the
-- repositories linking a blob were fields 'n|<digest>|<repository>' of the hash then).
local function ensure()
  if redis.call('EXISTS', KEYS[3]) == 1 then
    return
  end
  redis.call('DEL', KEYS[4], KEYS[5])
  redis.call('SET', KEYS[3], 0)
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    local field = fields[i]
    if string.sub(field, 1, 2) == 'n|' then
      local rest = string.sub(field, 3)
      local bar = string.find(rest, '|', 1, true)
      redis.call('SADD', ARGV[1] .. string.sub(rest, 1, bar - 1), string.sub(rest, bar + 1))
      redis.call('HDEL', KEYS[1], field)
    else
      count(field, fields[i + 1], 1)
    end
  end
end
ensure()
"""

# ARGV[2..]: field, value, last use, repositories (newline-separated) of each entry added.
_ADD = (
    _ENTRIES
    + """
for i = 2, #ARGV, 4 do
  local field, value = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', KEYS[1], field)
  if old ~= value then
    if old then
      count(field, old, -1)
    end
    count(field, value, 1)
    redis.call('HSET', KEYS[1], field, value)
  end
  redis.call('ZADD', KEYS[2], 'GT', ARGV[i + 2], field)
  for name in string.gmatch(ARGV[i + 3], '[^\\n]+') do
    redis.call('SADD', ARGV[1] .. string.sub(field, 3), name)
  end
end
return redis.call('GET', KEYS[3])
"""
)

# ARGV[2..]: the fields of the entries evicted.
_REMOVE = (
    _ENTRIES
    + """
for i = 2, #ARGV do
  local field = ARGV[i]
  local old = redis.call('HGET', KEYS[1], field)
  if old then
    count(field, old, -1)
    redis.call('HDEL', KEYS[1], field)
    if string.sub(field, 1, 2) == 'b|' then
      redis.call('DEL', ARGV[1] .. string.sub(field, 3))
    end
  end
  redis.call('ZREM', KEYS[2], field)
end
return redis.call('GET', KEYS[3])
"""
)

_TOTAL = _ENTRIES + "return redis.call('GET', KEYS[3])"

# KEYS: the epoch key; ARGV: this instance, how long its rebuild may take (ms).  1: the key
# was missing (Redis lost the fleet's state, or never had it): this instance rebuilds.
_ESTABLISH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], 'rebuilding ' .. ARGV[1], 'PX', ARGV[2])
return 1
"""


@attrs.frozen
class Entry:
    """One entry of the fleet's index as eviction sees it."""

    victim: Victim
    last_used: float
    referenced: bool  # a cached manifest references its digest
    releases: bool  # a manifest with references: evicting it may free older entries


def _entry(
    field: str, digest: str, value: bytes, last_used: float, refcount: Any, names: set[bytes]
) -> Entry:
    referenced = refcount is not None and int(refcount) > 0
    if field.startswith("b|"):
        linked = frozenset(n.decode() for n in names)
        return Entry(Victim("blob", digest, None, int(value), linked), last_used, referenced, False)
    name = field[2:].rpartition("|")[0]
    size, refs = json.loads(value)
    victim = Victim("manifest", digest, name, int(size))
    return Entry(victim, last_used, referenced, bool(refs))


def _blob_field(digest: str) -> str:
    return f"b|{digest}"


def _manifest_field(name: str, digest: str) -> str:
    return f"m|{name}|{digest}"


@attrs.define(eq=False)
class Ledger:
    redis: FleetRedis
    cache: str
    instance: str
    # How long the eviction lock and an eviction's claims live unless renewed (the holder
    # renews them every third of it): how long a dead holder stops the fleet's evictions.
    lock_ttl: float = 15.0
    # How long one instance may take to re-register the cache before another one does.
    rebuild_ttl: float = 300.0
    # Where this instance serves its fills to the others (read at each beat: it is known only
    # once the peer listener is bound).
    url: Callable[[], str] = lambda: ""
    # This process's value for the lock and its claims: the instance's name first, so that
    # a later process of the instance knows a lock it finds was left by an earlier one.
    _token: str = attrs.field(init=False)
    # Whether this process holds the eviction lock (from `lock` until `unlock`, or until a
    # renewal finds it lapsed); which acquisition that is; what its eviction claimed.
    _holding: bool = attrs.field(init=False, default=False)
    _acquired: int = attrs.field(init=False, default=0)
    _claimed: set[str] = attrs.field(init=False, factory=set)
    _renewer: LoopingCall | None = attrs.field(init=False, default=None)
    # In-use marks this instance holds in Redis (``<instance>|<digest>``): dropped as soon
    # as the digest is no longer in use here, so that eviction need not wait for them to lapse.
    _marked: set[str] = attrs.field(factory=set)
    # Room this instance's fills reserved: digest -> member of the reserved set, renewed by
    # every push; and those to remove with the next push, after their index entries.
    _reserved: dict[str, str] = attrs.field(factory=dict)
    _releasing: dict[str, str] = attrs.field(factory=dict)
    # Set by a push that found the epoch key missing (and set it): this instance must
    # re-register the cache from storage (`registry.proxy.cache.ProxyCache.reregister`).
    lost: bool = False

    def __attrs_post_init__(self) -> None:
        self._token = f"{self.instance}|{uuid.uuid4().hex}"

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

    @property
    def epoch_key(self) -> str:
        return f"txregistry:epoch:{self.cache}"

    @property
    def total_key(self) -> str:
        return f"txregistry:total:{self.cache}"

    @property
    def refs_key(self) -> str:
        return f"txregistry:refs:{self.cache}"

    @property
    def digests_key(self) -> str:
        return f"txregistry:digests:{self.cache}"

    @property
    def names_prefix(self) -> str:
        return f"txregistry:names:{self.cache}:"

    @property
    def _entry_keys(self) -> list[str]:
        return [self.index_key, self.lru_key, self.total_key, self.refs_key, self.digests_key]

    async def push(self, index: FleetIndex, now: float, beat: bool = False) -> None:
        """Send the entries added and used here since the last push, and the digests in use
        here; with ``beat`` (the timer's pushes), say this instance is alive even when nothing
        changed."""
        batch = index.drain()
        releasing, self._releasing = self._releasing, {}
        args: list[Any] = [self.names_prefix]
        for digest, blob in batch.blobs.items():
            args += [_blob_field(digest), str(blob.size), blob.last_used, "\n".join(blob.names)]
        # A reservation goes only with its blob's entry, sent again here in case an earlier
        # push carrying it is still on its way on another connection.
        for digest in releasing:
            size = index.known_size(digest)
            if digest not in batch.blobs and size is not None:
                args += [_blob_field(digest), str(size), now, ""]
        for (name, digest), manifest in batch.manifests.items():
            value = json.dumps([manifest.size, list(manifest.refs)])
            args += [_manifest_field(name, digest), value, manifest.last_used, ""]
        touched = {_blob_field(d): when for d, when in batch.touched_blobs.items()}
        for (name, digest), when in batch.touched_manifests.items():
            touched[_manifest_field(name, digest)] = when
        in_use = {
            f"{self.instance}|{digest}": now + IN_USE_FOR
            for digest, count in index.in_use.items()
            if count > 0
        }
        released = sorted(self._marked - set(in_use))
        reserved = {member: now + IN_USE_FOR for member in self._reserved.values()}
        adding = len(args) > 1
        if not (adding or touched or in_use or released or beat or reserved or releasing):
            return
        add = self.redis.registered(_ADD)
        establish = self.redis.registered(_ESTABLISH)
        rebuild_ms = max(1, int(self.rebuild_ttl * 1000))

        def send(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            # First, before this push adds anything: is the fleet's state still there?
            establish(keys=[self.epoch_key], args=[self.instance, rebuild_ms], client=pipe)
            if adding:
                add(keys=self._entry_keys, args=args, client=pipe)
            if touched:  # only entries still cached: an evicted one is not brought back
                pipe.zadd(self.lru_key, touched, xx=True, gt=True)
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
                pipe.set(self.alive_key(self.instance), self.url(), px=int(ALIVE_FOR * 1000))
            return pipe.execute()

        try:
            replies = await self.redis.run(send)
        except Exception:
            index.restore(batch)  # sent with the next push
            self._releasing.update(releasing)
            raise
        self._marked = set(in_use)
        if int(replies[0]) == 1:
            self.lost = True
        if adding:
            index.size = int(replies[1])

    async def established(self) -> None:
        """The cache's entries were all re-registered: the epoch key stays (no expiry)."""
        value = f"{self.instance}"
        await self.redis.run(lambda r: r.set(self.epoch_key, value))

    async def state(self, now: float) -> tuple[int, dict[str, int], Counter[str]]:
        """The fleet's total (bytes of every cached entry), the room reserved by fills in
        flight (``<instance>|<digest>`` -> bytes) and the digests in use on any instance,
        read in one transaction: a blob whose reservation was just released is in the
        total."""
        total = self.redis.registered(_TOTAL)

        def read(client: Any) -> tuple[Any, Any, Any]:
            pipe = client.pipeline(transaction=True)
            pipe.zrangebyscore(self.reserved_key, now, "+inf")
            total(keys=self._entry_keys, args=[self.names_prefix], client=pipe)
            pipe.zrangebyscore(self.inuse_key, now, "+inf")
            reserved, size, in_use = pipe.execute()
            return reserved, size, in_use

        raw_reserved, size, raw_in_use = await self.redis.run(read)
        reservations: dict[str, int] = {}
        for raw in raw_reserved:
            member, _, amount = raw.decode().rpartition("|")
            if amount.isdigit():
                reservations[member] = int(amount)
        in_use: Counter[str] = Counter(m.decode().partition("|")[2] for m in raw_in_use)
        return int(size), reservations, in_use

    async def page(self, offset: int, count: int) -> list[Entry]:
        """Up to ``count`` entries in least-recently-used order from ``offset``, with what
        eviction needs of each (size, references to it, a blob's repositories, a manifest's
        references)."""

        def read(client: Any) -> list[Entry]:
            ranked = client.zrange(self.lru_key, offset, offset + count - 1, withscores=True)
            if not ranked:
                return []
            fields = [member.decode() for member, _score in ranked]
            digests = [field.rpartition("|")[2] for field in fields]
            pipe = client.pipeline(transaction=False)
            pipe.hmget(self.index_key, fields)
            pipe.hmget(self.refs_key, digests)
            for field, digest in zip(fields, digests, strict=True):
                if field.startswith("b|"):
                    pipe.smembers(self.names_prefix + digest)
            values, refcounts, *names = pipe.execute()
            entries: list[Entry] = []
            blob_names = iter(names)
            for (field, digest, value, refcount), (_m, score) in zip(
                zip(fields, digests, values, refcounts, strict=True), ranked, strict=True
            ):
                linked = next(blob_names) if field.startswith("b|") else set()
                if value is None:
                    continue  # removed since the range was read
                entries.append(_entry(field, digest, value, float(score), refcount, linked))
            return entries

        return await self.redis.run(read)

    async def blob_size(self, digest: str) -> int | None:
        raw = await self.redis.run(lambda r: r.hget(self.index_key, _blob_field(digest)))
        return None if raw is None else int(raw)

    async def blob_names(self, digests: list[str]) -> list[set[str]]:
        """The repositories linking each of ``digests`` in the fleet's index."""
        if not digests:
            return []

        def read(client: Any) -> list[set[str]]:
            pipe = client.pipeline(transaction=False)
            for digest in digests:
                pipe.smembers(self.names_prefix + digest)
            return [{n.decode() for n in names} for names in pipe.execute()]

        return await self.redis.run(read)

    async def has_manifest(self, name: str, digest: str) -> bool:
        field = _manifest_field(name, digest)
        return bool(await self.redis.run(lambda r: r.hexists(self.index_key, field)))

    async def entries_with(self, digest: str) -> int:
        """How many entries (a blob, manifests in any repository) have ``digest``."""
        raw = await self.redis.run(lambda r: r.hget(self.digests_key, digest))
        return 0 if raw is None else int(raw)

    async def reserve(self, digest: str, size: int, now: float) -> bool:
        """Record room for a fill of ``digest``, only while this process holds the eviction
        lock (see the module's docstring): False when it does not (it lapsed); renewed by
        every push until released."""
        member = f"{self.instance}|{digest}|{size}"
        granted = await self.redis.script(
            _RESERVE, [self.lock_key, self.reserved_key], [self._token, member, now + IN_USE_FOR]
        )
        if granted:
            self._reserved[digest] = member
        return bool(granted)

    async def still_reserved(self, digest: str, now: float) -> bool:
        """Whether the room reserved for ``digest`` still counts for every instance.  One
        this process did not renew within `IN_USE_FOR` (it stalled: a paused VM, a stopped
        process, Redis out of reach) lapsed, and another instance's admission may have
        counted its room since: it is dropped here (no push renews it again) and False."""
        member = self._reserved.get(digest)
        if member is None:
            return False
        score = await self.redis.run(lambda r: r.zscore(self.reserved_key, member))
        if score is not None and float(score) >= now:
            return True
        self._reserved.pop(digest, None)
        await self.redis.run(lambda r: r.zrem(self.reserved_key, member))
        return False

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
        """The fleet's total: bytes of every entry any instance cached (one script call)."""
        total = self.redis.registered(_TOTAL)

        def read(client: Any) -> Any:
            return total(keys=self._entry_keys, args=[self.names_prefix], client=client)

        return int(await self.redis.run(read))

    async def remove(self, victims: Iterable[Victim]) -> int:
        """Forget evicted entries; the fleet's total afterwards."""
        fields = [
            _blob_field(v.digest) if v.kind == "blob" else _manifest_field(v.name or "", v.digest)
            for v in victims
        ]
        args = [self.names_prefix, *fields]
        return int(await self.redis.script(_REMOVE, self._entry_keys, args))

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
            pipe.set(key, self.url(), px=int(ALIVE_FOR * 1000))
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

    async def advertised(self, instance: str) -> str | None:
        """The URL ``instance`` serves its fills at, as it says itself in its alive key;
        None when it is not alive."""
        value = await self.redis.run(lambda r: r.get(self.alive_key(instance)))
        if not isinstance(value, bytes):
            return None
        return value.decode("utf-8", "replace")

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

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.lock_ttl * 1000))

    async def claim(self, digest: str, now: float) -> bool:
        """Before deleting ``digest`` (holding the eviction lock, which renews the claim):
        False when any instance holds it (keep it)."""
        claimed = await self.redis.script(
            _CLAIM,
            [self.inuse_key, self.evicting_key(digest)],
            [f"|{digest}", now, self._token, self._ttl_ms],
        )
        if claimed:
            self._claimed.add(digest)
        return bool(claimed)

    async def unclaim(self, digest: str) -> None:
        self._claimed.discard(digest)
        await self.redis.script(_UNLOCK, [self.evicting_key(digest)], [self._token])

    @property
    def holding(self) -> bool:
        """Whether this process still holds the eviction lock it took (False once a renewal
        found it lapsed: another instance may be evicting now)."""
        return self._holding

    async def lock(self) -> bool:
        """Take the fleet's eviction lock (False: another instance holds it) and renew it
        until `unlock`.  The caller runs one eviction at a time in this process, so a lock
        naming this instance is not held by it: it is taken over (see the module's
        docstring)."""
        taken = await self.redis.script(
            _LOCK, [self.lock_key], [self._token, self._ttl_ms, f"{self.instance}|"]
        )
        if not taken:
            return False
        if taken == 2:
            log.info(
                "eviction lock {key}: ours but not held here (left over); taking it over",
                key=self.lock_key,
            )
        self._holding = True
        self._acquired += 1
        if self._renewer is None:
            self._renewer = LoopingCall(lambda: Deferred.fromCoroutine(self._renew()))
            self._renewer.clock = self.redis.reactor
        if not self._renewer.running:
            self._renewer.start(self.lock_ttl / 3, now=False).addErrback(
                lambda f: log.failure("renewing the eviction lock failed", f)
            )
        return True

    async def _renew(self) -> None:
        acquired = self._acquired
        keys = [self.lock_key, *(self.evicting_key(d) for d in sorted(self._claimed))]
        try:
            renewed = await self.redis.script(_RENEW, keys, [self._token, self._ttl_ms])
        except RedisUnavailable as exc:  # Redis away for a moment: the next round tries again
            log_redis(
                log,
                exc,
                "renewing the eviction lock {key} failed: {error}",
                key=self.lock_key,
                error=str(exc),
            )
            return
        if not renewed and self._holding and acquired == self._acquired:
            # This process (or Redis) stalled for longer than the lock lives: another
            # instance may evict now.  Claims stay safe; this eviction stops at its next page
            # and grants no room (`reserve` checks the lock).
            log.warn(
                "eviction lock {key} lapsed before it was renewed; this eviction stops",
                key=self.lock_key,
            )
            self._holding = False

    async def unlock(self) -> None:
        """Release the eviction lock, if it is still this process's."""
        self._holding = False
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        await self.redis.script(_UNLOCK, [self.lock_key], [self._token])
