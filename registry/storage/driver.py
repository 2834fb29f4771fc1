"""
The storage-driver interface: the only thing a storage backend implements.

Paths are ``/``-separated, relative to the driver's root, with no leading slash, and always built
by `registry.storage.layout` from validated names and digests.  Every method is asynchronous
(returns an awaitable) because the S3 backend does network I/O for each of them; the filesystem
backend answers most of them at once.

Large data never passes through a single call: reads come back as an `IBodyProducer` that writes
into any `IConsumer` (an HTTP response, a hasher, an upstream tee) with back-pressure, and writes
go through an `IFileWriter` that appends chunk by chunk.  The writer's contract follows
registry:2's ``FileWriter``: append until ``commit``; ``close`` keeps what was written so a later
``writer(path, append=True)`` continues it (`PathNotFoundError` when there is nothing to
continue: it never creates); ``cancel`` discards.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer
from zope.interface import Attribute, Interface

# Set, in a task's own context, by a caller that reports storage trouble its own way (the
# health check, through its answer and one line when it turns): a driver that tries a call
# again writes no line of its own for that task's calls.
QUIET_RETRIES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "storage_quiet_retries", default=False
)


# Drivers whose files are their own: what a writer closed is at its path, read back as it
# is, and the storage belongs to one host (S3 buckets are shared between instances, and an
# unfinished file lives beside its key, not at it).
LOCAL_DRIVERS = ("filesystem", "inmemory")


class StorageError(Exception):
    """A backend failure that is not the caller's fault (I/O error, S3 5xx, ...)."""


class StorageFull(StorageError):
    """The disk (or a quota) has no room left: a 503 that says so, like any storage error;
    a garbage collection that meets it frees the room it keeps for this
    (`registry.storage.reserve`)."""


class WriteTakenOver(StorageError):
    """
    Another request took over the file this writer was writing (the writer stopped renewing
    its hold on it: a pause, a network cut), so what this writer did since is not kept.  Not
    a storage failure: the client's upload went on without this request.
    """


class WriteRemoved(WriteTakenOver):
    """
    The file was removed while this writer wrote it: its upload was cancelled, purged, or
    finished by another request.  Nothing this writer wrote is kept, and there is nothing
    left to continue (the client's upload is unknown now).
    """


class PathNotFoundError(StorageError):
    """The path does not exist (for `list`: the folder is missing or empty)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"path not found: {path}")
        self.path = path


class NotAFileError(StorageError):
    """
    A folder (or another non-file) stands where a file should be: damaged storage (a person's
    ``mkdir``, a restore gone wrong).  Not `PathNotFoundError`: "missing" would let garbage
    collection take a tag for gone and delete what it points at, and let a blob read as empty.
    """

    def __init__(self, path: str, what: str = "a folder") -> None:
        super().__init__(f"storage damaged at {path}: {what} where a file should be")
        self.path = path


class PathBusyError(StorageError):
    """``writer(path, append=True)`` while another writer (of any process) has it open: one
    writer at a time, or two requests' bytes would interleave in one file."""


class VersionChangedError(StorageError):
    """
    A conditional write found the file not as the caller last saw it (`IConditionalWrites`):
    there already (a create), changed by another writer, or gone (a replace).
    """


class InvalidOffsetError(StorageError):
    """A read started beyond the end of the file."""

    def __init__(self, path: str, offset: int) -> None:
        super().__init__(f"invalid offset {offset} for {path}")
        self.path = path
        self.offset = offset


@attrs.frozen
class FileInfo:
    """What `IStorageDriver.stat` knows of a path; ``size`` is 0 for folders."""

    path: str
    size: int
    modified: float
    is_dir: bool


@attrs.frozen
class WriteActivity:
    """
    What `IStorageDriver.write_activity` knows of the writes of a file: ``idle``, seconds since
    it was last written (never negative); ``writing``, whether a writer holds it right now.
    """

    idle: float
    writing: bool = False


