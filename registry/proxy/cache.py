"""
The pull-through cache of one upstream: blobs and manifests served from local storage when
cached, fetched (once, however many clients ask) when not, and evicted under a size bound.

Everything cached lands in the registry:2 layout under the repository's *local* name (blob data,
``_layers`` links, ``_manifests/revisions`` and tags), so a cached image stays pullable with the
upstream gone, and the usual tools (garbage collection, registry:2 itself) understand it.

Tags are revalidated with an upstream HEAD (Docker Hub does not count HEADs against its rate
limit) at most every ``tag_freshness`` seconds; by-digest content never goes upstream once
cached.  When the upstream fails (down, slow, 429, 5xx) a cached tag is served stale and the
event logged; only with nothing cached does the client get the error.  A cached tag the
upstream answers 404 for is removed here (`ProxyCache._forget_tag`), so that no outage later
serves it again.

With a fleet (``fleet``, `registry.proxy.fleet`), a fill first takes the blob's lease in Redis;
when another instance holds it, the client is served from that instance's fill as it arrives
(`_from_fleet`), and eviction walks the whole fleet's index in Redis a page at a time
(`_evict_fleet`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredLock, DeferredSemaphore
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer

from registry.api.digests import Digest, DigestingHasher, releases_gil
from registry.api.errors import (
    BLOB_UNKNOWN,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    TOOMANYREQUESTS,
    UNAVAILABLE,
    ErrorCode,
    RegistryError,
)
from registry.client._bounded import BoundedMap
from registry.client._inflight import Inflight, Overloaded
from registry.failures import log_failure
from registry.manifests import stored_media_type
from registry.manifests.references import manifest_refs
from registry.proxy import index_open
from registry.proxy.config import MAX_INFLIGHT, ProxyConfig, looks_like_host
from registry.proxy.errors import (
    ResumeFailed,
    UpstreamAccessDenied,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamForeignChallenge,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from registry.proxy.fill import Fill, FillProtocol, ObservedProducer, StoreFailed, TailProducer
from registry.proxy.fleet import Fleet, HeldElsewhere, Lease, RedisUnavailable, StoredMeanwhile
from registry.proxy.fleet._redis import log_redis
from registry.proxy.fleet.counters import FleetCounters
from registry.proxy.fleet.follow import ResumingProducer
from registry.proxy.fleet.index import HOT_ENTRIES, FleetIndex
from registry.proxy.fleet.ledger import Ledger
from registry.proxy.fleet.peer import PeerTLSFailure, PeerUnavailable
from registry.proxy.health import HeldOff, HeldOffOverloaded, HeldOffUnavailable
from registry.proxy.index import ICacheIndex, MemoryIndex, Victim
from registry.proxy.outage import StorageReads
from registry.proxy.partials import digest_of_fill, partial_name, rehash
from registry.proxy.space import Reservations
from registry.proxy.spool import PARTIALS
from registry.proxy.totals import CacheTotals
from registry.proxy.upstream import (
    UpstreamBlob,
    UpstreamClient,
    UpstreamManifest,
    index_descriptors,
)
from registry.storage import layout
from registry.storage.blobs import BlobInfo, BlobStore
from registry.storage.catalog import Catalog
from registry.storage.driver import (
    IFileWriter,
    IStorageDriver,
    PathBusyError,
    PathNotFoundError,
    StorageError,
)
from registry.storage.gcguard import GcGuard
from registry.storage.hash_offload import HashThreads, OffloadedHasher, all_hashed
from registry.storage.listing import digest_folders, list_or_empty
from registry.storage.manifests import StoredManifest
from registry.storage.pagination import paginate
from registry.storage.tags import TagStore

log = Logger()


async def sleep(reactor: Any, seconds: float) -> None:
    d: Deferred[None] = Deferred()
    call = reactor.callLater(seconds, d.callback, None)
    try:
        await d
    finally:
        if call.active():
            call.cancel()


def state_dir(upstream: str) -> str:
    return f"{layout.OWN}/proxy/{upstream}"


class _CountStopped(Exception):
    """The count after an unclean stop was interrupted by a stop (`stop_counting`)."""


@attrs.define
class UpstreamStats:
    """Counters for metrics and the periodic log line (bytes from upstream: the client's)."""

    hits: int = 0
    misses: int = 0
    served_bytes: int = 0  # from the cache (hits)
    upstream_errors: int = 0
    stale_served: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    corrupt_blobs: int = 0
    unkept_fills: int = 0  # served without being kept (registry.proxy.space)
    fill_resumes: int = 0  # Range GETs asking for the rest of cut upstream bodies
    # Fills that began from the bytes an interrupted fill kept (a restart: `partials`).
    restart_resumes: int = 0


def upstream_error(exc: UpstreamError, code: ErrorCode, detail: dict[str, Any]) -> RegistryError:
    """The client's answer when the upstream failed and nothing cached can stand in."""
    detail = {**detail, "upstream": exc.reason[:300]}
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(code, detail)
    if isinstance(exc, UpstreamRateLimited):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(exc.retry_after))
        return RegistryError(
            TOOMANYREQUESTS, detail, "upstream rate limit reached", headers=headers
        )
    if isinstance(exc, UpstreamAccessDenied):
        # The upstream's own refusal of a token it issued: a private or unknown repository
        # there (Docker Hub answers both alike), not a fault of the gateway.
        return RegistryError(code, detail)
    if isinstance(exc, UpstreamForeignChallenge):
        # A host the upstream sent us to wants credentials of its own: ours are not in
        # question (and were not sent there).
        message = "a host the upstream redirected to asked for authentication"
        return RegistryError(UNAVAILABLE, detail, message, status=502)
    if isinstance(exc, UpstreamUnauthorized):
        return RegistryError(UNAVAILABLE, detail, "upstream refused our credentials", status=502)
    if isinstance(exc, UpstreamBadResponse):
        return RegistryError(UNAVAILABLE, detail, "upstream answer cannot be trusted", status=502)
    if isinstance(exc, HeldOffOverloaded):  # not asked: too many token requests in flight
        return overloaded(detail)
    if isinstance(exc, HeldOffUnavailable):  # not asked before then (registry.proxy.health)
        headers = {"Retry-After": str(math.ceil(exc.retry_after))}
        return RegistryError(UNAVAILABLE, detail, "upstream registry unavailable", headers=headers)
    return RegistryError(UNAVAILABLE, detail, "upstream registry unavailable")


def _resume_failure(position: int, exc: RegistryError) -> str:
    """Why a fleet body could not be resumed, in one line: the answer it would have been,
    and the upstream's reason when there is one."""
    reason = exc.detail.get("upstream") if isinstance(exc.detail, dict) else None
    said = f"{exc.message}: {reason}" if reason else exc.message
    return f"could not resume at byte {position}: {said}"


def overloaded(detail: dict[str, Any]) -> RegistryError:
    """Too many distinct upstream calls in flight: the client should come back later."""
    return RegistryError(
        UNAVAILABLE,
        detail,
        "too many upstream requests in flight; try again",
        headers={"Retry-After": "1"},
    )


HostedUses = Callable[[Digest], Awaitable[bool]]

# A fill reads the upstream socket in reads of up to this size: each chunk costs a reactor
# turn, a trip through the HTTP parser and a delivery to every reader, so fewer is cheaper.
FILL_READ_SIZE = 1024 * 1024

# A fill whose upstream body is cut asks for the rest (``Range``) up to this many times in a
# row without progress in between, pausing this long before the second such try, twice that
# before the third: a CDN connection dropped once is asked again at once, an upstream that
# keeps failing ends the fill (and its clients' bodies) within a few seconds.  A try makes
# progress when it brings at least ``FILL_RESUME_PROGRESS`` bytes (or the rest of the blob):
# an upstream that cuts every body after a few bytes (or sends the blob from its start each
# time, cut just past where it was asked to start) is not asked a thousand times.  And at
# most ``FILL_RESUMES_MOST`` tries per fill, however much each brought.
FILL_RESUMES = 3
FILL_RESUME_PAUSE = 0.5
FILL_RESUME_PROGRESS = 1024 * 1024
FILL_RESUMES_MOST = 20

# A fill wakes a hashing thread once this much is queued (not once per chunk): well under
# the hash threads' high-water mark, so that a worker slow to be scheduled on a busy machine
# does not pause the upstream read.  Not larger: a chunk hashed long after it was read is
# out of the processor's cache, and that costs more than the wake-ups saved (a cold pull's
# cache CPU went up 9% with 4 MiB batches, 15% with 8 MiB; 1 MiB measured the same as 2:
# bench/results/2026-12-05-cold-cpu.md).
FILL_HASH_BATCH = 2 * 1024 * 1024

# Bounds of the tables whose keys clients choose (names, tags, digests): see `Limits`.
MAX_REMEMBERED = 8_192
CONFIRMATION_AGE = 60.0
# How soon a fleet eviction that left the cache over max_size (in use) runs again.
FLEET_EVICTION_RETRY = 2.0
# A fleet's eviction reads the LRU order this many entries at a time, and at most this many
# pages in one eviction (a bound on the walk, far above any cache's needs).
FLEET_PAGE = 256
FLEET_WALK_PAGES = 100_000
# How often a fleet's evictions also remove the fill files of instances that died.
SWEEP_INTERVAL = 300.0
# How often a fill waiting for room looks again without being told something changed, and
# how soon it tries again when another instance held the fleet's eviction lock.
SPACE_POLL = 1.0
LOCK_RETRY = 0.02
# Upstream referrers lists read at once per cache (`ProxyCache.referrers`).
REFERRER_READS = 2
# What an upstream's 404 for a tag must name for the tag to be gone there (registry:2 answers
# MANIFEST_UNKNOWN, or NAME_UNKNOWN for the whole repository).
REGISTRY_GONE = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})
# A blob whose upstream body failed its digest (or its length) this many times in a row, each
# within ``BAD_BODY_AGE`` seconds of the last, is answered 502 without asking again until
# that time has passed since the last: a client's retries (docker makes five) would otherwise
# each fetch the whole bad body, and its user would see only bodies cut short.  One retry
# still asks: the upstream may have been repaired meanwhile.
BAD_BODIES = 2
BAD_BODY_AGE = 30.0


class PartialMismatch(StorageError):
    """The bytes an interrupted fill kept, and the rest the upstream sent, do not hash to the
    blob's digest: the kept bytes are taken for damaged (a disk's, a person's), not the
    upstream's answer (the next fill asks for the whole blob)."""


@attrs.frozen
class Limits:
    """How much per-key state a cache keeps.  ``inflight``: distinct upstream calls (fills,
    HEADs, revalidations) at once, beyond which clients get 503; ``remembered``: entries of
    each table of recent answers (tag checks, per-repository confirmations, verified blobs);
    ``confirmation_age``: how long a "this repository has this digest" answer is reused."""

    inflight: int = MAX_INFLIGHT
    remembered: int = MAX_REMEMBERED
    confirmation_age: float = CONFIRMATION_AGE


async def _never_hosted(digest: Digest) -> bool:
    return False


