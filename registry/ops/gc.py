"""
Garbage collection: mark every blob something still needs, sweep the rest.  Safe to run while
the registry serves, unlike registry:2's ``registry garbage-collect``.

Mark.  For every repository (found by walking ``repositories/``, so data written by registry:2
counts), the manifests kept are its revisions, or with ``delete_untagged`` only what its tags
reach, plus revisions younger than the grace period and revisions that could not be parsed.
From those the closure follows index children (recursively) and referrers (manifests whose
``subject`` is a kept manifest, known from the revisions themselves and from the referrers
index), so a kept multi-arch index keeps its platform manifests and a kept image keeps its
signatures and SBOMs.  Every kept manifest marks its own blob, its config and its layers.

A manifest that does not parse (a schema1 manifest from registry:2, a damaged file) is never a
reason to delete: it is kept, and every digest-shaped string in its bytes is marked.

Online safety.  A push stores blobs first and the manifest last, so for a while its blobs are
referenced by nothing.  Whatever was written after ``start - grace`` is never deleted: blob data
by its modification time, and a blob any repository linked after that time (an upload of a blob
that already existed only writes the link).  Just before deleting, every repository is looked at
again: revisions that appeared (or got a tag) since the mark are marked too.  A push that lands
after that last look, while the sweep runs, is covered by the protocol of
`registry.storage.gcguard`: the run announces itself (``txregistry/gc/running``) before its
mark, and each blob is marked ``doomed`` and checked for a writer's ``touched`` before its
folder is deleted, so a push either keeps the blob or fails in words.  Uploads in progress
(``_uploads``) are never touched, purging them is `registry.ops.purge`'s job.

Sweep.  Unmarked blob folders go (``blobs/<alg>/<xx>/<hex>``); with ``delete_untagged`` the
revision links that were not kept go first, with their tag-history and referrers-index
entries.  The repositories' ``_layers`` links are left as registry:2 leaves them: a link to a
missing blob reads as "blob unknown", and a new upload restores the data.

A pull-through cache's repositories (`registry.proxy`, named by ``proxied``: the registry's
``[proxy:*]`` sections) are the cache's to manage: its eviction (``max_size``, ``ttl``) removes
what it no longer holds, revision and links included.  So in a proxied repository every
revision is kept, even with ``delete_untagged`` (images pulled by digest have no tag), with all
it references, and every blob linked in its ``_layers`` is kept (a layer whose manifest the
cache evicted is still served from the cache).  The links are what the cache holds, always up to
date, where its index may lag by a flush.  A fill writes its data, then its links, then follows
the writer's side of the protocol below (`registry.storage.gcguard`), like a push.

Any storage error during the mark aborts the run before anything is deleted (`GCAborted`);
errors while deleting are counted and the sweep goes on.  A revision that could not be
deleted stays, with what it references (`GarbageCollector._keep_undeleted`): no revision is
left pointing at a blob the sweep removed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import attrs
from twisted.internet.defer import FirstError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.asyncutil import bounded_map
from registry.manifests.references import ManifestRefs, manifest_refs
from registry.storage import gcguard, layout
from registry.storage.catalog import Catalog
from registry.storage.driver import (
    FileInfo,
    IStorageDriver,
    PathNotFoundError,
    StorageError,
    StorageFull,
)
from registry.storage.listing import digest_folders, list_or_empty
from registry.storage.referrers import ReferrersIndex
from registry.storage.reserve import RESERVE, RESERVE_SIZE, release_reserve

log = Logger()
T = TypeVar("T")
U = TypeVar("U")

# Digest-shaped strings in a manifest that does not parse (schema1's blobSum, damaged JSON).
# Manifests read per batch in one repository: bounds memory and requests in flight.
_BATCH = 256
# Storage calls between turns given to the reactor (see `GarbageCollector.clock`).
_TURN_EVERY = 64


def _hosted_only(name: str) -> bool:
    return False


def describe_error(exc: BaseException) -> str:
    """One line for a person: the error inside Twisted's FirstError wrappers."""
    while isinstance(exc, FirstError) and exc.subFailure.value is not None:
        exc = exc.subFailure.value
    return f"{type(exc).__name__}: {exc}"