class IFileWriter(Interface):
    """
    Appends bytes to one file.  Not safe for two writers on one path at once: the upload logic
    serialises access to an upload.
    """

    size = Attribute("int: bytes in the file so far, including what an appended-to file held")

    def write(data: bytes) -> Deferred[None] | None:
        """
        Append ``data``.  Return None when the data is taken and the caller may write again at
        once; return a Deferred when the caller must wait for it before writing more (that is
        the back-pressure an upload passes on to the client's socket).  Failures surface through
        the Deferred or on the next `close`/`commit`.
        """

    def reserve(length: int) -> Awaitable[None]:
        """
        A hint that ``length`` more bytes follow (a request's ``Content-Length``): a driver
        may set space aside, or ignore it.  StorageError when the disk is known to be full.
        """

    def close() -> Awaitable[None]:
        """Flush and stop; what was written stays, so ``writer(path, append=True)`` resumes it."""

    def commit() -> Awaitable[None]:
        """Flush and finish: the file is complete and visible at its path."""

    def cancel() -> Awaitable[None]:
        """Discard the file and everything written to it."""

    def rollback() -> Awaitable[None]:
        """
        Stop, and drop what this writer appended: the file is left as it was when the writer
        was opened (an upload whose request body was refused as malformed stays resumable where
        it was; the client was told nothing of this body was taken).
        """


class IStorageDriver(Interface):
    """A storage backend.  Implementations: filesystem, in-memory, S3."""

    name = Attribute("str: the driver's config name (filesystem, inmemory, s3)")

    def get_content(path: str) -> Awaitable[bytes]:
        """
        The whole content of a small file (links, manifests).  PathNotFoundError if missing;
        `NotAFileError` where a folder stands in its place (a filesystem's damage).
        """

    def put_content(path: str, data: bytes) -> Awaitable[None]:
        """Replace the file at ``path`` with ``data`` atomically: readers see old or new, whole."""

    def stat(path: str) -> Awaitable[FileInfo]:
        """Size and modification time of a file, or ``is_dir`` for a folder; PathNotFoundError."""

    def list(path: str) -> Awaitable[list[str]]:
        """
        The names (not paths) of the direct children of folder ``path``, sorted.
        PathNotFoundError when the folder does not exist or is empty.
        """

    def delete(path: str) -> Awaitable[None]:
        """Delete a file or a whole folder; PathNotFoundError when nothing is there."""

    def move(source: str, dest: str) -> Awaitable[None]:
        """Move a file, replacing ``dest``; atomic for readers of ``dest``.  PathNotFoundError."""

    def reader(path: str, offset: int = 0, length: int | None = None) -> Awaitable[IBodyProducer]:
        """
        A producer of ``length`` bytes (default: to the end) starting at ``offset``; its
        ``length`` attribute is the number of bytes it will write.  ``startProducing(consumer)``
        returns a Deferred that fires when all bytes were written; the caller registers the
        producer with the consumer if the consumer needs to pause it (an HTTP request does).
        PathNotFoundError if missing, InvalidOffsetError if ``offset`` is past the end.
        """

    def writer(path: str, append: bool = False) -> Awaitable[IFileWriter]:
        """A writer for ``path``: a new empty file, or (``append``) one continuing it, which
        has the file to itself until it is closed: `PathBusyError` while another has it."""

    def redirect_url(path: str, method: str) -> Awaitable[str | None]:
        """A URL a client can fetch ``path`` from directly, or None when the driver has none."""

    def write_activity(path: str, now: float) -> Awaitable[WriteActivity]:
        """
        How recently the file at ``path`` was written, by the driver's own account of its
        writes: those of a writer not yet closed or committed count too, wherever the driver
        keeps them (on S3 beside the key, which exists only once committed; the lease a
        writer renews while it writes proves it is writing).  What the upload purge judges
        an upload's idle time by.  ``now`` is the caller's clock, for drivers whose times are
        on it; a driver with a clock of its own (S3's) measures on that, so that a skewed
        clock does not age a file.  PathNotFoundError when there is neither the file nor an
        unfinished write of it; `NotAFileError` where a folder stands in its place.
        """


class ISymbolicLinks(Interface):
    """
    An optional driver capability: folder listings that tell symbolic links apart (the
    filesystem's).  The walks of ``repositories/`` (`registry.storage.catalog.walk_folders`)
    do not follow them: a link to ``..`` made every walk list names nested without end, and
    a link to another repository would list it twice, under two names, for gc to count and
    delete twice.
    """

    def list_apart(path: str) -> Awaitable[tuple[list[str], list[str]]]:
        """
        ``list(path)`` in two sorted parts: the names that are not symbolic links, and those
        that are.  PathNotFoundError when the folder does not exist or is empty, as ``list``.
        """