@attrs.define(eq=False)
class ProxyCache:
    config: ProxyConfig
    client: UpstreamClient
    driver: IStorageDriver
    blobs: BlobStore
    tags: TagStore
    reactor: Any
    catalog: Catalog | None = None
    # Whether a hosted (non-cache) repository uses a digest: its data must then stay.
    hosted_uses: HostedUses = _never_hosted
    # Every cache of the process: blob data shared with another upstream's cache stays.
    peers: list[ProxyCache] = attrs.field(factory=list)
    # What is cached and when it was last used: on disk for a single instance (the service
    # gives it a `registry.proxy.stored.StoredIndex`); in Redis for a fleet, whose instances
    # keep a `registry.proxy.fleet.index.FleetIndex` (set up here when ``fleet`` is given).
    index: ICacheIndex = attrs.field(factory=MemoryIndex)
    stats: UpstreamStats = attrs.field(factory=UpstreamStats)
    # The same counters added up across restarts (saved by the ProxyService), for the UI.
    totals: CacheTotals = attrs.field(factory=CacheTotals)
    limits: Limits = attrs.field(factory=Limits)
    # Several instances sharing this cache (registry.proxy.fleet), or None for one instance.
    fleet: Fleet | None = None
    # A local folder fills are spooled to when the storage's partial files are not readable
    # while written (S3): readers follow the spool (registry.proxy.fill).
    spool: IStorageDriver | None = None
    # The service's hashing threads: verified reads hash there (None: on the reactor thread,
    # for a cache built without a service).
    hash_threads: HashThreads | None = None
    ledger: Ledger | None = attrs.field(init=False, default=None)
    # A fleet's figures for the cache page (its counters, its fills in flight), or None.
    counters: FleetCounters | None = attrs.field(init=False, default=None)
    _fills: dict[Digest, Fill] = attrs.field(init=False, factory=dict)
    # Fills whose storage failed, still relaying their upstream body (`Fill.start_relay`):
    # out of ``_fills`` (the next request fills again) but still fills in flight, each with
    # its upstream connection, so counted with them against ``limits.inflight``.
    _relaying: set[Fill] = attrs.field(init=False, factory=set)
    # Blob HEADs by (upstream name, digest): a HEAD answers for one repository only.
    _heads: Inflight[tuple[str, Digest], int] = attrs.field(init=False)
    _revalidations: Inflight[tuple[str, str], Digest | StoredManifest] = attrs.field(init=False)
    # Manifests asked for by digest and tag-list pages, by what is asked of the upstream:
    # clients asking together (a fleet of nodes starting one pod) cost one upstream request,
    # which Docker Hub counts against the pull limit, and one body in memory.
    _digest_reads: Inflight[tuple[str, str], StoredManifest] = attrs.field(init=False)
    _tag_reads: Inflight[tuple[str, int | None, str | None], tuple[list[str], bool]] = attrs.field(
        init=False
    )
    # (upstream name, digest) -> size: the upstream said this repository has this blob.
    _confirmed: BoundedMap[tuple[str, Digest], int] = attrs.field(init=False)
    _checked: BoundedMap[tuple[str, str], float] = attrs.field(init=False)
    # (local name, tag) -> the upstream's 404: cached tags the upstream deleted (`_forget_tag`),
    # still answered 404 while the upstream is down rather than 503 (its last answer, as a
    # cached tag is served stale); forgotten when the upstream has the tag again.
    _gone: BoundedMap[tuple[str, str], str] = attrs.field(init=False)
    # Blobs whose stored data was hashed by this process (at fill or on a full read): later
    # reads skip the hashing, which would halve the throughput of warm pulls.
    _verified: BoundedMap[str, bool] = attrs.field(init=False)
    # Blobs whose last upstream bodies could not be trusted: how many in a row, and why
    # (`BAD_BODIES`).
    _bad_bodies: BoundedMap[tuple[str, Digest], tuple[int, str]] = attrs.field(init=False)
    # Room reserved under max_size by the fills in flight here (registry.proxy.space).
    space: Reservations = attrs.field(init=False)
    # Whether lookups in the storage work: while they fail, pulls are served from upstream.
    reads: StorageReads = attrs.field(init=False)
    # Until the index is read back from storage, sizes and the eviction order are not known
    # yet: readiness says so (registry.server.build), and /metrics would show 0.
    state_loaded: bool = attrs.field(init=False, default=False)
    # The count of a cache without a saved index failed half way (`load_state`): the index
    # is partial, and is counted again before it is saved.
    recount_pending: bool = attrs.field(init=False, default=False)
    # Whether this process's `index_open` marker is in storage (written at start, or at a
    # later flush when the storage refused it then), and whether the index is known to be
    # whole: False while a count after an unclean stop is due or running, so that a stop
    # before it ends leaves the marker for the next start.
    _open_marked: bool = attrs.field(init=False, default=False)
    _index_whole: bool = attrs.field(init=False, default=True)
    # The count after an unclean stop, run beside serving (`load_state`).
    _counting: Deferred[None] | None = attrs.field(init=False, default=None)
    _stop_counting: bool = attrs.field(init=False, default=False)
    # One eviction (or admission of a fill's reservation) at a time; later ones queue.
    _eviction_lock: DeferredLock = attrs.field(init=False, factory=DeferredLock)
    # Upstream referrers lists read at once: each may be many pages (up to the client's
    # bound, 64 MiB), so clients asking together queue here rather than multiply it.
    _referrer_reads: DeferredSemaphore = attrs.field(
        init=False, factory=lambda: DeferredSemaphore(REFERRER_READS)
    )
    _eviction_scheduled: bool = False
    _swept: float = 0.0
    # While the start-up tidies what interrupted fills left (`clean_fills`), fills wait for
    # it here: the first fill of a blob after a restart then finds the bytes kept for it.
    _tidying: list[Deferred[None]] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        limits, clock = self.limits, self.reactor
        self._heads = Inflight(limits.inflight)
        self._revalidations = Inflight(limits.inflight)
        self._digest_reads = Inflight(limits.inflight)
        self._tag_reads = Inflight(limits.inflight)
        self._confirmed = BoundedMap(clock, limits.remembered, limits.confirmation_age)
        self._checked = BoundedMap(clock, limits.remembered, None)
        self._gone = BoundedMap(clock, limits.remembered, None)
        self._verified = BoundedMap(clock, limits.remembered, None)
        self._bad_bodies = BoundedMap(clock, limits.remembered, BAD_BODY_AGE)
        self.space = Reservations(clock)
        self.reads = StorageReads(
            self.name, self.reactor, lambda: list_or_empty(self.driver, state_dir(self.name))
        )
        if self.fleet is not None:
            leases = self.fleet.leases
            # The eviction lock lives as long as a fill lease: a dead holder of either
            # holds the fleet up for that long.
            self.ledger = Ledger(
                self.fleet.redis,
                self.name,
                self.fleet.instance,
                lock_ttl=leases.ttl,
                url=lambda: leases.url,
            )
            # Redis holds the fleet's index; this process what it has not pushed yet.
            self.index = FleetIndex(self.ledger, min(HOT_ENTRIES, limits.remembered))
            self.counters = FleetCounters(self.fleet.redis, self.name, self.fleet.instance)

    def fleet_index(self) -> FleetIndex:
        """A fleet instance's side of the index (the ledger pushes it)."""
        assert isinstance(self.index, FleetIndex), "a fleet's index is in Redis"
        return self.index

    def table_sizes(self) -> dict[str, int]:
        """Entries of every table keyed by what clients ask for (tests check the bounds)."""
        return {
            "fills": len(self._fills),
            "relaying": len(self._relaying),
            "heads": len(self._heads),
            "revalidations": len(self._revalidations),
            "confirmed": len(self._confirmed),
            "checked": len(self._checked),
            "gone": len(self._gone),
            "verified": len(self._verified),
            "bad_bodies": len(self._bad_bodies),
            "tokens": len(self.client.tokens),
            **self.index.tables(),
        }

    @property
    def name(self) -> str:
        return self.config.name

    def now(self) -> float:
        return float(self.reactor.seconds())

    @property
    def fills_dir(self) -> str:
        if self.fleet is not None:  # each instance clears only its own at start
            return f"{state_dir(self.name)}/fills/{self.fleet.instance}"
        return f"{state_dir(self.name)}/fills"

    @property
    def partials_dir(self) -> str:
        """Where the bytes of interrupted fills wait for the next fill of their blob."""
        return f"{state_dir(self.name)}/partials"

    @property
    def keeps_partials(self) -> bool:
        """Whether an interrupted fill's bytes are kept in the storage to resume from: on
        the filesystem, whose fill files are written in place and survive a restart."""
        return (
            self.config.partial_age > 0
            and self.spool is None
            and getattr(self.driver, "name", "") == "filesystem"
        )

    @property
    def spool_keeps_partials(self) -> bool:
        """Whether they are kept in the local spool instead (S3: a fill's multipart upload
        cannot be read back or continued, its spool file can; `registry.proxy.spool`)."""
        return self.config.partial_age > 0 and self.spool is not None

    def _partials_place(self) -> tuple[IStorageDriver, str] | None:
        """Where kept bytes are: a driver and a folder in it."""
        if self.keeps_partials:
            return self.driver, self.partials_dir
        if self.spool_keeps_partials:
            assert self.spool is not None
            return self.spool, PARTIALS
        return None

    def inflight_fill(self, digest: Digest) -> Fill | None:
        """The fill of ``digest`` running here (the fleet's peers stream it)."""
        return self._fills.get(digest)

    @property
    def active_fills(self) -> int:
        return len(self._fills) + len(self._relaying)

    @property
    def fills_everywhere(self) -> int:
        """The fills in flight of the whole fleet (as of the last push), or this instance's."""
        if self.counters is not None and self.counters.fills is not None:
            return self.counters.fills
        return self.active_fills

    # -- blobs

    async def _local_blob(self, local: str, digest: Digest) -> BlobInfo | None:
        """The cached blob if it is complete; a blob whose data is missing or whose size
        disagrees with what was cached is a miss (and is dropped), so it gets fetched again."""
        if not await self.blobs.is_linked(local, digest):
            return None
        info = await self.blobs.exists(digest)
        if info is None:
            await self._forget_missing(digest)
            return None
        recorded = await self.index.touch_blob(str(digest), self.now())
        if recorded is None:
            await self.index.add_blob(local, str(digest), info.size, self.now())
        elif recorded != info.size and str(digest) not in self.index.in_use:
            log.warn(
                "proxy {upstream}: cached {digest} has {actual} bytes, expected {size}; refetching",
                upstream=self.name,
                digest=str(digest),
                actual=info.size,
                size=recorded,
            )
            self.stats.corrupt_blobs += 1
            await self._drop_blob_data(digest)
            return None
        return info

    async def _lookup_blob(self, local: str, digest: Digest) -> BlobInfo | None:
        """`_local_blob`, with a storage that cannot be read taken as a miss: the blob is
        then fetched from the upstream (and kept if the storage takes it by then)."""
        if self.reads.skipping():
            return None
        try:
            info = await self._local_blob(local, digest)
        except PathNotFoundError:
            return None
        except StorageError as exc:
            self.reads.failed(exc)
            return None
        self.reads.worked()
        return info

    async def _forget_missing(self, digest: Digest) -> None:
        """A blob the index records has no data (deleted by hand, by another tool): its entry
        goes, and its bytes from the cache's size (they would count forever otherwise, and
        make eviction drop content that is there).  Not while a fill or a read here uses it."""
        key = str(digest)
        if key in self.index.in_use:
            return
        recorded = await self.index.touch_blob(key, self.now())
        if recorded is None:
            return
        victim = Victim("blob", key, None, recorded, frozenset())
        await self.index.remove(victim)
        if self.ledger is not None:
            try:
                self.fleet_index().size = await self.ledger.remove([victim])
            except RedisUnavailable as exc:
                log_redis(
                    log, exc, "proxy {upstream}: Redis: {error}", upstream=self.name, error=str(exc)
                )
        log.info(
            "proxy {upstream}: cached {digest} has no data: forgotten ({size} bytes)",
            upstream=self.name,
            digest=key,
            size=recorded,
        )

    async def _confirm(self, local: str, upstream: str, digest: Digest) -> int:
        """The blob's size, once the upstream confirmed that *this* repository has it (a HEAD
        on its own path, shared only with requests for the same repository and digest).

        Data stored or being fetched for another repository is never a reason to serve it
        here: the upstream may refuse this repository (404, or access our credentials do not
        unlock), and the local access policy judged only the name the client asked for."""
        known = self._confirmed.get((upstream, digest))
        if known is not None:
            return known
        detail = {"name": local, "digest": str(digest)}
        try:
            size = await self._heads.run(
                (upstream, digest), lambda: self.client.blob_head(upstream, digest)
            )
        except Overloaded:
            raise overloaded(detail) from None
        except UpstreamError as exc:
            self._upstream_failed("blob HEAD", upstream, str(digest), exc)
            raise upstream_error(exc, BLOB_UNKNOWN, detail) from None
        self._confirmed.put((upstream, digest), size)
        return size

    async def blob_stat(self, local: str, upstream: str, digest: Digest) -> BlobInfo:
        info = await self._lookup_blob(local, digest)
        if info is not None:
            return info
        return BlobInfo(digest, await self._confirm(local, upstream, digest))

    async def blob_open(
        self, local: str, upstream: str, digest: Digest, offset: int, length: int | None
    ) -> IBodyProducer:
        confirmed: int | None = None
        # A fill for another repository may begin while we look, and joining it needs this
        # repository's confirmation first: look again then (a few times at most).
        for _attempt in range(3):
            info = await self._lookup_blob(local, digest)
            if info is None and confirmed is None:
                elsewhere = self._foreign_fill(digest, upstream) or await self._cached_here(digest)
                if elsewhere:
                    confirmed = await self._confirm(local, upstream, digest)
            if info is None and confirmed is not None:
                info = await self._adopt(local, digest, confirmed)
            if info is not None:
                try:
                    if not await self._hold(digest):
                        raise PathNotFoundError(layout.blob_data(digest))
                    producer = await self.driver.reader(layout.blob_data(digest), offset, length)
                except PathNotFoundError:
                    pass  # evicted or deleted meanwhile: fetch it again
                except StorageError as exc:
                    self.reads.failed(exc)  # unreadable: from the upstream, as a miss
                else:
                    self.stats.hits += 1
                    whole = offset == 0 and int(producer.length) == info.size
                    verify = (
                        whole
                        and self.config.verify_reads
                        and self._verified.get(str(digest)) is None
                    )
                    return self._observe(digest, producer, verify=verify)
            if confirmed is None and self._foreign_fill(digest, upstream):
                continue  # another repository's fill began meanwhile: confirm first
            self.stats.misses += 1
            # The size this repository's upstream gave (the HEAD the handler's stat made):
            # what the response's Content-Length was set from.
            promised = self._confirmed.get((upstream, digest))
            try:
                fill = await self._join_fill(local, upstream, digest, promised)
            except HeldElsewhere as held:
                return await self._from_fleet(local, upstream, digest, offset, length, held.lease)
            except StoredMeanwhile:
                continue  # the holder stored it between our look and the lease: read it
            size = fill.size if fill.size is not None else offset + (length or 0)
            count = size - offset if length is None else length
            claimed = promised if offset == 0 and count == promised else None
            return self._observe(
                digest, TailProducer(fill, self.driver, offset, count, claimed), verify=False
            )
        raise RegistryError(
            UNAVAILABLE,
            {"name": local, "digest": str(digest)},
            "the blob is being fetched; try again",
            headers={"Retry-After": "1"},
        )

    async def _hold(self, digest: Digest) -> bool:
        """In a fleet, mark ``digest`` in use in Redis before its cached copy is opened, so
        that no instance's eviction deletes it under this read (`Ledger.hold`).  While an
        eviction is deleting it, wait for that to end; False: it is gone, fetch it again."""
        ledger = self.ledger
        if ledger is None:
            return True
        fleet = self.fleet
        assert fleet is not None
        deadline = self.now() + ledger.lock_ttl
        for _attempt in range(int(ledger.lock_ttl / fleet.poll) + 1):
            try:
                if await ledger.hold(str(digest), self.now()):
                    return True
            except RedisUnavailable as exc:
                # Evictions claim what they delete in Redis too: none can delete it now.
                log_redis(
                    log, exc, "proxy {upstream}: Redis: {error}", upstream=self.name, error=str(exc)
                )
                return True
            if self.now() >= deadline:
                break
            await sleep(self.reactor, fleet.poll)
        return False

    async def _cached_here(self, digest: Digest) -> bool:
        """Whether this cache stored ``digest`` (through another of its repositories): bytes
        its upstream sent and that matched the digest, so a HEAD from that upstream saying a
        repository has them is enough to link them there.  Data stored otherwise (a hosted
        repository, another upstream's cache) is not: it is fetched, and what the upstream
        sends is checked, or a HEAD claiming a digest would unlock content it never had."""
        if not await self._known(digest) or self.reads.skipping():
            return False
        try:
            return await self.blobs.exists(digest) is not None
        except StorageError as exc:
            self.reads.failed(exc)
            return False

    async def _known(self, digest: Digest) -> bool:
        """Whether this cache's index has ``digest``; not while a fleet's Redis is away (a
        fill then answers for it: 503 without Redis's bookkeeping)."""
        try:
            return await self.index.knows(str(digest))
        except RedisUnavailable:
            return False

    def _foreign_fill(self, digest: Digest, upstream: str) -> bool:
        """Whether a fill of ``digest`` through another repository's path is running."""
        fill = self._fills.get(digest)
        return fill is not None and fill.through != upstream

    async def _from_fleet(
        self,
        local: str,
        upstream: str,
        digest: Digest,
        offset: int,
        length: int | None,
        lease: Lease,
    ) -> IBodyProducer:
        """The blob while another instance of the fleet fetches it: streamed from that
        instance as the bytes arrive there, and resumed from wherever they can come from next
        (the stored blob, a fill this or another instance takes over) if it dies.

        The fill goes through the path of the repository that started it: this repository
        is served from it only once its own upstream confirmed the blob (issue 13's rule,
        the same as for joining a fill in this process)."""
        fleet = self.fleet
        assert fleet is not None
        if lease.through != upstream:
            await self._confirm(local, upstream, digest)
        # Only a whole-blob response is hashed on its way out (`ResumingProducer`), and its
        # last bytes held until they match: a part of the blob is never verified, so it is
        # never taken from a peer (see `_fleet_source`).  Whole by the size the upstream
        # confirmed (the handler's stat asked it already), never by what a peer says.
        whole = offset == 0 and (
            length is None or length >= await self._confirm(local, upstream, digest)
        )
        state: dict[str, int] = {}

        async def open_source(position: int) -> IBodyProducer:
            try:
                size, producer = await self._fleet_source(
                    local, upstream, digest, position, state.get("end"), peers=whole
                )
            except RegistryError as exc:
                # The status line went out with the first source: what would have been
                # the answer is now only why the body is cut short.
                raise ResumeFailed(_resume_failure(position, exc)) from exc
            state.setdefault("size", size)
            return producer

        # The first source tells the size, hence the range this response carries.
        size, first = await self._fleet_source(local, upstream, digest, offset, None, peers=whole)
        if offset >= size and size > 0:
            first.stopProducing()
            raise RegistryError(BLOB_UNKNOWN, {"name": local, "digest": str(digest)})
        end = size if length is None else min(size, offset + length)
        state["end"] = end

        def complete() -> None:
            if offset == 0 and end == size:
                Deferred.fromCoroutine(self._adopt_when_stored(local, digest, size)).addErrback(
                    lambda f: log_failure(log, f, "linking a blob filled by the fleet failed")
                )

        producer = ResumingProducer(
            digest,
            offset,
            end - offset,
            first,
            open_source,
            # A peer that says the blob is longer than it is does not make a whole read a
            # part, which would go unhashed: hashed all the same, it fails the digest.
            whole=whole or (offset == 0 and end == size),
            on_complete=complete,
        )
        return self._observe(digest, producer, verify=False)

    async def _adopt_when_stored(self, local: str, digest: Digest, size: int) -> None:
        if not await self.blobs.is_linked(local, digest):
            await self._adopt(local, digest, size)

    async def _fleet_source(
        self,
        local: str,
        upstream: str,
        digest: Digest,
        position: int,
        end: int | None,
        *,
        peers: bool,
    ) -> tuple[int, IBodyProducer]:
        """The blob's size and a producer of its bytes from ``position`` (to ``end``, or
        its end): from storage once stored, else from the fill here or, with ``peers``, at
        its holder.  A holder that cannot be streamed from (no peer address, one it does not
        advertise itself, one that died, or ``peers`` false) is waited for: until the blob
        is stored, or until its lease expires and this instance takes the fill over.

        ``peers`` is false for a part of the blob: a peer's bytes reach the client unhashed
        then.  Such a request waits for the stored (verified) blob rather than streaming the
        whole blob from the peer to hash it: its first byte could not go out before the
        whole blob had arrived and hashed either way, so waiting costs only the commit and a
        poll, and no second transfer or spool of the whole blob per request.  Ranges are for
        resumes; pulls read whole blobs, which still stream from the holder."""
        fleet = self.fleet
        assert fleet is not None
        detail = {"name": local, "digest": str(digest)}
        deadline = self.now() + fleet.leases.ttl * 4 + self.config.timeout
        # Holders this request no longer asks (TLS refused: a certificate does not heal in
        # seconds; a new holder is asked), and those already said to be unavailable or not
        # advertised: one line per holder, not one per poll.
        refused: set[str] = set()
        said: set[tuple[str, str, str]] = set()
        while True:
            # Stored by this cache (the holder's verified fill), not by anyone (`_cached_here`).
            info = await self.blobs.exists(digest) if await self._known(digest) else None
            if info is not None:
                stop = info.size if end is None else end
                with contextlib.suppress(PathNotFoundError):
                    reader = await self.driver.reader(
                        layout.blob_data(digest), position, stop - position
                    )
                    return info.size, reader
            try:
                fill = await self._join_fill(local, upstream, digest)
            except HeldElsewhere as held:
                lease = held.lease
                if lease.through != upstream:
                    await self._confirm(local, upstream, digest)
                if (
                    peers
                    and lease.url
                    and lease.instance != fleet.instance
                    and lease.url not in refused
                    and await self._advertised(lease, digest, said)
                ):
                    try:
                        return await fleet.peers.open(
                            lease.url,
                            self.name,
                            digest,
                            position,
                            -1 if end is None else end - position,
                        )
                    except PeerTLSFailure as exc:
                        # Never retried in clear: this request waits for the blob as if the
                        # holder were unreachable.
                        log.warn(
                            "proxy {upstream}: peer stream of {digest} from instance "
                            "{instance} refused: {error}",
                            upstream=self.name,
                            digest=str(digest),
                            instance=lease.instance,
                            peer_url=lease.url,
                            error=str(exc),
                        )
                        refused.add(lease.url)
                    except PeerUnavailable as exc:
                        # Asked again at every poll (it may be back, or its lease lapse):
                        # said once per holder, not per poll.
                        if ("unavailable", lease.instance, lease.url) not in said:
                            said.add(("unavailable", lease.instance, lease.url))
                            log.debug("peer stream unavailable: {error}", error=str(exc))
            except StoredMeanwhile:
                continue  # the holder stored it between our look and the lease: read it
            else:
                size = fill.size if fill.size is not None else 0
                stop = size if end is None else end
                return size, TailProducer(fill, self.driver, position, stop - position)
            if self.now() > deadline:
                raise RegistryError(
                    UNAVAILABLE,
                    detail,
                    "the blob is being fetched; try again",
                    headers={"Retry-After": "1"},
                )
            await sleep(self.reactor, fleet.poll)

    async def _advertised(
        self, lease: Lease, digest: Digest, said: set[tuple[str, str, str]]
    ) -> bool:
        """Whether the lease's URL is the one its instance, alive, advertises for itself in
        Redis: only then is it sent the fleet secret.  A lease is written by its holder, but
        anyone who can write to Redis can plant one; this check makes them plant a matching
        alive key too (see docs/proxy.md, "What Redis is trusted with")."""
        ledger = self.ledger
        assert ledger is not None
        try:
            advertised = await ledger.advertised(lease.instance)
        except RedisUnavailable:
            return False  # said once by the Redis client; the loop waits as without a URL
        if advertised == lease.url:
            return True
        if ("unadvertised", lease.instance, lease.url) not in said:
            said.add(("unadvertised", lease.instance, lease.url))
            log.warn(
                "proxy {upstream}: fill lease of {digest} names {peer_url} for instance "
                "{instance}, which {why}: not contacted, waiting for the blob to be stored",
                upstream=self.name,
                digest=str(digest),
                peer_url=lease.url,
                instance=lease.instance or "?",
                why="is not alive"
                if advertised is None
                else f"advertises {advertised or 'no URL'}",
            )
        return False

    async def _adopt(self, local: str, digest: Digest, size: int) -> BlobInfo | None:
        """The data is already stored (another repository, another image) and the upstream
        confirmed this repository has it: link it here instead of downloading it again.
        Only data this cache stored (`_cached_here`): bytes a hosted repository or another
        upstream's cache stored are not this upstream's to vouch for on a HEAD's word."""
        if self.reads.skipping() or not await self._known(digest):
            return None
        try:
            info = await self.blobs.exists(digest)
        except StorageError as exc:
            self.reads.failed(exc)
            return None  # unreadable: fetched from the upstream
        if info is None or info.size != size:
            return None
        try:
            await self.blobs.link(local, digest)
        except StorageError as exc:
            # A full disk: the upstream confirmed this repository has the blob, so its stored
            # bytes are served all the same; the next request links it once there is room.
            log.warn(
                "proxy {upstream}: serving {digest} for {name} without linking it: the cache's"
                " storage failed: {error}",
                upstream=self.name,
                digest=str(digest),
                name=local,
                error=str(exc),
                event="proxy_link_not_kept",
            )
            return info
        if await GcGuard(self.driver).protect([digest]):
            return None  # a gc is deleting it: fetched again
        await self._note(local)
        await self.index.add_blob(local, str(digest), size, self.now())
        return info

    async def _note(self, local: str) -> None:
        """List the repository in the catalog (as a push or a mount would)."""
        if self.catalog is not None:
            await self.catalog.note_repository(local)

    def _observe(self, digest: Digest, producer: IBodyProducer, verify: bool) -> IBodyProducer:
        """Count served bytes, keep the blob from eviction while it is served and, for a whole
        read of cached data, hash it: a mismatch drops the data so the next pull refetches.
        The hashing runs on the hash threads (`hash_threads`), not on the reactor thread,
        which would otherwise stall every other connection for the length of the blob."""
        key = str(digest)
        self.index.use(key)
        hasher: DigestingHasher | OffloadedHasher | None = None
        if verify:
            hasher = DigestingHasher(digest.algorithm)
            if self.hash_threads is not None:
                hasher = OffloadedHasher(hasher, self.hash_threads)
        from_cache = not isinstance(producer, TailProducer)

        def on_write(data: bytes) -> Deferred[None] | None:
            if from_cache:
                self.stats.served_bytes += len(data)
            if hasher is not None:
                return hasher.update(data)
            return None

        def on_end(failure: Failure | None) -> None:
            self.index.release(key)
            self.space.changed()  # the blob may be evictable now: fills waiting for room look

        async def check() -> None:
            assert hasher is not None
            await self._check_read(digest, hasher)

        return ObservedProducer(producer, on_write, on_end, check if hasher else None)

    async def _check_read(self, digest: Digest, hasher: DigestingHasher | OffloadedHasher) -> None:
        """After every byte of a whole read but the last was sent: remember a match; drop
        data that hashes to something else, and raise (the client's body ends a byte short,
        as for a fill whose upstream body is corrupt)."""
        actual = (await all_hashed(hasher)).digest()
        if actual == digest:
            self._verified.put(str(digest), True)
            return
        log.error(
            "proxy {upstream}: cached blob {digest} is corrupt (hashes to {actual}); "
            "dropping it so the next pull fetches it again",
            upstream=self.name,
            digest=str(digest),
            actual=str(actual),
        )
        self.stats.corrupt_blobs += 1
        await self._drop_blob_data(digest)
        raise StorageError(f"cached blob {digest} is corrupt: dropped, the next pull fetches it")

    async def _drop_blob_data(self, digest: Digest) -> None:
        self._verified.pop(str(digest))
        with contextlib.suppress(PathNotFoundError):
            await self.driver.delete(layout.blob_dir(digest))

    async def _join_fill(
        self, local: str, upstream: str, digest: Digest, promised: int | None = None
    ) -> Fill:
        """The running fill for ``digest`` or a new one through this repository, once the
        upstream answered: an upstream error before the body becomes an error response, not
        a broken body.  The caller has confirmed ``digest`` for this repository when a fill
        was running; joining adds this repository to the links the fill writes.  A fill
        whose body has another size than ``promised`` (what this repository's HEAD said) is
        not joined: one of the two answers is false, and the response was sized by the HEAD."""
        detail = {"name": local, "digest": str(digest)}
        for _attempt in range(2):
            fill = self._fills.get(digest)
            if fill is None:
                bad = self._bad_bodies.get((upstream, digest))
                if bad is not None and bad[0] >= BAD_BODIES:
                    raise RegistryError(
                        UNAVAILABLE,
                        {**detail, "upstream": bad[1]},
                        "upstream answer cannot be trusted: unusable twice in a row",
                        status=502,
                        headers={"Retry-After": str(int(BAD_BODY_AGE))},
                    )
                if self.active_fills >= self.limits.inflight:
                    raise overloaded(detail)
                path = f"{self.fills_dir}/{digest.algorithm}-{digest.hex}-{uuid.uuid4().hex}"
                fill = Fill(digest, path, layout.blob_data(digest), None, upstream)
                fill.now = self.now  # the clock its stalled-reader checks run on
                self._fills[digest] = fill
                self.index.use(str(digest))
                Deferred.fromCoroutine(self._run_fill(fill, upstream))
            linked_before = local in fill.links  # another request of this repository's
            fill.links.add(local)
            while not fill.opened and not fill.finished:
                await fill.changed()
            if fill.opened or fill.error is None:
                if promised is not None and fill.size is not None and fill.size != promised:
                    if not linked_before:
                        fill.links.discard(local)
                    self._confirmed.pop((upstream, digest))
                    raise RegistryError(
                        UNAVAILABLE,
                        detail,
                        "the upstream's answers disagree on this blob's size",
                        status=502,
                    )
                return fill
            if fill.through != upstream:
                continue  # another repository's fill failed before its body: try our own path
            error = fill.error
            if isinstance(error, RedisUnavailable):
                raise RegistryError(
                    UNAVAILABLE,
                    detail,
                    "the cache's shared state (Redis) is unavailable",
                    headers={"Retry-After": "5"},
                )
            if isinstance(error, UpstreamError):
                raise upstream_error(error, BLOB_UNKNOWN, detail)
            raise error
        raise RegistryError(UNAVAILABLE, detail, "upstream blob fetch failed")

    def _fill_hasher(self, digest: Digest) -> OffloadedHasher | DigestingHasher:
        """Where a fill's body is hashed: on the hash threads when the algorithm's hasher
        lets the reactor thread run meanwhile (it then receives, writes and serves the next
        chunks while a worker hashes), else on the reactor thread.  The fill hashes its body
        itself, not `BodyRelay`, so that a body resumed after a cut is hashed whole."""
        hasher = DigestingHasher(digest.algorithm)
        if self.hash_threads is None or not releases_gil(digest.algorithm):
            return hasher
        return OffloadedHasher(hasher, self.hash_threads, batch=FILL_HASH_BATCH)

    def _resumable(self, fill: Fill, error: UpstreamUnavailable, resumes: int) -> bool:
        """Whether a fill whose upstream body was cut (a dropped connection, a body gone
        silent) asks for the rest: while the fill knows the blob's size, within
        `FILL_RESUMES` tries in a row without progress and `FILL_RESUMES_MOST` in all.  Not
        when the fill itself stopped the body (`StoreFailed` with no client left), nor while
        the upstream is held off (its outage was said, and it is not asked meanwhile: the
        cut is then the fill's failure)."""
        return (
            not isinstance(error, HeldOff)
            and fill.size is not None
            and fill.stored < fill.size
            and resumes <= FILL_RESUMES
            and fill.resumes < FILL_RESUMES_MOST
            and (fill.relay is None or fill.readers > 0)
            and not self.client.health.holds("blob GET")
        )

    async def _resume_fill(
        self, fill: Fill, upstream: str, cut: UpstreamUnavailable, resumes: int
    ) -> tuple[UpstreamBlob, int]:
        """The rest of a cut fill's body, and the tries in a row without progress so far: a
        GET from the byte the fill reached (``Range``), after a pause that grows with the
        tries that brought nothing.  An upstream that ignores the ``Range`` answers the whole
        blob, whose first bytes the fill drops.  Raises the last failure once not
        `_resumable`; an upstream that no longer has the blob fails the fill at once."""
        assert fill.size is not None
        error = cut
        while True:
            if not self._resumable(fill, error, resumes):
                raise error
            fill.resumes += 1
            self.stats.fill_resumes += 1
            log.warn(
                "proxy {upstream}: upstream body of {digest} stopped at byte {position} of"
                " {size}: {error}; asking for the rest (try {tries} of {most} in a row,"
                " {total} of {limit} in all)",
                upstream=self.name,
                digest=str(fill.digest),
                position=fill.stored,
                size=fill.size,
                error=str(error)[:300],
                tries=resumes,
                most=FILL_RESUMES,
                total=fill.resumes,
                limit=FILL_RESUMES_MOST,
                event="proxy_fill_resumed",
            )
            if resumes > 1:
                await sleep(self.reactor, FILL_RESUME_PAUSE * 2 ** (resumes - 2))
            try:
                blob = await self.client.blob(
                    upstream, fill.digest, offset=fill.stored, size=fill.size
                )
            except UpstreamNotFound as exc:
                # (A 404 is a plain miss elsewhere, not logged: here it ends a fill that was
                # under way, which is said.)
                raise UpstreamUnavailable(
                    exc.status, f"asked for the rest from byte {fill.stored}: {exc}"
                ) from exc
            except UpstreamUnavailable as exc:
                error = exc
                resumes += 1
                continue
            if blob.offset not in (0, fill.stored):  # (the client checks it: defensive)
                blob.abort()
                raise UpstreamBadResponse(None, f"a resume answered from byte {blob.offset}")
            return blob, resumes

    async def _run_fill(self, fill: Fill, upstream: str) -> None:
        digest = fill.digest
        writer = None
        spool = None
        blob = None
        delivered = False  # the upstream body was handed to the fill (else: abort it)
        leased = False
        settled = False  # the reservation ended early (the storage failed)

        def store_failed(error: BaseException) -> None:
            """The storage failed under the fill: it goes on serving its clients from the
            upstream body (`Fill.start_relay`) and keeps nothing.  Everything else that a
            fill holds is let go of now, so that the next request fills again."""
            nonlocal leased, settled
            fill.start_relay(str(error))
            if self._fills.get(digest) is fill:
                del self._fills[digest]
            self._relaying.add(fill)
            if fill.keep:  # (else counted as not kept already: `_not_kept`)
                self.stats.unkept_fills += 1
            if self.reads.failing is None:  # (else the outage was said once: `StorageReads`)
                log.warn(
                    "proxy {upstream}: serving {digest} ({size} bytes) without keeping it: the "
                    "cache's storage failed: {error}",
                    upstream=self.name,
                    digest=str(digest),
                    size=fill.size,
                    error=str(error),
                    event="proxy_fill_not_kept",
                )
            if str(digest) in self.space.granted:
                settled = True
                Deferred.fromCoroutine(self._settle_reservation(fill, stored=False))
            if leased and self.fleet is not None:
                leased = False
                Deferred.fromCoroutine(self._release_lease(digest))
            self.space.changed()

        try:
            if self.fleet is not None:
                holder = await self.fleet.leases.acquire(self.name, digest, upstream)
                if holder is not None:
                    raise HeldElsewhere(digest, holder)
                leased = True
                # The lease may be free because its holder has just stored the blob (it
                # stores, then releases): after the caller looked, before this lease.
                if await self._cached_here(digest):
                    raise StoredMeanwhile(digest)
            confirmed = self._confirmed.get((upstream, digest))
            hasher: OffloadedHasher | DigestingHasher | None = None
            if self.keeps_partials or self.spool_keeps_partials:
                await self._tidied()
            if self.keeps_partials:
                writer = await self._take_partial(fill)
            elif self.spool_keeps_partials:
                spool = await self._take_spooled(fill)
            kept = writer if self.keeps_partials else spool
            if kept is not None:
                # The bytes an interrupted fill kept: the rest is asked for from where they
                # end, once they are hashed (so that the upstream's connection is not left
                # waiting meanwhile), and the whole hashes to the digest or nothing is kept.
                fill.restart = kept.size
                size = (
                    confirmed
                    if confirmed is not None
                    else await self.client.blob_head(upstream, digest)
                )
                if fill.restart >= size:
                    await kept.cancel()  # (never more bytes than the blob has)
                    writer = spool = None
                    fill.restart = 0
                    fill.tail_driver = fill.tail_path = None
                else:
                    hasher = self._fill_hasher(digest)
                    if kept is writer:
                        await rehash(self.driver, fill.path, fill.restart, hasher)
                    else:
                        # S3: a new upload gets the spooled bytes first (local reads, not
                        # the upstream's), at its own pace, as they are hashed.
                        assert self.spool is not None and fill.tail_path is not None
                        writer = await self.driver.writer(fill.path)
                        await writer.reserve(size)
                        await rehash(self.spool, fill.tail_path, fill.restart, hasher, writer)
                    fill.stored = fill.written = fill.restart
                    try:
                        blob = await self.client.blob(
                            upstream, digest, offset=fill.restart, size=size
                        )
                    except UpstreamError as exc:
                        if exc.status != 416:
                            raise
                        # The upstream serves no range of it: the kept bytes cannot be
                        # continued, the blob is fetched whole (kept, they would make it
                        # unpullable for as long as they last).
                        log.info(
                            "proxy {upstream}: the upstream refused the rest of {digest} from"
                            " byte {offset} ({error}): the bytes kept are dropped, the blob is"
                            " fetched whole",
                            upstream=self.name,
                            digest=str(digest),
                            offset=fill.restart,
                            error=str(exc)[:300],
                        )
                        for dropped in (writer, spool):
                            if dropped is not None:
                                with contextlib.suppress(StorageError):
                                    await dropped.cancel()
                        writer = spool = None
                        hasher = None
                        fill.restart = fill.stored = fill.written = 0
                        fill.tail_driver = fill.tail_path = None
                        blob = None
                if blob is not None and fill.restart:
                    fill.size = size
                    self.stats.restart_resumes += 1
                    log.info(
                        "proxy {upstream}: resuming the fill of {digest} at byte {offset} of"
                        " {size} from the bytes an interrupted fill kept (the upstream answered"
                        " {answer})",
                        upstream=self.name,
                        digest=str(digest),
                        offset=fill.restart,
                        size=size,
                        answer="the rest"
                        if blob.offset
                        else "the whole blob: its first bytes are dropped",
                        event="proxy_fill_resumed_after_restart",
                    )
            if blob is None:
                blob = await self.client.blob(upstream, digest)
                if blob.length is not None:
                    if confirmed is not None and blob.length != confirmed:
                        # The size a client was (or will be) answered with is the HEAD's: a body
                        # of another length is either cut short or padded, and would be written
                        # as long as it claims.
                        blob.abort()
                        raise UpstreamBadResponse(
                            None,
                            f"GET of {digest} answers {blob.length} bytes, its HEAD said"
                            f" {confirmed}",
                        )
                    fill.size = blob.length
                else:
                    fill.size = (
                        confirmed
                        if confirmed is not None
                        else await self.client.blob_head(upstream, digest)
                    )
                    # A body without a length (chunked) is held to the size the upstream gave:
                    # past it, the fill fails; an endless body once filled the disk.
                    blob.length = fill.size
            assert fill.size is not None
            self._confirmed.put((upstream, digest), fill.size)
            # Room under max_size before the first byte is stored; else served, not kept.
            fill.keep = await self._make_room(fill)
            try:
                if self.reads.failing is not None:
                    # Storing would wait for the storage's timeouts, for nothing.
                    raise StorageError(f"the storage cannot be read: {self.reads.failing}")
                if writer is None:
                    writer = await self._fill_writer(fill.path)
                if fill.size and not (fill.restart and self.spool is not None):
                    await writer.reserve(fill.size - fill.restart)
                if self.spool is not None and spool is None:
                    fill.tail_path = fill.path.rsplit("/", 1)[-1]
                    spool = await self.spool.writer(fill.tail_path)
                    fill.tail_driver = self.spool
            except StorageError as exc:
                # No room or a failing store before the first byte: the body is relayed
                # from its start, as it is when the storage fails later (a cache whose
                # disk is full still serves its clients, keeping nothing).
                store_failed(exc)
            fill.opened = True
            fill.notify()
            if hasher is None:
                hasher = self._fill_hasher(digest)
            resumes = 0  # tries in a row without progress (`FILL_RESUME_PROGRESS`)
            while True:
                protocol = FillProtocol(
                    fill,
                    writer,
                    lambda n: None,
                    spool,
                    hasher,
                    store_failed,
                    clock=self.reactor,
                    stall_timeout=self.config.timeout,
                    on_reader_cut=lambda position: self._reader_cut(fill, position),
                    # The bytes an upstream that ignored a resume's Range sends again.
                    skip=fill.stored - blob.offset,
                )
                began = fill.stored
                # Hashed by the fill (a resumed body is a part that `BodyRelay` cannot check).
                blob.deliver(protocol, verify=False, read_size=FILL_READ_SIZE)
                delivered = True
                try:
                    await protocol.done
                    break
                except UpstreamUnavailable as exc:
                    if fill.size is not None and fill.stored == fill.size:
                        # Every byte came, without a clean end (a chunked body's last chunk
                        # missing): the digest says whether it is the blob.
                        break
                    brought = fill.stored - began
                    progress = brought >= min(FILL_RESUME_PROGRESS, (fill.size or 0) - began)
                    resumes = 1 if progress else resumes + 1
                    if not self._resumable(fill, exc, resumes):
                        raise
                    await protocol.drained()  # (the next body is written after these)
                    delivered = False
                    blob, resumes = await self._resume_fill(fill, upstream, exc, resumes)
            actual = (await all_hashed(hasher)).digest()
            if actual != digest and fill.restart:
                raise PartialMismatch(
                    f"the {fill.restart} bytes kept from an interrupted fill and the rest from"
                    f" the upstream hash to {actual}, not {digest}: discarded"
                )
            if actual != digest:
                self.client.session.errors += 1
                raise UpstreamBadResponse(None, f"body hashes to {actual}, not {digest}")
            if fill.relay is None and writer is not None:
                try:
                    await writer.commit()
                    if fill.keep and not await self._still_reserved(fill):
                        fill.keep = await self._make_room(fill)
                    if fill.keep:
                        await self.driver.move(fill.path, fill.final_path)
                    if self.keeps_partials:  # (its locked file stays open until closed)
                        with contextlib.suppress(StorageError):  # (evicted meanwhile: done)
                            await writer.close()
                except StorageError as exc:
                    # The whole body is here and verified: served all the same, not kept.
                    store_failed(exc)
                else:
                    writer = None
            if fill.relay is not None:
                # Readers finish from the window (and what was stored before the failure);
                # the writer, its file and the spool go once the last one is done.
                fill.on_idle = self._discarder(fill, writer, spool)
                writer = spool = None
                fill.done = True
                return
            if not fill.keep:
                # Readers finish from the file where it is; it goes once the last one is done.
                fill.final_path = fill.path
                fill.done = True
                return
            # Every repository that joined (each confirmed by the upstream), including those
            # that join while these links are written.
            linked: set[str] = set()
            unlinked: dict[str, StorageError] = {}
            while pending := sorted(fill.links - linked - unlinked.keys()):
                for name in pending:
                    try:
                        await self.blobs.link(name, digest)
                    except StorageError as exc:
                        unlinked[name] = exc
                        continue
                    await self._note(name)
                    await self.index.add_blob(name, str(digest), fill.stored, self.now())
                    linked.add(name)
            if unlinked:
                self._not_linked(fill, unlinked, kept=bool(linked))
                if not linked:
                    # The whole verified body is at its address: its readers finish from
                    # there; nothing links it, so it goes once the last one is done.
                    fill.keep = False
                    fill.done = True
                    return
            # A gc running now (`registry.storage.gcguard`) keeps what these links refer to, or
            # the fill fails (its readers' bodies end short, the next pull fetches it again).
            if await GcGuard(self.driver).protect([digest]):
                await self.index.remove(
                    Victim("blob", str(digest), None, fill.stored, frozenset(linked))
                )
                raise StorageError(f"cached blob {digest} was deleted by a gc as it was stored")
            self._verified.put(str(digest), True)
            # The index entry now counts what the reservation counted.
            await self._settle_reservation(fill, stored=True)
            fill.done = True
            log.info(
                "proxy {upstream}: cached {names}@{digest} ({size} bytes)",
                upstream=self.name,
                names=",".join(sorted(linked)),
                digest=str(digest),
                size=fill.stored,
            )
            # No eviction afterwards: the room was made before the first byte was stored.
        except Exception as exc:
            fill.error = exc
            if blob is not None and not delivered:
                # Failed between the upstream's answer and reading its body (no room, the
                # storage refusing the writer): an unread body would hold its connection.
                blob.abort()
            # From now on a request for the blob starts a fill of its own instead of joining
            # this failed one while its clean-up below (an S3 abort, a delete) runs.
            if self._fills.get(digest) is fill:
                del self._fills[digest]
            fill.notify()
            if isinstance(exc, UpstreamError):
                self._upstream_failed("blob GET", upstream, str(digest), exc)
                if isinstance(exc, UpstreamBadResponse):
                    before = self._bad_bodies.get((upstream, digest))
                    times = 1 if before is None else before[0] + 1
                    self._bad_bodies.put((upstream, digest), (times, str(exc)))
            elif isinstance(exc, RedisUnavailable):
                log_redis(
                    log,
                    exc,
                    "proxy {upstream}: no fill lease for {digest}: Redis: {error}",
                    upstream=self.name,
                    digest=str(digest),
                    error=str(exc),
                )
            elif isinstance(exc, PartialMismatch):
                log.warn(
                    "proxy {upstream}: fill of {digest} failed: {error}",
                    upstream=self.name,
                    digest=str(digest),
                    error=str(exc),
                    event="proxy_fill_partial_mismatch",
                )
            elif not isinstance(exc, HeldElsewhere | StoredMeanwhile | StoreFailed):
                # (StoreFailed: said by ``store_failed`` already.)
                # A full disk or an S3 outage is one line with its reason; a defect keeps
                # its traceback.
                log_failure(log, Failure(), "proxy fill of {digest} failed", digest=str(digest))
            if fill.restart and self._keep_after(fill, exc):
                # Resumed from kept bytes, and the upstream failed: they (and what came
                # since) wait for the next fill again.
                with contextlib.suppress(Exception):
                    if self.keeps_partials and writer is not None:
                        await writer.close()
                        writer = None
                        await self._stash(fill.path, digest)
                    elif self.spool is not None and spool is not None and fill.tail_path:
                        await spool.close()
                        spool = None
                        await self._stash(fill.tail_path, digest, self.spool, PARTIALS)
            if writer is not None:
                with contextlib.suppress(Exception):
                    await writer.cancel()
            with contextlib.suppress(Exception):
                await self.driver.delete(fill.path)
        finally:
            if self._fills.get(digest) is fill:
                del self._fills[digest]
            self._relaying.discard(fill)
            self.index.release(str(digest))
            if fill.relay is None or fill.error is not None:
                fill.forget_recent()  # (a relayed fill's readers still take it, bounded)
            if not settled and str(digest) in self.space.granted:  # failed: room is free
                await self._settle_reservation(fill, stored=False)
            self.space.changed()
            if not fill.keep and fill.error is None and fill.relay is None:
                fill.on_idle = lambda: self._discard_unkept(fill)
            fill.notify()
            fill.idle_check()
            if spool is not None and self.spool is not None and fill.tail_path is not None:
                # Readers still on the spool re-read from the stored blob (or fail with the fill).
                with contextlib.suppress(Exception):
                    await spool.cancel()
                with contextlib.suppress(Exception):
                    await self.spool.delete(fill.tail_path)
            if leased and self.fleet is not None:
                await self._release_lease(digest)

    def _reader_cut(self, fill: Fill, position: int) -> None:
        log.warn(
            "proxy {upstream}: dropped a client of {digest} at byte {position} of {size}: it"
            " took no bytes for {timeout:g}s while the upstream body and the other clients of"
            " the relayed fill waited for it",
            upstream=self.name,
            digest=str(fill.digest),
            position=position,
            size=fill.size,
            timeout=self.config.timeout,
            event="proxy_relay_reader_cut",
        )

    async def _release_lease(self, digest: Digest) -> None:
        assert self.fleet is not None
        try:
            await self.fleet.leases.release(self.name, digest)
        except Exception as exc:  # it expires on its own
            log_redis(
                log,
                exc,
                "proxy {upstream}: releasing the fill lease of {digest} failed: {error}",
                upstream=self.name,
                digest=str(digest),
                error=str(exc),
            )

    # -- the bytes of interrupted fills (registry.proxy.partials)

    def tidying_starts(self) -> None:
        """The start-up is about to tidy interrupted fills: fills wait (`tidying_done`)."""
        if self._tidying is None:
            self._tidying = []

    def tidying_done(self) -> None:
        waiters, self._tidying = self._tidying or [], None
        for waiter in waiters:
            waiter.callback(None)

    async def _tidied(self) -> None:
        if self._tidying is not None:
            waiter: Deferred[None] = Deferred()
            self._tidying.append(waiter)
            await waiter

    async def _fill_writer(self, path: str) -> IFileWriter:
        """A new fill's writer.  Where interrupted fills' bytes are kept, it holds the file's
        lock while it writes (``append`` writers lock it: `FilesystemDriver.writer`), so that
        no other process takes it for a dead one's while this one is alive."""
        writer = await self.driver.writer(path)
        if not self.keeps_partials:
            return writer
        await writer.close()
        return await self.driver.writer(path, append=True)

    async def _take_partial(self, fill: Fill) -> IFileWriter | None:
        """The bytes an interrupted fill of ``fill``'s blob kept, moved to ``fill.path`` and
        open for appending (locked), or None.  The move takes them: no other fill can."""
        kept = f"{self.partials_dir}/{partial_name(fill.digest)}"
        try:
            await self.driver.move(kept, fill.path)
        except PathNotFoundError:
            return None
        except StorageError as exc:
            log.info(
                "proxy {upstream}: cannot take the kept bytes of {digest}: {error}",
                upstream=self.name,
                digest=str(fill.digest),
                error=str(exc),
            )
            return None
        try:
            writer = await self.driver.writer(fill.path, append=True)
        except PathBusyError:
            # A live process holds it after all (one that kept it open): leave it to it.
            with contextlib.suppress(StorageError):
                await self.driver.move(fill.path, kept)
            return None
        except StorageError:
            with contextlib.suppress(StorageError):
                await self.driver.delete(fill.path)
            return None
        if writer.size <= 0:
            await writer.cancel()
            return None
        return writer

    async def _take_spooled(self, fill: Fill) -> IFileWriter | None:
        """`_take_partial` for bytes kept in the spool: moved to the fill's spool file and
        open for appending, or None."""
        spool = self.spool
        assert spool is not None
        tail = fill.path.rsplit("/", 1)[-1]
        try:
            await spool.move(f"{PARTIALS}/{partial_name(fill.digest)}", tail)
            writer = await spool.writer(tail, append=True)
        except StorageError:  # (none kept: PathNotFoundError)
            with contextlib.suppress(StorageError):
                await spool.delete(tail)
            return None
        if writer.size <= 0:
            await writer.cancel()
            return None
        fill.tail_driver, fill.tail_path = spool, tail
        return writer

    def _keep_after(self, fill: Fill, error: BaseException) -> bool:
        """Whether a fill's bytes are worth keeping after it failed with ``error``: the
        upstream failed (it is out, it cut the body for good), not its bytes (a body that is
        not the blob, an upstream that no longer has it) nor the storage."""
        return (
            fill.relay is None
            and isinstance(error, UpstreamError | RedisUnavailable)
            and not isinstance(error, UpstreamBadResponse | UpstreamNotFound)
        )

    async def _stash(
        self,
        path: str,
        digest: Digest,
        driver: IStorageDriver | None = None,
        folder: str | None = None,
    ) -> bool:
        """Keep the file at ``path`` (a fill's, of ``digest``) as its digest's partial,
        unless a live process holds its lock (False: left where it is).  Of two partials of
        one blob, the longer stays; one last written ``partial_age`` ago goes."""
        driver = driver or self.driver
        try:
            # (Before the writer: taking the file may give back space its fill set aside,
            # which counts as a write.)
            written = (await driver.stat(path)).modified
            writer = await driver.writer(path, append=True)
        except PathBusyError:
            return False
        except PathNotFoundError:
            return True
        kept = f"{folder or self.partials_dir}/{partial_name(digest)}"
        try:
            size = writer.size
            try:
                other = (await driver.stat(kept)).size
            except PathNotFoundError:
                other = -1
            keep = size > 0 and other < size and time.time() - written <= self.config.partial_age
            if keep:
                await driver.move(path, kept)  # (locked: a rename keeps the lock on the file)
        finally:
            # Closed before a removal: a writer whose file is gone says so when closed.
            with contextlib.suppress(StorageError):
                await writer.close()
        if not keep:
            with contextlib.suppress(PathNotFoundError):
                await driver.delete(path)
        return True

    async def _stash_folder(self, folder: str) -> bool:
        """Keep the fill files of a dead process's ``folder`` as partials (`_stash`), and
        remove the rest; False when a live process still writes one of them (it stays)."""
        try:
            names = await self.driver.list(folder)
        except PathNotFoundError:
            return True
        alive = False
        for name in names:
            path = f"{folder}/{name}"
            digest = digest_of_fill(name)
            if digest is not None:
                try:
                    taken = await self._stash(path, digest)
                except StorageError as exc:  # (the folder's removal has the last word)
                    log.info(
                        "proxy {upstream}: keeping {path} failed: {error}",
                        upstream=self.name,
                        path=path,
                        error=str(exc),
                    )
                    continue
                if not taken:
                    alive = True
                    log.info(
                        "proxy {upstream}: {path} is still being written by a live process:"
                        " left to it",
                        upstream=self.name,
                        path=path,
                    )
                continue
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(path)
        return not alive

    async def _drop_partials(self) -> None:
        """With ``partial_age = 0``: what was kept while it was not 0 goes too."""
        places: list[tuple[IStorageDriver, str]] = []
        if self.spool is not None:
            places.append((self.spool, PARTIALS))
        elif getattr(self.driver, "name", "") == "filesystem":
            places.append((self.driver, self.partials_dir))
        for driver, folder in places:
            try:
                names = await driver.list(folder)
            except PathNotFoundError:
                continue
            await driver.delete(folder)
            log.info(
                "proxy {upstream}: removed {count} kept partial fills (partial_age = 0)",
                upstream=self.name,
                count=len(names),
            )

    async def prune_partials(self) -> None:
        """Remove the kept bytes of interrupted fills older than ``partial_age``, and the
        oldest of them beyond the room ``max_size`` leaves beside what is cached and the
        room the fills in flight reserved."""
        place = self._partials_place()
        if place is None:
            await self._drop_partials()
            return
        driver, folder = place
        try:
            names = await driver.list(folder)
        except PathNotFoundError:
            return
        found = []
        for name in names:
            with contextlib.suppress(PathNotFoundError):
                info = await driver.stat(f"{folder}/{name}")
                found.append((info.modified, info.size, name))
        now = time.time()
        limit = self.config.max_size
        room = None if limit is None else max(0, limit - self.index.size - self.space.total)
        kept = 0
        removed: list[str] = []
        for modified, size, name in sorted(found, reverse=True):  # the newest first
            if now - modified <= self.config.partial_age and (room is None or kept + size <= room):
                kept += size
                continue
            with contextlib.suppress(PathNotFoundError):
                await driver.delete(f"{folder}/{name}")
                removed.append(name)
        if removed:
            log.info(
                "proxy {upstream}: removed {count} kept partial fills (older than"
                " partial_age, or beyond the room max_size leaves); {kept} bytes kept",
                upstream=self.name,
                count=len(removed),
                kept=kept,
            )

    def _discarder(
        self, fill: Fill, writer: IFileWriter | None, spool: IFileWriter | None
    ) -> Callable[[], None]:
        """What removes a relayed fill's leftovers (`Fill.on_idle`): its unfinished writer
        (an S3 multipart upload), its file and its spool file.  The storage may still be
        failing: what cannot be removed now goes with the fills folder at the next start."""

        async def discard() -> None:
            if writer is not None:
                with contextlib.suppress(Exception):
                    await writer.cancel()
            try:
                if writer is not None:  # (else no write began: nothing to remove)
                    with contextlib.suppress(PathNotFoundError):
                        await self.driver.delete(fill.path)
            except Exception as exc:
                log.info(
                    "proxy {upstream}: removing {path} failed: {error} (removed at the next start)",
                    upstream=self.name,
                    path=fill.path,
                    error=str(exc),
                )
            if spool is not None and self.spool is not None and fill.tail_path is not None:
                with contextlib.suppress(Exception):
                    await spool.cancel()
                with contextlib.suppress(Exception):
                    await self.spool.delete(fill.tail_path)

        def run() -> None:
            Deferred.fromCoroutine(discard()).addErrback(
                lambda f: log_failure(log, f, "removing a relayed fill's files failed")
            )

        return run

    # -- manifests

    async def _local_manifest(self, local: str, digest: Digest) -> StoredManifest | None:
        if self.reads.skipping():
            return None
        try:
            link = await self.driver.get_content(layout.revision_link(local, digest))
            if link.decode("ascii", "replace").strip() != str(digest):
                return None
            body = await self.blobs.get_small(digest)
        except (PathNotFoundError, RegistryError):
            return None
        except StorageError as exc:
            self.reads.failed(exc)  # unreadable: fetched from the upstream, as a miss
            return None
        self.reads.worked()
        if not await self.index.touch_manifest(local, str(digest), self.now()):
            await self.index.add_manifest(local, str(digest), len(body), _refs(body), self.now())
        return StoredManifest(digest, stored_media_type(body), body)

    async def manifest_get(self, local: str, upstream: str, reference: str) -> StoredManifest:
        if Digest.is_digest(reference):
            digest = Digest.parse(reference)
            cached = await self._local_manifest(local, digest)
            if cached is not None:
                self.stats.hits += 1
                return cached
            detail = {"name": local, "reference": reference}
            self.stats.misses += 1
            try:
                return await self._digest_reads.run(
                    (local, reference), lambda: self._fetch_by_digest(local, upstream, reference)
                )
            except Overloaded:
                raise overloaded(detail) from None
            except UpstreamError as exc:
                raise upstream_error(exc, MANIFEST_UNKNOWN, detail) from None
        return await self._tagged(local, upstream, reference)

    async def _fetch_by_digest(self, local: str, upstream: str, reference: str) -> StoredManifest:
        """A manifest not cached, from the upstream and kept: one call for all who ask."""
        try:
            fetched = await self.client.manifest(upstream, reference, "GET")
        except UpstreamError as exc:
            self._upstream_failed("manifest GET", upstream, reference, exc)
            raise
        return (await self._store_manifest(local, fetched, None))[0]

    async def _tagged(self, local: str, upstream: str, tag: str) -> StoredManifest:
        key = (local, tag)
        try:
            digest = None if self.reads.skipping() else await self.tags.resolve(local, tag)
        except StorageError as exc:
            self.reads.failed(exc)  # unreadable: asked upstream, as a tag not cached
            digest = None
        cached = await self._local_manifest(local, digest) if digest is not None else None
        freshness = self.config.tag_freshness
        checked = self._checked.get(key)
        fresh = checked is not None and self.now() - checked < freshness
        if cached is not None and freshness > 0 and fresh:
            self.stats.hits += 1
            return cached
        try:
            current = await self._revalidations.run(
                key, lambda: self._revalidate(local, upstream, tag, cached, digest is not None)
            )
        except Overloaded:
            raise overloaded({"name": local, "reference": tag}) from None
        except (UpstreamNotFound, UpstreamAccessDenied) as exc:
            # Gone upstream, or refused to us there (a private, deleted or revoked repository:
            # Docker Hub answers these alike): answered as missing, never served stale.  A
            # tag gone upstream is forgotten here too (`_revalidate`); a refusal keeps it, as
            # a credential mistake must not wipe the cached tags.
            self._upstream_failed("manifest HEAD", upstream, tag, exc)
            raise upstream_error(exc, MANIFEST_UNKNOWN, {"name": local, "reference": tag}) from None
        except UpstreamError as exc:
            self._upstream_failed("manifest revalidation", upstream, tag, exc)
            gone = self._gone.get(key) if cached is None else None
            if gone is not None:
                # Deleted upstream when it last answered: still missing, not "unavailable".
                log.warn(
                    "proxy {upstream}: answering {name}:{tag} 404 as the upstream last did: "
                    "{reason}",
                    upstream=self.name,
                    name=local,
                    tag=tag,
                    reason=str(exc),
                )
                detail = {"name": local, "reference": tag, "upstream": gone}
                raise RegistryError(MANIFEST_UNKNOWN, detail) from None
            if cached is None:
                raise upstream_error(
                    exc, MANIFEST_UNKNOWN, {"name": local, "reference": tag}
                ) from None
            self.stats.stale_served += 1
            self.stats.hits += 1
            if isinstance(exc, HeldOff):
                return cached  # the outage was said once (`registry.proxy.health`)
            log.warn(
                "proxy {upstream}: serving cached {name}:{tag} ({digest}) stale: {reason}",
                upstream=self.name,
                name=local,
                tag=tag,
                digest=str(cached.digest),
                reason=str(exc),
            )
            return cached
        if isinstance(current, StoredManifest):
            return current  # fetched now (kept, or served without keeping it)
        if cached is not None and current == cached.digest:
            self.stats.hits += 1
            return cached
        stored = await self._local_manifest(local, current)
        if stored is None:
            raise RegistryError(MANIFEST_UNKNOWN, {"name": local, "reference": tag})
        return stored

    async def _revalidate(
        self, local: str, upstream: str, tag: str, cached: StoredManifest | None, linked: bool
    ) -> Digest | StoredManifest:
        """The tag's current digest upstream, its manifest cached; the manifest itself when it
        was fetched now (the storage may have failed to keep it).  A HEAD when something is
        cached (free on Docker Hub), a GET only for content we do not have.  ``linked``: the
        tag exists here, to be forgotten if the upstream no longer has it."""
        key = (local, tag)
        try:
            if cached is not None:
                head = await self.client.manifest(upstream, tag, "HEAD")
            else:
                fetched = await self.client.manifest(upstream, tag, "GET")
        except UpstreamNotFound as exc:
            gone = exc
            if exc.code is None and cached is not None:
                # A HEAD's 404 has no body to say who answered: the GET's does.
                try:
                    fetched = await self.client.manifest(upstream, tag, "GET")
                except UpstreamNotFound as again:
                    gone = again
                else:
                    self._gone.pop(key)
                    self.stats.misses += 1
                    stored, kept = await self._store_manifest(local, fetched, tag)
                    if kept:
                        self._checked.put(key, self.now())
                    return stored
            if gone.code not in REGISTRY_GONE:
                # A 404 no registry error names (a proxy's or a CDN's page, a wrong path, a
                # registry hiding what it refuses): no word about the tag, which is kept.
                if cached is not None:
                    raise UpstreamBadResponse(
                        gone.status, f"{gone.reason} (no registry error: the tag is kept)"
                    ) from None
                raise
            if linked or key in self._gone:
                self._gone.put(key, gone.reason[:300])
            if linked:
                await self._forget_tag(local, tag)
            raise gone from None
        self._gone.pop(key)
        if cached is not None:
            if head.digest == cached.digest:
                self._checked.put((local, tag), self.now())
                return head.digest
            existing = await self._local_manifest(local, head.digest)
            if existing is not None:
                await self.tags.set(local, tag, head.digest)
                self._checked.put((local, tag), self.now())
                return head.digest
            fetched = await self.client.manifest(upstream, str(head.digest), "GET")
        self.stats.misses += 1
        stored, kept = await self._store_manifest(local, fetched, tag)
        if kept:
            # (Not kept: the tag here still names what it did, so it is not fresh; the
            # next request asks the upstream again rather than serving that.)
            self._checked.put((local, tag), self.now())
        return stored

    async def _forget_tag(self, local: str, tag: str) -> None:
        """The upstream answered 404 for a cached tag: remove the tag here, as a tag delete
        on registry:2 does, so that an outage later (stale-if-error, the tag list's fallback)
        cannot bring it back.  The manifest and its blobs stay, for eviction or a gc.  Only
        the tag's own 404 does this (a 404 for a digest the tag pointed at is no answer
        about the tag), inside the revalidation all its waiters share, so a tag stored again
        meanwhile is not removed by a late waiter."""
        self._checked.pop((local, tag))
        try:
            removed = await self.tags.remove(local, tag)
        except (StorageError, RegistryError) as exc:
            # The client's answer is still the upstream's 404; the next 404 tries again.
            log.warn(
                "proxy {upstream}: could not forget {name}:{tag}, gone upstream: {error}",
                upstream=self.name,
                name=local,
                tag=tag,
                error=str(exc),
            )
            return
        if removed:
            log.info(
                "proxy {upstream}: {name}:{tag} is gone upstream; removed the cached tag",
                upstream=self.name,
                name=local,
                tag=tag,
            )

    async def _store_manifest(
        self, local: str, fetched: UpstreamManifest, tag: str | None
    ) -> tuple[StoredManifest, bool]:
        """The manifest to serve, and whether it was kept (a full or failing storage)."""
        body = fetched.body
        assert body is not None
        digest = fetched.digest
        # Room under max_size first, as for a blob (registry.proxy.space): reserved under the
        # manifest's repository too, as several repositories may store one digest at once.
        key = f"{local}@{digest}"
        reserved = await self._room_for_manifest(key, len(body))
        served = StoredManifest(digest, stored_media_type(body), body)
        try:
            if self.reads.failing is not None:
                # Storing would wait for the storage's timeouts, for nothing.
                raise StorageError(f"the storage cannot be read: {self.reads.failing}")
            # The order readers rely on: data, revision link, then the tag.
            await self.blobs.put_small(body, digest.algorithm)
            await self.driver.put_content(layout.revision_link(local, digest), str(digest).encode())
            if await GcGuard(self.driver).protect([digest]):  # `registry.storage.gcguard`
                raise StorageError(f"cached manifest {digest} was deleted by a gc as it was stored")
            if tag is not None:
                await self.tags.set(local, tag, digest)
            await self._note(local)
            await self.index.add_manifest(local, str(digest), len(body), _refs(body), self.now())
            stored = True
        except StorageError as exc:
            # A full or failing store: the client still gets the manifest (as a blob whose
            # fill cannot be stored is relayed), and the next request fetches it again.
            stored = False
            if self.reads.failing is not None:
                return served, False  # the outage was said once (`StorageReads`)
            log.warn(
                "proxy {upstream}: serving manifest {digest} of {name} without keeping it: the"
                " cache's storage failed: {error}",
                upstream=self.name,
                digest=str(digest),
                name=local,
                error=str(exc),
                event="proxy_manifest_not_kept",
            )
            return served, False
        except BaseException:
            stored = False
            raise
        finally:
            if reserved:
                await self._settle(key, stored)
        self.schedule_eviction()
        return served, True

    # -- listings

    async def tag_list(
        self, local: str, upstream: str, n: int | None, last: str | None
    ) -> tuple[list[str], bool]:
        """The upstream's tag list (one page); the tags cached here when the upstream fails."""
        if n == 0:
            return [], False
        try:
            tags, more = await self._tag_reads.run(
                (upstream, n, last), lambda: self._upstream_tags(upstream, n, last)
            )
            if not more:
                # The whole list (registry:2 ignores n and last, and does not sort): sorted
                # and paged here, as the spec has it and a hosted repository answers.
                return paginate(sorted(tags), n, last)
            return tags, more
        except Overloaded:
            raise overloaded({"name": local}) from None
        except (UpstreamNotFound, UpstreamAccessDenied) as exc:
            raise upstream_error(exc, NAME_UNKNOWN, {"name": local}) from None
        except UpstreamError as exc:
            try:
                cached = await self.tags.list_tags(local, n, last)
            except RegistryError as local_error:
                if local_error.code is not NAME_UNKNOWN:
                    raise
                # Nothing cached for it: "unknown" would tell the client the repository does
                # not exist, when the upstream only could not say.
                raise upstream_error(exc, NAME_UNKNOWN, {"name": local}) from None
            if not cached[0] and last is None:
                # Only blobs cached (pulled by digest): an empty list would tell the client
                # the repository has no tags, when the upstream only could not say.
                raise upstream_error(exc, NAME_UNKNOWN, {"name": local}) from None
            self.stats.stale_served += 1
            return cached

    async def _upstream_tags(
        self, upstream: str, n: int | None, last: str | None
    ) -> tuple[list[str], bool]:
        """One page of the upstream's tag list, for all who ask it at once; a failure is
        counted against the upstream's health once, not once per waiting client."""
        try:
            return await self.client.tags(upstream, n, last)
        except (UpstreamNotFound, UpstreamAccessDenied):
            raise
        except UpstreamError as exc:
            self._upstream_failed("tag list", upstream, "", exc)
            raise

    async def referrers(self, local: str, upstream: str, subject: Digest) -> list[dict[str, Any]]:
        """The referrers of ``subject`` upstream: from its referrers API, or else from the
        ``sha256-<hex>`` tag of the fallback schema (a cached index, stale when the upstream
        is down, like any cached tag).  No referrers: an empty list."""
        found: list[dict[str, Any]] | None
        try:
            found = await self._referrer_reads.run(self.client.referrers, upstream, subject)
        except UpstreamError as exc:
            self._upstream_failed("referrers", upstream, str(subject), exc)
            found = None
        if found is not None:
            return found
        tag = f"{subject.algorithm}-{subject.hex}"
        try:
            index = await self.manifest_get(local, upstream, tag)
        except RegistryError as exc:
            if exc.code in (MANIFEST_UNKNOWN, NAME_UNKNOWN):
                return []
            raise
        try:
            document = json.loads(index.body)
        except ValueError:
            return []
        return index_descriptors(document) if isinstance(document, dict) else []

    # -- eviction

    def schedule_eviction(self) -> None:
        """Evict soon when over the size bound (once, however many fills just finished)."""
        limit = self.config.max_size
        if limit is None or self._eviction_scheduled:
            return
        if self.ledger is None and self.index.size + self.space.total <= limit:
            return  # a fleet's size is known only from Redis: evict() finds out
        self._eviction_scheduled = True

        def run() -> None:
            self._eviction_scheduled = False
            Deferred.fromCoroutine(self.evict()).addErrback(
                lambda f: log_failure(log, f, "proxy eviction failed")
            )

        self.reactor.callLater(0, run)

    async def evict(self) -> int:
        """Evict what the size bound (less the room reserved for fills in flight) and the TTL
        ask for; returns how many entries went.  One eviction at a time: a call while another
        runs waits for it, then looks again."""
        async with self._eviction_lock:
            if self.ledger is not None:
                try:
                    count, _granted = await self._evict_fleet(self.ledger)
                except RedisUnavailable as exc:  # the next round tries again
                    log_redis(
                        log,
                        exc,
                        "proxy {upstream}: no eviction, Redis: {error}",
                        upstream=self.name,
                        error=str(exc),
                    )
                    return 0
            else:
                limit = self.config.max_size
                count = await self._evict_local(None if limit is None else limit - self.space.total)
        await self.prune_partials_logged()
        return count

    async def prune_partials_logged(self) -> None:
        try:
            await self.prune_partials()
        except StorageError as exc:
            log.warn(
                "proxy {upstream}: removing kept partial fills failed: {error}",
                upstream=self.name,
                error=str(exc),
            )

    async def _evict_local(self, limit: int | None) -> int:
        """One instance's eviction down to ``limit`` bytes (the caller holds the lock)."""
        victims = await self.index.plan(self.now(), limit, self.config.ttl)
        count = len(await self._evict_victims(victims))
        if count:
            log.info(
                "proxy {upstream}: evicted {count} entries, cache now {size} bytes",
                upstream=self.name,
                count=count,
                size=self.index.size,
            )
            self.space.changed()
        return count

    # -- room for fills (registry.proxy.space)

    async def _make_room(self, fill: Fill) -> bool:
        """Reserve room for ``fill``'s blob under ``max_size`` before its first byte is
        stored, evicting what it takes; wait for room at most ``space_wait``.  False: serve
        the blob without keeping it (larger than ``max_size``, or no room in time)."""
        limit = self.config.max_size
        size = fill.size or 0
        if limit is None:
            return True
        if size > limit:
            self._not_kept(fill, "it is larger than max_size", limit)
            return False
        deadline = self.now() + self.config.space_wait
        poll = self.fleet.poll if self.fleet is not None else SPACE_POLL
        while True:  # bounded by the deadline
            try:
                async with self._eviction_lock:
                    granted = await self._admit(str(fill.digest), size, limit)
            except RedisUnavailable as exc:
                log_redis(
                    log, exc, "proxy {upstream}: Redis: {error}", upstream=self.name, error=str(exc)
                )
                self._not_kept(fill, "the cache's shared state (Redis) is unavailable", limit)
                return False
            if granted:
                return True
            remaining = deadline - self.now()
            if remaining <= 0:
                break
            if granted is None:  # another instance held the fleet's lock: a short turn
                await sleep(self.reactor, min(remaining, LOCK_RETRY))
            else:
                await self.space.wait_for_change(min(remaining, poll))
        waited = f"no room was made within space_wait ({self.config.space_wait:g}s)"
        self._not_kept(fill, waited, limit)
        return False

    async def _still_reserved(self, fill: Fill) -> bool:
        """Before a kept fill's blob goes to its address: whether the room reserved for it
        still counts.  In a fleet a reservation lapses when its instance renews it late (it
        stalled), and other instances may have filled that room meanwhile: the fill then
        makes room again (`_make_room`) or is not kept, instead of taking the cache over
        ``max_size``.  Redis out of reach: the reservation is taken as still counting
        (nobody can be admitted against it without Redis either)."""
        if self.ledger is None or self.config.max_size is None:
            return True
        digest = str(fill.digest)
        try:
            if await self.ledger.still_reserved(digest, self.now()):
                return True
        except RedisUnavailable as exc:
            log_redis(
                log, exc, "proxy {upstream}: Redis: {error}", upstream=self.name, error=str(exc)
            )
            return True
        log.warn(
            "proxy {upstream}: the room reserved for {digest} ({size} bytes) lapsed before it "
            "was stored (this instance renewed it late, or Redis lost it): making room again",
            upstream=self.name,
            digest=digest,
            size=fill.size,
        )
        return False

    async def _room_for_manifest(self, key: str, size: int) -> bool:
        """Reserve room for a manifest of ``size`` bytes (evicting what it takes) before it is
        stored; whether a reservation was granted.  A manifest does not wait for room as a
        blob does: when nothing can be evicted now (all in use), it is stored all the same
        (a pull never fails or stalls for a few kilobytes) and the eviction that follows takes
        the cache back under ``max_size``.  In a fleet, another instance's eviction is waited
        for (at most ``space_wait``)."""
        limit = self.config.max_size
        if limit is None or size > limit:
            return False
        deadline = self.now() + self.config.space_wait
        while True:  # bounded by the deadline
            try:
                async with self._eviction_lock:
                    granted = await self._admit(key, size, limit)
            except RedisUnavailable as exc:
                log_redis(
                    log, exc, "proxy {upstream}: Redis: {error}", upstream=self.name, error=str(exc)
                )
                return False
            remaining = deadline - self.now()
            if granted is not None or remaining <= 0:
                return bool(granted)
            await sleep(self.reactor, min(remaining, LOCK_RETRY))

    async def _admit(self, digest: str, size: int, limit: int) -> bool | None:
        """Evict until what is cached, every reservation and ``size`` fit ``limit``; then
        grant the reservation.  The caller holds the eviction lock.  None: another instance
        holds the fleet's eviction lock (try again shortly)."""
        if self.ledger is not None:
            _count, granted = await self._evict_fleet(self.ledger, digest, size)
            return granted
        if self.index.size + self.space.total + size > limit:  # else no plan is needed
            await self._evict_local(limit - self.space.total - size)
        if self.index.size + self.space.total + size > limit:
            return False
        self.space.grant(digest, size)
        return True

    async def _settle_reservation(self, fill: Fill, stored: bool) -> None:
        """The fill's reservation ends: ``stored``, its index entry now counts the blob (in a
        fleet, the reservation goes in the same Redis batch that sends that entry); else the
        room is free again."""
        await self._settle(str(fill.digest), stored)

    async def _settle(self, digest: str, stored: bool) -> None:
        """`_settle_reservation` of the reservation under ``digest`` (a blob's digest, or
        ``<repository>@<digest>`` for a manifest)."""
        reserved = self.space.release(digest)
        if self.ledger is None or not (reserved or stored):
            return
        try:
            if stored:
                # Sent now, reserved or not: another instance that takes the fill lease once
                # it is released must find the blob in the fleet's index (`_cached_here`),
                # or it fetches the blob again.
                if reserved:
                    self.ledger.release_with_entry(digest)
                await self.ledger.push(self.fleet_index(), self.now())
            else:
                await self.ledger.unreserve(digest)
        except RedisUnavailable as exc:  # sent by the next push (a reservation lapses)
            log_redis(
                log,
                exc,
                "proxy {upstream}: recording {digest} in the fleet's index: Redis: {error}"
                if stored
                else "proxy {upstream}: releasing the room reserved for {digest}: Redis: {error}",
                upstream=self.name,
                digest=digest,
                error=str(exc),
            )

    def _not_kept(self, fill: Fill, why: str, limit: int) -> None:
        self.stats.unkept_fills += 1
        log.info(
            "proxy {upstream}: serving {digest} ({size} bytes) without keeping it: {why}",
            upstream=self.name,
            digest=str(fill.digest),
            size=fill.size,
            why=why,
            max_size=limit,
            event="proxy_fill_not_kept",
        )

    def _not_linked(self, fill: Fill, unlinked: dict[str, StorageError], kept: bool) -> None:
        """The storage failed to link a filled blob into some repositories (its clients get
        it all the same): one line; counted as not kept when no repository links it."""
        if not kept:
            self.stats.unkept_fills += 1
        log.warn(
            "proxy {upstream}: serving {digest} ({size} bytes) without keeping it for "
            "{names}: the cache's storage failed: {error}",
            upstream=self.name,
            digest=str(fill.digest),
            size=fill.stored,
            names=",".join(sorted(unlinked)),
            error=str(next(iter(unlinked.values()))),
            event="proxy_fill_not_kept",
        )

    def _discard_unkept(self, fill: Fill) -> None:
        """Remove the file of a blob served but not kept (``final_path``: the fill's own file,
        or the blob's address when no repository's link could be written, where nothing
        refers to it and it would hold its space for good), once its last reader is done."""

        async def discard() -> None:
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(fill.final_path)

        Deferred.fromCoroutine(discard()).addErrback(
            lambda f: log.warn(
                "proxy {upstream}: removing {path} failed: {error}",
                upstream=self.name,
                path=fill.final_path,
                error=f.getErrorMessage(),
            )
        )

    async def _evict_victims(
        self, victims: list[Victim], ledger: Ledger | None = None
    ) -> list[Victim]:
        """
        Evict the planned victims this process does not serve at the moment; the evicted.  In
        a fleet (``ledger``) each is first claimed in Redis, which fails when a read that began
        anywhere since the plan holds it (`Ledger.hold`).
        """
        evicted: list[Victim] = []
        for victim in victims:
            if self.index.in_use.get(victim.digest, 0) > 0:
                continue
            if ledger is None:
                await self._evict_one(victim)
            else:
                if not await ledger.claim(victim.digest, self.now()):
                    continue
                try:
                    await self._evict_one(victim)
                finally:
                    await ledger.unclaim(victim.digest)
            await self.index.remove(victim)
            evicted.append(victim)
            self.stats.evictions += 1
            self.stats.evicted_bytes += victim.size
        return evicted

    async def _evict_fleet(
        self, ledger: Ledger, digest: str | None = None, size: int = 0
    ) -> tuple[int, bool | None]:
        """Eviction for the whole fleet, by one instance at a time (the Redis lock): what
        every instance cached (the ledger) and the room their fills reserved, planned as one
        instance plans, skipping what any instance serves or fills.  This instance's index
        becomes the fleet's afterwards.

        With ``digest``: make room for ``size`` more bytes and, when they fit, reserve them
        for that fill while the lock is still held (so no other instance's admission can
        count the same room).  Returns the entries evicted and whether the room was
        reserved (None: another instance holds the lock, or this one's lapsed meanwhile)."""
        now = self.now()
        index = self.fleet_index()
        await ledger.push(index, now)
        if not await ledger.lock():
            # Another instance is evicting, perhaps from a view without what this one just
            # stored: look again once it is done, not at the next fill or evict_interval.
            assert self.fleet is not None
            if digest is None:
                self.reactor.callLater(self.fleet.poll, self.schedule_eviction)
            return 0, None
        count = 0
        granted: bool | None = False
        try:
            # What this instance stored since the push above counts from here on.
            await ledger.push(index, now)
            total, reservations, fleet_in_use = await ledger.state(now)
            limit = self.config.max_size
            target = None if limit is None else limit - sum(reservations.values()) - size
            count = await self._walk_fleet(ledger, now, total, target, fleet_in_use)
            if count:
                self.space.changed()
            total, reservations, _in_use = await ledger.state(now)
            index.size = total
            reserved = sum(reservations.values())
            fits = limit is not None and total + reserved + size <= limit
            if digest is not None and fits:
                # Counted from now, not from when this eviction began: its deletes may have
                # taken longer than a reservation lives between two renewals.
                if await ledger.reserve(digest, size, self.now()):
                    self.space.grant(digest, size)
                    granted = True
                else:  # the lock lapsed under this eviction: try again, as when taken
                    granted = None
            if self.now() - self._swept >= SWEEP_INTERVAL:
                await self._sweep_quietly()
            if digest is None and limit is not None and total + reserved > limit:
                # Still over: what is left is in use somewhere (marks drop within a push
                # interval of the last use), so look again shortly instead of at the next
                # evict_interval.
                self.reactor.callLater(FLEET_EVICTION_RETRY, self.schedule_eviction)
            if count:
                log.info(
                    "proxy {upstream}: evicted {count} entries, fleet cache now {size} bytes",
                    upstream=self.name,
                    count=count,
                    size=total,
                )
        finally:
            await ledger.unlock()
        return count, granted

    async def _walk_fleet(
        self, ledger: Ledger, now: float, size: int, target: int | None, in_use: Counter[str]
    ) -> int:
        """Evict, least recently used first, what the size bound (``target``, for the fleet's
        ``size`` bytes) and the TTL ask for, reading the fleet's LRU order from Redis a page at
        a time: memory stays flat in the number of entries.  Skipped: what any instance uses
        (``in_use``, and this process's own counts) and what a cached manifest references.
        Evicting a manifest with references may free older entries: the walk then starts
        over.  The entries evicted."""
        ttl = self.config.ttl
        offset = 0
        evicted_count = 0
        for _page in range(FLEET_WALK_PAGES):
            if not ledger.holding:
                break  # the lock lapsed (this process stalled): another eviction may run
            entries = await ledger.page(offset, FLEET_PAGE)
            victims: list[Victim] = []
            examined = 0
            releasing: Victim | None = None
            done = not entries
            for entry in entries:
                over = target is not None and size > target
                expired = ttl is not None and entry.last_used < now - ttl
                if not over and not expired:
                    done = True  # in LRU order: nothing later is expired either
                    break
                examined += 1
                digest = entry.victim.digest
                if entry.referenced or in_use[digest] > 0 or self.index.in_use[digest] > 0:
                    continue
                victims.append(entry.victim)
                size -= entry.victim.size
                if entry.releases:
                    releasing = entry.victim
                    break
            evicted = await self._evict_victims(victims, ledger)
            if evicted:
                size = await ledger.remove(evicted)
            else:
                size += sum(victim.size for victim in victims)
            evicted_count += len(evicted)
            if done:
                break
            if releasing is not None and releasing in evicted:
                offset = 0
            else:
                offset += examined - len(evicted)
        return evicted_count

    async def _evict_one(self, victim: Victim) -> None:
        digest = Digest.parse(victim.digest)
        if victim.kind == "manifest":
            name = victim.name or ""
            for tag in await self.tags.tags_for(name, digest):
                await self.tags.remove(name, tag)
                self._checked.pop((name, tag))
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(layout.revision_dir(name, digest))
        else:
            for name in victim.names:
                with contextlib.suppress(PathNotFoundError):
                    await self.driver.delete(layout.layer_dir(name, digest))
        if not await self._used_elsewhere(victim):
            await self._drop_blob_data(digest)

    async def _used_elsewhere(self, victim: Victim) -> bool:
        digest = victim.digest
        if await self.index.shares(victim):
            return True
        for peer in self.peers:
            if peer is not self and await peer.index.knows(digest):
                return True
        return await self.hosted_uses(Digest.parse(digest))

    # -- persistence

    async def load_state(self) -> None:
        if self.ledger is not None:
            # A fleet's index is in Redis (registry.proxy.fleet.ledger): its total is what
            # this instance reports (then read again at every push).
            try:
                self.fleet_index().size = await self.ledger.size()
            except RedisUnavailable as exc:
                log_redis(
                    log, exc, "proxy {upstream}: Redis: {error}", upstream=self.name, error=str(exc)
                )
            self.state_loaded = True
            return
        folder = state_dir(self.name)
        unclean = await self._mark_index_open(folder)
        blobs, manifests = await self.index.load(self.driver, folder)
        log.info(
            "proxy {upstream}: {blobs} blobs, {manifests} manifests, {size} bytes cached",
            upstream=self.name,
            blobs=blobs,
            manifests=manifests,
            size=self.index.size,
        )
        if unclean and (blobs or manifests):
            # The saved index is usable but may lack what was cached after it was saved:
            # counted beside serving (readiness does not wait; what the index holds is right,
            # only incomplete), a stop meanwhile leaves the marker for the next start.
            self._index_whole = False
            self._counting = Deferred.fromCoroutine(self._count_after_unclean_stop())
        elif blobs == 0 and manifests == 0:
            # No saved index (or an unusable one), or a cache that is new: what the storage
            # holds is counted again (nothing to count: a short walk).  Until that is done
            # the cache is not loaded: readiness says so, and no flush writes a partial
            # index (which the next start would take as whole).
            try:
                await self.recount()
            except Exception:
                # A storage failing under the walk: serve with what was counted, never save
                # it as whole; the flushes count again until a count completes.
                self.recount_pending = True
                log_failure(
                    log,
                    Failure(),
                    "proxy {upstream}: counting the cache failed",
                    upstream=self.name,
                )
        self.state_loaded = True

    async def _mark_index_open(self, folder: str) -> bool:
        """Write this process's `index_open` marker; whether a process before it left one
        (it ended without saving its index: kill -9, a crash).  A storage refusing the marker
        is no reason not to serve: a later flush writes it."""
        unclean = False
        try:
            unclean = await index_open.found(self.driver, folder)
            await index_open.write(self.driver, folder)
            self._open_marked = True
        except StorageError as exc:
            log.info(
                "proxy {upstream}: cannot write {marker} ({error}): written at a later flush",
                upstream=self.name,
                marker=index_open.MARKER,
                error=str(exc),
            )
        return unclean

    async def _count_after_unclean_stop(self) -> None:
        try:
            await self.recount(after_unclean_stop=True)
        except _CountStopped:
            return
        except Exception:
            # A storage failing under the walk: counted again before the next save.
            self.recount_pending = True
            log_failure(
                log, Failure(), "proxy {upstream}: counting the cache failed", upstream=self.name
            )
        else:
            self._index_whole = True
        finally:
            self._counting = None

    @property
    def counting(self) -> bool:
        """Whether the count after an unclean stop runs (beside serving)."""
        return self._counting is not None

    async def stop_counting(self) -> None:
        """Interrupt the count after an unclean stop, if one runs (at a stop: the index is
        saved as it is, and the marker it leaves has the next start count again)."""
        counting = self._counting
        if counting is not None:
            self._stop_counting = True
            await counting

    async def recount(self, after_unclean_stop: bool = False) -> None:
        """The storage may hold what the index lacks: its snapshot was never written (a
        full disk at the last stop, a crash before the first flush) or could not be read, or
        (``after_unclean_stop``) it was written before the last content was cached.  Register
        every repository's ``_layers`` links (with the blobs' sizes) and manifest revisions
        the index lacks, as entries used now, so that ``max_size`` counts them and eviction
        can delete them; unregistered, they would hold their space for good, invisible to
        both.  Entries the index has keep their last use (the eviction order)."""
        log.info(
            "proxy {upstream}: {why}: counting what the storage holds ({wait})",
            upstream=self.name,
            why=(
                "the process before this one ended without saving its index"
                if after_unclean_stop
                else "no saved index"
            ),
            wait="serving meanwhile" if after_unclean_stop else "readiness waits for it",
        )
        links = manifests = 0
        for name in await self._repositories():
            if self._stop_counting:
                raise _CountStopped()
            now = self.now()
            for digest in await digest_folders(self.driver, layout.layers_dir(name)):
                if self._stop_counting:
                    raise _CountStopped()
                # Known already (saved, or stored or served since the start): a use at
                # time 0 changes nothing but gives its size; only this repository's link
                # may be new.  The storage is asked only about blobs the index lacks (on S3,
                # a HEAD each).
                known = await self.index.touch_blob(str(digest), 0.0)
                if known is not None:
                    await self.index.add_blob(name, str(digest), known, 0.0)
                    continue
                info = await self.blobs.exists(digest)
                if info is None:
                    continue
                await self.index.add_blob(name, str(digest), info.size, now)
                links += 1
            if self._stop_counting:
                raise _CountStopped()
            for digest in await digest_folders(self.driver, layout.revisions_dir(name)):
                if self._stop_counting:
                    raise _CountStopped()
                if await self.index.touch_manifest(name, str(digest), 0.0):
                    continue
                try:
                    body = await self.driver.get_content(layout.blob_data(digest))
                except PathNotFoundError:
                    continue
                await self.index.add_manifest(name, str(digest), len(body), _refs(body), now)
                manifests += 1
        if links or manifests:
            log.warn(
                "proxy {upstream}: {why}: counted {blobs} blobs and {manifests} manifests"
                " found in storage again ({size} bytes cached)",
                upstream=self.name,
                why=(
                    "the saved index lacked what was cached after it was saved"
                    if after_unclean_stop
                    else "the saved index was missing or empty"
                ),
                blobs=links,
                manifests=manifests,
                size=self.index.size,
                event="proxy_index_recounted",
            )
            self.schedule_eviction()  # over max_size now, perhaps

    async def flush_state(self, final: bool = False) -> None:
        """Save the index (``final``: at a clean stop, after which the `index_open` marker
        goes when the index saved is whole)."""
        if self.ledger is not None:
            await self.ledger.push(self.fleet_index(), self.now())
            return
        if not self.state_loaded:
            return  # a partial index (still loading, or counting again) is never saved
        folder = state_dir(self.name)
        if self.recount_pending:
            # (Fails again while the storage does: nothing saved.)
            await self.recount(after_unclean_stop=not self._index_whole)
            self.recount_pending = False
            self._index_whole = True
        await self.index.flush(self.driver, folder)
        if not self._open_marked and not final:
            await index_open.write(self.driver, folder)
            self._open_marked = True
        if final and self._index_whole and self._counting is None:
            await index_open.remove(self.driver, folder)
            self._open_marked = False

    async def clean_fills(self) -> None:
        """Fills interrupted by a crash or a restart leave partial files: remove them (in a
        fleet, this instance's own, then those of instances that are no longer alive)."""
        if self.ledger is not None:
            try:  # before any fill here: no other instance sweeps them
                await self.ledger.beat()
            except RedisUnavailable as exc:
                log_redis(
                    log, exc, "proxy {upstream}: Redis: {error}", upstream=self.name, error=str(exc)
                )
        if not self.keeps_partials or await self._stash_folder(self.fills_dir):
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(self.fills_dir)
        await self._sweep_quietly()

    async def _sweep_quietly(self) -> None:
        """`sweep_dead_fills`, its failure a warning (the next sweep tries again)."""
        try:
            await self.sweep_dead_fills()
        except Exception as exc:
            log.warn(
                "proxy {upstream}: removing dead instances' fills failed: {error}",
                upstream=self.name,
                error=str(exc),
            )

    async def sweep_dead_fills(self) -> None:
        """Remove ``fills/<instance>/`` of every instance that has not pushed to Redis for
        `ALIVE_FOR` seconds: a dead instance's committed-but-unmoved fills and unfinished
        uploads (the storage's delete aborts those too)."""
        ledger, fleet = self.ledger, self.fleet
        if ledger is None or fleet is None:
            return
        self._swept = self.now()
        root = f"{state_dir(self.name)}/fills"
        try:
            names = set(await self.driver.list(root))
        except PathNotFoundError:
            names = set()
        names |= await ledger.known_instances()
        others = sorted(name for name in names if name != fleet.instance)
        alive = await ledger.alive(others)
        for name in others:
            if name in alive:
                continue
            if self.keeps_partials and not await self._stash_folder(f"{root}/{name}"):
                continue  # (a process writes there still: the next sweep looks again)
            with contextlib.suppress(PathNotFoundError):
                await self.driver.delete(f"{root}/{name}")
            await ledger.forget(name)
            log.info(
                "proxy {upstream}: removed the unfinished fills of instance {instance} "
                "(not alive in Redis)",
                upstream=self.name,
                instance=name,
            )

    # -- a fleet's index rebuilt from storage

    def _mine(self, name: str) -> bool:
        """Whether repository ``name`` is where this cache stores what it caches."""
        prefix = self.config.prefix
        if prefix:
            return name.startswith(prefix + "/")
        for peer in self.peers:
            other = peer.config.prefix
            if peer is not self and other and name.startswith(other + "/"):
                return False
        return self.config.default and not looks_like_host(name.split("/", 1)[0])

    async def _repositories(self) -> list[str]:
        """This cache's repositories in storage."""
        names = await Catalog(self.driver).walk(under=self.config.prefix)
        return [name for name in names if self._mine(name)]

    async def reregister(self) -> None:
        """Redis lost the fleet's index (restarted empty, flushed) or never had it: register
        everything this cache holds in storage (each repository's ``_layers`` links with the
        blobs' sizes, its manifest revisions with their references), so that the total counts
        it and eviction can delete it again; then say the index is whole (the epoch key)."""
        ledger = self.ledger
        if ledger is None:
            return
        index = self.fleet_index()
        blobs = manifests = size = 0
        # The repositories registered so far: a blob one of them links was counted then.
        # (Redis knows a blob's repositories; a set of every digest would grow with the
        # cache.)
        done: set[str] = set()
        for name in await self._repositories():
            now = self.now()
            layers = await digest_folders(self.driver, layout.layers_dir(name))
            linked = await ledger.blob_names([str(digest) for digest in layers])
            for digest, names in zip(layers, linked, strict=True):
                info = await self.blobs.exists(digest)
                if info is None:
                    continue
                await index.add_blob(name, str(digest), info.size, now)
                if not names & done:
                    blobs += 1
                    size += info.size
            for digest in await digest_folders(self.driver, layout.revisions_dir(name)):
                try:
                    body = await self.driver.get_content(layout.blob_data(digest))
                except PathNotFoundError:
                    continue
                await index.add_manifest(name, str(digest), len(body), _refs(body), now)
                manifests += 1
                size += len(body)
            await ledger.push(index, now)  # a repository at a time: batches stay small
            done.add(name)
        await ledger.established()
        ledger.lost = False
        if blobs or manifests:
            log.warn(
                "proxy {upstream}: Redis had no record of this cache (restarted empty or "
                "flushed?): registered {blobs} blobs and {manifests} manifests ({size} bytes) "
                "from storage again",
                upstream=self.name,
                blobs=blobs,
                manifests=manifests,
                size=size,
            )

    # -- logging

    def _upstream_failed(self, what: str, upstream: str, ref: str, exc: UpstreamError) -> None:
        if isinstance(exc, UpstreamNotFound):
            # An answer, not a failure: any client can ask for digests nobody has, and a line
            # per such request would drown the log (twistd writes debug lines too); the access
            # line has the 404.
            return
        if isinstance(exc, HeldOff):
            return  # no request was made; the outage was said once (`registry.proxy.health`)
        self.stats.upstream_errors += 1
        log.warn(
            "proxy {upstream}: {what} {name}{ref} failed: {reason}",
            upstream=self.name,
            what=what,
            name=upstream,
            ref=f":{ref}" if ref else "",
            reason=str(exc),
        )

    def summary(self) -> str:
        rate = self.client.rate_limit
        remaining = rate.remaining if rate is not None else None
        s = self.stats
        return (
            f"proxy {self.name}: hits={s.hits} misses={s.misses} "
            f"upstream_bytes={self.client.bytes_received} served_bytes={s.served_bytes} "
            f"upstream_errors={s.upstream_errors} stale={s.stale_served} "
            f"evictions={s.evictions} cache_bytes={self.index.size} "
            f"ratelimit_remaining={remaining if remaining is not None else '-'}"
        )


def _refs(body: bytes) -> list[str]:
    """The digests a manifest keeps alive in the cache: its blobs and children."""
    refs = manifest_refs(body)
    return sorted(refs.blobs | refs.children)