class GCAborted(Exception):
    """The mark could not complete (unreadable storage): nothing was deleted."""


class GCBusy(Exception):
    """Another gc run holds the marker (`gcguard.RUNNING`): this one did not start."""


@attrs.frozen
class GCOptions:
    delete_untagged: bool = False
    dry_run: bool = False
    # Seconds: anything written more recently than this before the run started is kept.
    grace: float = attrs.field(default=3600.0, validator=attrs.validators.ge(0))
    # Storage requests in flight (S3 latency, not CPU, is what a run waits on).
    concurrency: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    # Filesystem storage: on a full disk, use the room kept for a collection
    # (`registry.storage.reserve`), and keep it again at the end.
    reserve: bool = False


@attrs.define
class GCStats:
    """Counters, updated as the run goes, for progress lines and the final summary."""

    phase: str = "mark"
    repositories_total: int = 0
    repositories_scanned: int = 0
    manifests_read: int = 0
    manifests_unparseable: int = 0
    manifests_missing: int = 0
    # Index children with neither revision nor blob here: not stored, by design (see `_read`).
    children_not_stored: int = 0
    blobs_marked: int = 0
    blobs_examined: int = 0
    # The data size of every blob examined (kept or not): with what was freed, the registry's
    # own space once the run ends (recorded for the web UI).
    bytes_examined: int = 0
    blobs_young: int = 0
    blobs_to_delete: int = 0
    bytes_to_free: int = 0
    revisions_to_delete: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    revisions_deleted: int = 0
    referrer_entries_deleted: int = 0
    errors: list[str] = attrs.field(factory=list)

    @property
    def blobs_stored(self) -> int:
        """Blobs left in storage after the run (a dry run deletes none)."""
        return self.blobs_examined - self.blobs_deleted

    @property
    def bytes_stored(self) -> int:
        """Their bytes: what the registry's own data takes, whatever the driver."""
        return self.bytes_examined - self.bytes_freed


def _digest(text: str) -> Digest | None:
    try:
        return Digest.parse(text)
    except RegistryError:
        return None


@attrs.define
class _Repository:
    """What the mark learned of one repository, kept until the sweep."""

    name: str
    revisions: set[str]
    # A pull-through cache's repository: everything in it stays (see the module).
    proxied: bool
    kept: set[str]
    # Revisions to delete (delete_untagged), with their subject (for the referrers index).
    doomed: dict[str, str | None]


@attrs.frozen
class _Candidate:
    digest: str
    size: int