class IEmptyFolders(Interface):
    """
    An optional driver capability: folders that outlive what was in them (the filesystem's).
    On S3 and in memory a folder is only the keys below it, and goes with the last of them;
    on a filesystem, purging an upload leaves its ``_uploads`` folder and its repository's
    folder behind: two folders, and their blocks, for every name a client ever started a
    push to.
    """

    def remove_empty_folders(path: str, keep: str) -> Awaitable[int]:
        """
        Remove folder ``path`` if it is empty, then each of its parents while it is empty,
        stopping below ``keep`` (an ancestor of ``path``, never removed); how many were
        removed.  Each only if it is empty at that very moment (``rmdir``), so nothing a
        concurrent write put there is lost, and a write that finds a parent of its file gone
        makes it again.
        """


class IStagedWrites(Interface):
    """
    An optional driver capability: write a file straight at its final path, invisible there
    until ``commit``.  The upload store uses it when a push names its digest up front, so the
    blob needs no move (on S3, no server-side copy) at commit, while no reader ever sees
    unverified bytes at a content address.
    """

    def staged_writer(path: str) -> Awaitable[IFileWriter]:
        """
        A writer for a new ``path`` whose bytes nobody can read until ``commit`` (which
        replaces any file there whole).  ``close`` and ``cancel`` both discard what was
        written and never touch a file already at ``path``; there is nothing to resume.
        """

    def abort_stale_writes(
        path: str,
        age: float,
        now: float,
        owned: Callable[[str], Awaitable[bool]] | None = None,
    ) -> Awaitable[int]:
        """
        Discard the unfinished writes below folder ``path`` begun more than ``age`` seconds
        before ``now`` that no writer is at work on (a process killed mid-write leaves them,
        invisible) and nothing will continue; returns how many.  ``owned(file)`` says whether
        a file below ``path`` is still wanted (an upload's data the purge keeps): its
        unfinished write that the file would be continued from stays.
        """


@attrs.frozen
class Unfinished:
    """
    A file being written whose bytes cannot be read back until it is committed (on S3: the
    parts of a multipart upload), so an upload cannot hash them again: its ``size``, and the
    offsets it can be cut back to (`ICutBack.cut`), the ends of its parts (``part_ends``, 0
    first) and any offset from ``tail_start`` to ``size`` (bytes still held readable).
    """

    size: int
    part_ends: tuple[int, ...]
    tail_start: int

    def can_cut_to(self, offset: int) -> bool:
        return offset in self.part_ends or self.tail_start <= offset <= self.size


class IUnfinishedFiles(Interface):
    """An optional driver capability: files whose unfinished bytes cannot be read back."""

    def unfinished(path: str) -> Awaitable[Unfinished | None]:
        """
        ``path``'s unfinished file as a closed writer left it (no lease taken: a request may
        be writing it); None when there is none, or its bytes can be read at ``path``.
        """


class ICutBack(Interface):
    """An optional writer capability: an appending writer cut back before it writes."""

    def unfinished() -> Unfinished | None:
        """What the writer continues, as `IUnfinishedFiles.unfinished` says."""

    def cut(offset: int) -> Awaitable[None]:
        """
        Drop every byte past ``offset`` (one `Unfinished.can_cut_to` allows), before any
        write: ``size`` becomes ``offset``, and ``close`` records the file so.
        """


class IConditionalWrites(Interface):
    """
    An optional driver capability: small files written only if they are as the caller last
    saw them, which is one owner at a time across processes and hosts (the marker of the
    garbage collection running, `registry.storage.gcguard`).  A version is an opaque string,
    different for every write of different content.
    """

    def create(path: str, data: bytes) -> Awaitable[str]:
        """
        Write ``data`` at ``path`` only if nothing is there, whole and at once; its version.
        `VersionChangedError` when a file is there.
        """

    def read_versioned(path: str) -> Awaitable[tuple[bytes, str]]:
        """A file's content and version; PathNotFoundError."""

    def replace_version(path: str, data: bytes, version: str) -> Awaitable[str]:
        """
        Replace the file only if it is still at ``version``; the new version.
        `VersionChangedError` when it changed or is gone.
        """

    def delete_version(path: str, version: str) -> Awaitable[None]:
        """
        Delete the file only if it is still at ``version``.  `VersionChangedError` when it
        changed, PathNotFoundError when it is gone.
        """