@attrs.define
class GarbageCollector:
    """One run over one driver.  ``now`` is the run's start, in the storage's clock."""

    driver: IStorageDriver
    options: GCOptions
    now: float
    stats: GCStats = attrs.field(factory=GCStats)
    # Given, the run lets the reactor turn every _TURN_EVERY storage calls: a driver whose
    # calls complete inline (the filesystem's stat, read and delete) would otherwise hold it
    # for a whole phase, and progress timers (and a serving process's requests) would wait.
    clock: IReactorTime | None = None
    # Whether a repository belongs to a pull-through cache (`registry.proxy.config.proxied_names`).
    proxied: Callable[[str], bool] = _hosted_only
    _since_turn: int = attrs.field(default=0, init=False)
    _marked: set[str] = attrs.field(factory=set, init=False)
    _repositories: list[_Repository] = attrs.field(factory=list, init=False)
    _candidates: dict[str, _Candidate] = attrs.field(factory=dict, init=False)
    # When this run last wrote `gcguard.RUNNING` (monotonic); None when it is not announced.
    _announced: float | None = attrs.field(default=None, init=False)
    _marker: gcguard.RunMarker | None = attrs.field(default=None, init=False)
    # The marker was taken over during the sweep: nothing more is deleted.
    _lost: bool = attrs.field(default=False, init=False)
    # A revision stayed whose references could not be read (`_keep_undeleted`): no blob is
    # deleted, any candidate may be one it needs.
    _blobs_unsure: bool = attrs.field(default=False, init=False)
    # Set by `stop` (a signal to the command): no storage call more before the sweep, no
    # delete more in it.
    stopped: bool = attrs.field(default=False, init=False)

    @property
    def cutoff(self) -> float:
        return self.now - self.options.grace

    async def run(self) -> GCStats:
        """Mark, find candidates, look again, sweep.  Raises GCAborted before any delete."""
        marked = False
        try:
            await self._check_root()
            if not self.options.dry_run:
                await self._announce()
            await self.mark()
            self.stats.phase = "examine"
            await self.examine_blobs()
            self.stats.phase = "recheck"
            await self.recheck()
            marked = True
        except (GCAborted, GCBusy):
            raise
        except Exception as exc:  # storage errors of any driver: abort, delete nothing
            raise GCAborted(describe_error(exc)) from exc
        finally:
            if not marked:  # aborted: nothing will be deleted
                await self._withdraw()
        self.stats.phase = "sweep"
        try:
            if not self.options.dry_run:
                await self.sweep()
        finally:
            await self._withdraw()
        self.stats.phase = "done"
        return self.stats

    async def _announce(self) -> None:
        """
        Tell writers a collector runs (`registry.storage.gcguard`), kept fresh as it runs;
        `GCBusy` while another run holds the marker (one run at a time: see `RunMarker`).
        """
        marker = gcguard.RunMarker(self.driver, self.now)
        try:
            try:
                await marker.claim()
            except StorageFull:
                # The marker and the first `doomed` files need a little room: the reserve
                # kept for this (`registry.storage.reserve`), if there is one.
                if not (self.options.reserve and await release_reserve(self.driver)):
                    raise GCAborted(
                        "the disk is full and holds no room kept for a collection"
                        f" ({RESERVE}): free a few KiB (a run writes a small marker before"
                        " it deletes) and run again"
                    ) from None
                log.warn(
                    "gc: the disk is full: removed the {size} bytes kept for a collection"
                    " ({path}) to start; written back once there is room",
                    size=RESERVE_SIZE,
                    path=RESERVE,
                )
                await marker.claim()
        except gcguard.CollectorBusy as exc:
            raise GCBusy(str(exc)) from None
        self._marker = marker
        self._announced = time.monotonic()

    async def _keep_announced(self) -> None:
        """Renew the marker now and then.  A run whose marker was taken over (it was not
        renewed for `gcguard.STALE`: a long pause) stops: pushes no longer count on it."""
        if self._marker is None or self._announced is None:
            return
        if time.monotonic() - self._announced > gcguard.REFRESH:
            # Set first: the sweep's deletes run side by side, and a second renewal of the
            # same version would read as a takeover.
            self._announced = time.monotonic()
            try:
                await self._marker.renew()
            except gcguard.MarkerLost as exc:
                if self.stats.phase != "sweep":
                    raise GCAborted(str(exc)) from None
                if not self._lost:
                    self._lost = True
                    self._error(str(exc))

    async def _withdraw(self) -> None:
        marker, self._marker = self._marker, None
        self._announced = None
        if marker is None:
            return
        with contextlib.suppress(Exception):  # a stale one is ignored by writers anyway
            await marker.release()

    async def _check_root(self) -> None:
        try:
            await self.driver.stat(layout.ROOT)
        except PathNotFoundError:
            raise GCAborted(f"no registry data in this storage ({layout.ROOT} not found)") from None

    # -- storage calls, a bounded number in flight -----------------------------------------

    async def _list(self, path: str) -> list[str]:
        return await list_or_empty(self.driver, path)

    def stop(self) -> None:
        """End the run soon and cleanly: before the sweep it aborts (nothing deleted), in the
        sweep the deletes under way finish and no other begins; the marker is withdrawn."""
        self.stopped = True

    async def _turn(self) -> None:
        """Before a storage call: every _TURN_EVERY calls, one turn of the reactor."""
        if self.stopped and self.stats.phase != "sweep":
            raise GCAborted("stopped by a signal")
        self._since_turn += 1
        if self.clock is None or self._since_turn < _TURN_EVERY:
            return
        self._since_turn = 0
        await deferLater(self.clock, 0, lambda: None)

    async def _map(self, func: Callable[[U], Awaitable[T]], items: Iterable[U]) -> list[T]:
        """``func`` over ``items``, at most ``concurrency`` at a time, results in order."""
        return await bounded_map(func, items, self.options.concurrency)

    # -- mark ---------------------------------------------------------------------------------

    async def mark(self) -> None:
        names = await Catalog(self.driver, concurrency=self.options.concurrency).walk()
        self.stats.repositories_total = len(names)
        for name in names:
            await self._keep_announced()
            self._repositories.append(await self._scan(name))
            self.stats.repositories_scanned += 1

    def _mark(self, digests: Iterable[str]) -> None:
        for digest in digests:
            if digest not in self._marked:
                self._marked.add(digest)
                self.stats.blobs_marked += 1

    async def _revisions(self, name: str) -> dict[str, float]:
        """The repository's manifests, each with when its ``link`` was written: revision
        folders holding their link (registry:2's delete removes the link and leaves the
        folder, whose blobs are then free)."""
        folders = await digest_folders(self.driver, layout.revisions_dir(name))
        written = await self._map(lambda digest: self._link_written(name, digest), folders)
        return {str(d): when for d, when in zip(folders, written, strict=True) if when is not None}

    async def _link_written(self, name: str, digest: Digest) -> float | None:
        await self._turn()
        try:
            return (await self.driver.stat(layout.revision_link(name, digest))).modified
        except PathNotFoundError:
            return None

    def _young(self, revisions: dict[str, float]) -> set[str]:
        """Revisions written within the grace period (a push may still be on its way)."""
        return {digest for digest, when in revisions.items() if when >= self.cutoff}

    async def _tagged(self, name: str, revisions: set[str]) -> set[str]:
        """
        The manifests the repository's tags reach.  A tag link that is there but cannot be
        read or parsed (empty or torn by a crash, garbage, a folder in its place) aborts the
        run: taking it for "no tag" would delete the tagged image (registry:2 refuses too).
        A tag naming a manifest the repository has no revision of keeps every revision its
        history (``index/``) names: which one it pointed at before the damage is unknown.
        """

        async def resolve(tag: str) -> set[str]:
            path = layout.tag_current_link(name, tag)
            try:
                text = await self.driver.get_content(path)
            except PathNotFoundError:
                return set()  # untagged since it was listed, or never finished
            except StorageError as exc:
                raise GCAborted(f"cannot read tag {name}:{tag}: {exc}") from None
            digest = _digest(text.decode("ascii", "replace").strip())
            if digest is None:
                raise GCAborted(
                    f"damaged tag link {path}: not a digest: {text[:80]!r} "
                    "(push the tag again, or remove its folder)"
                )
            if str(digest) in revisions or await self._revision_now(name, digest):
                # (A manifest pushed since the revisions were listed, then tagged: no damage;
                # kept, and read by the last look like every manifest pushed meanwhile.)
                return {str(digest)}
            index = f"{layout.tag_dir(name, tag)}/index"
            history = {str(d) for d in await digest_folders(self.driver, index)} & revisions
            if history:
                log.warn(
                    "{name}: tag {tag} points at {digest}, not a manifest of the repository; "
                    "every manifest in its history is kept",
                    name=name,
                    tag=tag,
                    digest=digest,
                )
            return {str(digest)} | history

        tags = await self._list(layout.tags_dir(name))
        return set().union(*await self._map(resolve, tags))

    async def _revision_now(self, name: str, digest: Digest) -> bool:
        """Whether ``name`` has a revision of ``digest`` now (pushed since it was listed)."""
        try:
            await self.driver.stat(layout.revision_link(name, digest))
        except PathNotFoundError:
            return False
        except StorageError as exc:
            raise GCAborted(f"cannot read manifest {name}@{digest}: {exc}") from None
        return True

    async def _read(self, name: str, digest: str, revision: bool = True) -> ManifestRefs | None:
        """
        A manifest's references; None when its blob is missing (nothing to keep).  Only a
        revision without its blob is reported: an index child that is not a revision was
        never stored here (a pull-through cache's platforms nobody pulled, a sparse index),
        which is normal, and only counted.
        """
        await self._turn()
        path = layout.blob_data(Digest.parse(digest))
        try:
            body = await self.driver.get_content(path)
        except PathNotFoundError:
            if not revision:
                self.stats.children_not_stored += 1
                return None
            self.stats.manifests_missing += 1
            log.warn("{name}: manifest {digest} has no blob data", name=name, digest=digest)
            return None
        self.stats.manifests_read += 1
        refs = manifest_refs(body)
        if not refs.parsed:
            self.stats.manifests_unparseable += 1
            log.warn(
                "{name}: manifest {digest} does not parse; kept, with every digest it mentions",
                name=name,
                digest=digest,
            )
        return refs

    async def _read_all(self, name: str, digests: Iterable[str]) -> dict[str, ManifestRefs | None]:
        ordered = list(digests)
        found: dict[str, ManifestRefs | None] = {}
        for start in range(0, len(ordered), _BATCH):
            batch = ordered[start : start + _BATCH]
            found.update(
                zip(batch, await self._map(lambda d: self._read(name, d), batch), strict=True)
            )
        return found

    async def _referrers_index(self, name: str) -> dict[str, set[str]]:
        """subject -> referrers, from our referrers index (registry:2 data has none)."""
        return await ReferrersIndex(self.driver).edges(name)

    async def _scan(self, name: str) -> _Repository:
        written = await self._revisions(name)
        revisions = set(written)
        refs = await self._read_all(name, sorted(revisions))
        proxied = self.proxied(name)
        if proxied:
            # What the cache holds, manifest or layer, is the cache's eviction's to remove.
            self._mark(await self._linked(name))
        if proxied or not self.options.delete_untagged:
            roots = set(revisions)
            edges: dict[str, set[str]] = {}
        else:
            unparseable = {d for d, r in refs.items() if r is not None and not r.parsed}
            roots = await self._tagged(name, revisions) | self._young(written) | unparseable
            edges = await self._referrers_index(name)
            for digest, found in refs.items():
                if found is not None and found.subject is not None:
                    edges.setdefault(found.subject, set()).add(digest)
        kept = await self._closure(name, roots, revisions, refs, edges)
        doomed: dict[str, str | None] = {}
        for digest in _referencing_first(revisions - kept, refs):
            found = refs.get(digest)
            doomed[digest] = found.subject if found is not None else None
        self.stats.revisions_to_delete += len(doomed)
        return _Repository(name, revisions, proxied, kept, doomed)

    async def _linked(self, name: str) -> set[str]:
        return {str(d) for d in await digest_folders(self.driver, layout.layers_dir(name))}

    async def _closure(
        self,
        name: str,
        roots: Iterable[str],
        revisions: set[str],
        refs: dict[str, ManifestRefs | None],
        edges: dict[str, set[str]],
    ) -> set[str]:
        """Roots, their index children (recursively) and referrers; marks all they need."""
        kept: set[str] = set()
        work = list(roots)
        while work:
            digest = work.pop()
            if digest in kept:
                continue
            kept.add(digest)
            self._mark((digest,))
            if digest not in refs:
                refs[digest] = await self._read(name, digest, revision=digest in revisions)
            found = refs[digest]
            if found is not None:
                self._mark(found.blobs)
                work.extend(found.children)
                if not found.parsed:
                    work.extend(found.blobs & revisions)
            # Only revisions: an index entry left behind by a deleted referrer keeps nothing.
            work.extend(r for r in edges.get(digest, ()) if r in revisions)
        return kept

    # -- candidates ----------------------------------------------------------------------------

    async def examine_blobs(self) -> None:
        for algorithm in await self._list(layout.BLOBS):
            for prefix in await self._list(f"{layout.BLOBS}/{algorithm}"):
                names = await self._list(f"{layout.BLOBS}/{algorithm}/{prefix}")
                found: list[str] = []
                for hex_ in names:
                    digest = _digest(f"{algorithm}:{hex_}")
                    if digest is None or digest.hex[:2] != prefix:
                        continue  # not ours to judge
                    self.stats.blobs_examined += 1
                    found.append(str(digest))
                # Every blob is looked at, kept ones too: their sizes make the space used.
                infos = await self._map(self._blob_info, found)
                for text, info in zip(found, infos, strict=True):
                    if info is None:
                        # Nothing there: gone since the listing, or a folder emptied one file
                        # at a time that the S3 server goes on listing (SeaweedFS keeps folder
                        # entries).  Not a blob: neither stored nor waiting for its grace.
                        self.stats.blobs_examined -= 1
                        continue
                    size = info.size if not info.is_dir else 0
                    self.stats.bytes_examined += size
                    if text in self._marked:
                        continue
                    if info.modified >= self.cutoff:
                        self.stats.blobs_young += 1
                    else:
                        self._add_candidate(text, _Candidate(text, info.size))

    def _add_candidate(self, digest: str, candidate: _Candidate) -> None:
        self._candidates[digest] = candidate
        self.stats.blobs_to_delete += 1
        self.stats.bytes_to_free += candidate.size

    def _drop_candidate(self, digest: str) -> None:
        candidate = self._candidates.pop(digest, None)
        if candidate is not None:
            self.stats.blobs_to_delete -= 1
            self.stats.bytes_to_free -= candidate.size

    async def _blob_info(self, digest: str) -> FileInfo | None:
        """A blob's data, or its folder when it has none; None when both are gone."""
        await self._turn()
        parsed = Digest.parse(digest)
        try:
            return await self.driver.stat(layout.blob_data(parsed))
        except PathNotFoundError:
            # A folder without data: being written right now, or debris of a crash.
            try:
                return await self.driver.stat(layout.blob_dir(parsed))
            except PathNotFoundError:
                return None

    async def _stat_blob(self, digest: str) -> _Candidate | None:
        """A deletion candidate, or None when the blob is within the grace period."""
        info = await self._blob_info(digest)
        if info is None or info.modified >= self.cutoff:
            return None
        return _Candidate(digest, info.size)

    # -- the last look -----------------------------------------------------------------------

    async def recheck(self) -> None:
        """
        Look at every repository again just before deleting: revisions that appeared, were
        tagged or rewritten since the mark are kept with all they reference, and candidates a
        repository linked within the grace period are kept.
        """
        if not self._candidates and not any(r.doomed for r in self._repositories):
            return
        for repository in self._repositories:
            await self._keep_announced()
            await self._recheck(repository)

    async def _recheck(self, repository: _Repository) -> None:
        name = repository.name
        written = await self._revisions(name)
        revisions = set(written)
        revived = revisions - repository.revisions
        if repository.doomed:
            doomed = set(repository.doomed)
            revived |= doomed & await self._tagged(name, revisions)
            revived |= doomed & self._young(written)
        if revived:
            # Children and referrers of what came back: read them anew (few, normally).
            edges: dict[str, set[str]] = {}
            if self.options.delete_untagged:
                edges = await self._referrers_index(name)
            refs: dict[str, ManifestRefs | None] = {}
            kept = await self._closure(name, revived, revisions, refs, edges)
            repository.revisions |= revisions
            repository.kept |= kept
            for digest in kept & set(repository.doomed):
                del repository.doomed[digest]
                self.stats.revisions_to_delete -= 1
            for digest in list(self._candidates):
                if digest in self._marked:
                    self._drop_candidate(digest)
        await self._recheck_links(repository)

    async def _recheck_links(self, repository: _Repository) -> None:
        name = repository.name
        if repository.proxied:
            # A fill (or an adoption) linked it meanwhile: the cache holds it.
            for digest in await self._linked(name):
                if digest in self._candidates:
                    self.stats.blobs_young += 1
                    self._drop_candidate(digest)
            return
        linked = [
            str(digest)
            for digest in await digest_folders(self.driver, layout.layers_dir(name))
            if str(digest) in self._candidates
        ]

        async def young(digest: str) -> bool:
            await self._turn()
            path = layout.layer_link(name, Digest.parse(digest))
            try:
                info = await self.driver.stat(path)
            except PathNotFoundError:
                return False
            return info.modified >= self.cutoff

        for digest, flag in zip(linked, await self._map(young, linked), strict=True):
            if flag:
                self.stats.blobs_young += 1
                self._drop_candidate(digest)

    # -- sweep --------------------------------------------------------------------------------

    async def sweep(self) -> None:
        for repository in self._repositories:
            if repository.doomed:
                await self._delete_revisions(repository)
        if self._blobs_unsure:
            return
        await self._map(self._delete_blob, list(self._candidates.values()))

    async def _delete_revisions(self, repository: _Repository) -> None:
        name = repository.name
        deleted: set[str] = set()
        for digest_text, subject in list(repository.doomed.items()):
            if digest_text not in repository.doomed:
                continue  # kept meanwhile: a rewritten index's child
            digest = Digest.parse(digest_text)
            await self._turn()
            await self._keep_announced()
            if self._lost or self.stopped:
                break
            doomed = gcguard.revision_doomed_path(name, digest)
            marked = False
            try:
                # The protocol of registry.storage.gcguard, as for blobs: doomed first, then
                # the last look (a put after it sees doomed and fails instead of a 201).
                await self.driver.put_content(doomed, b"")
                marked = True
                if await self._revision_rewritten(name, digest):
                    # Pushed again since the last look (or an index put touched it as a
                    # child): kept, with what it refers to, whose blobs must not be swept.
                    await self._keep_rewritten(repository, digest_text)
                    with contextlib.suppress(PathNotFoundError):
                        await self.driver.delete(doomed)
                    continue
                await self.driver.delete(layout.revision_dir(name, digest))
            except PathNotFoundError:
                pass
            except Exception as exc:
                self._error(f"{name}: cannot delete revision {digest}: {exc}")
                await self._keep_undeleted(repository, digest_text, doomed if marked else None)
                continue
            self.stats.revisions_deleted += 1
            deleted.add(digest_text)
            log.info("{name}: deleted untagged manifest {digest}", name=name, digest=digest)
            subject_digest = _digest(subject) if subject is not None else None
            referrers = ReferrersIndex(self.driver)
            if subject_digest is not None and await referrers.remove(name, subject_digest, digest):
                self.stats.referrer_entries_deleted += 1
        if deleted:
            await self._delete_tag_history(name, deleted)

    async def _keep_rewritten(self, repository: _Repository, digest: str) -> None:
        """
        A doomed revision found rewritten at the sweep: it stays, and so do its children,
        referrers' subjects and blobs, as for a revision revived at the last look (an index
        put touches only its children's manifest blobs, not their layers).
        """
        edges = await self._referrers_index(repository.name) if self.options.delete_untagged else {}
        await self._keep_revision(repository, digest, edges)

    async def _keep_undeleted(
        self, repository: _Repository, digest: str, doomed: str | None
    ) -> None:
        """
        A doomed revision whose delete failed stays, so what it references must stay too: its
        manifest blob, config and layers, and its children (not deleted before it: see
        `_referencing_first`), or it would answer by digest with blobs gone.  Its referrers
        are not its references: they go or stay on their own.  When even its manifest cannot
        be read, what it needs is unknown, and no blob is deleted in this run.  Its
        ``doomed`` (if written: a folder standing there is not gc's) is taken back, so a push
        of it meanwhile is not refused for a deletion that did not happen.
        """
        if doomed is not None:
            with contextlib.suppress(Exception):
                await self.driver.delete(doomed)
        try:
            await self._keep_revision(repository, digest, {})
        except Exception as exc:
            self._blobs_unsure = True
            self._error(
                f"{repository.name}: cannot read what manifest {digest} references: "
                f"{describe_error(exc)}; no blob deleted in this run"
            )

    async def _keep_revision(
        self, repository: _Repository, digest: str, edges: dict[str, set[str]]
    ) -> None:
        """Keep a doomed revision, with its closure (`_closure`), at the sweep: neither it,
        nor the revisions and blobs the closure reaches, are deleted in this run."""
        refs: dict[str, ManifestRefs | None] = {}
        kept = await self._closure(repository.name, {digest}, repository.revisions, refs, edges)
        repository.kept |= kept
        for revision in kept & set(repository.doomed):
            del repository.doomed[revision]
            self.stats.revisions_to_delete -= 1
        for blob in list(self._candidates):
            if blob in self._marked:
                self._drop_candidate(blob)

    async def _delete_tag_history(self, name: str, deleted: set[str]) -> None:
        """
        The tag-history entries (``tags/<tag>/index/<alg>/<hex>``) naming deleted revisions:
        each tag's history is listed once, and only its entries for ``deleted`` are deleted
        (not every tag tried for every revision: tags times revisions requests).
        """

        async def forget(tag: str) -> None:
            index = f"{layout.tag_dir(name, tag)}/index"
            for digest in await digest_folders(self.driver, index):
                if str(digest) not in deleted:
                    continue
                await self._turn()
                try:
                    await self.driver.delete(layout.tag_index_dir(name, tag, digest))
                except PathNotFoundError:
                    pass
                except Exception as exc:
                    self._error(f"{name}: cannot delete tag {tag}'s entry for {digest}: {exc}")

        await self._map(forget, await self._list(layout.tags_dir(name)))

    async def _delete_blob(self, candidate: _Candidate) -> None:
        digest = Digest.parse(candidate.digest)
        await self._keep_announced()
        if self._lost or self.stopped:
            return
        try:
            # Rewritten since it was examined (a new upload of the same content): keep it.
            if await self._stat_blob(candidate.digest) is None:
                self._keep(candidate.digest)
                return
            # The protocol of registry.storage.gcguard: doomed first, then a writer's touch.
            await self.driver.put_content(gcguard.doomed_path(digest), b"")
            if await self._touched(digest):
                self._keep(candidate.digest)
                with contextlib.suppress(PathNotFoundError):
                    await self.driver.delete(gcguard.doomed_path(digest))
                return
            await self.driver.delete(layout.blob_dir(digest))
        except PathNotFoundError:
            return
        except Exception as exc:
            self._error(f"cannot delete blob {digest}: {exc}")
            return
        self.stats.blobs_deleted += 1
        self.stats.bytes_freed += candidate.size
        log.info("deleted blob {digest}", digest=digest)

    async def _revision_rewritten(self, name: str, digest: Digest) -> bool:
        """Whether the manifest was pushed again since the last look (link or touch)."""
        try:
            info = await self.driver.stat(layout.revision_link(name, digest))
        except PathNotFoundError:
            return False
        return info.modified >= self.cutoff or await self._touched(digest)

    def _keep(self, digest: str) -> None:
        """A candidate found young or touched at its delete: counted as kept, not deleted."""
        self._drop_candidate(digest)
        self.stats.blobs_young += 1

    async def _touched(self, digest: Digest) -> bool:
        """Whether a push referred to the blob while this run was on (or within the grace)."""
        try:
            info = await self.driver.stat(gcguard.touched_path(digest))
        except PathNotFoundError:
            return False
        return info.modified >= self.cutoff

    def _error(self, message: str) -> None:
        self.stats.errors.append(message)
        log.error("{message}", message=message)

    # -- results ------------------------------------------------------------------------------

    @property
    def candidates(self) -> list[str]:
        """Blobs deleted (or, in a dry run, that would be), sorted."""
        return sorted(self._candidates)

    @property
    def doomed_revisions(self) -> list[tuple[str, str]]:
        """(repository, digest) of revisions deleted (or that would be), sorted."""
        return sorted((r.name, d) for r in self._repositories for d in r.doomed)


def _referencing_first(doomed: set[str], refs: dict[str, ManifestRefs | None]) -> list[str]:
    """
    The revisions to delete, each before the doomed ones it references (an index before its
    children, recursively), by digest otherwise: a revision whose delete fails keeps what it
    references (`GarbageCollector._keep_undeleted`), which must not be gone by then.  A
    reverse post-order of a depth-first walk; a cycle (damaged data) ends where it closes.
    """
    order: list[str] = []
    visited: set[str] = set()
    for root in sorted(doomed, reverse=True):
        stack = [(root, False)]
        while stack:
            digest, finished = stack.pop()
            if finished:
                order.append(digest)
                continue
            if digest in visited:
                continue
            visited.add(digest)
            stack.append((digest, True))
            found = refs.get(digest)
            children = found.children if found is not None else ()
            stack.extend((child, False) for child in sorted(children) if child in doomed)
    order.reverse()
    return order


async def collect_garbage(
    driver: IStorageDriver, options: GCOptions, now: float, stats: GCStats | None = None
) -> GarbageCollector:
    """Run one collection; ``stats`` (if given) is updated live for progress reports."""
    collector = GarbageCollector(driver, options, now, stats if stats is not None else GCStats())
    await collector.run()
    return collector
