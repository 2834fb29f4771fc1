"""
The filesystem storage driver: registry:2's layout under a root folder.

Small files (links, manifests, hash states) are read and written in the reactor thread: they are
a few bytes in the page cache, and a thread hop would cost more than the call.  Whole-folder
work (listing, recursive delete), reading blob data and fsync run in the driver's thread pool.
Appends to an upload go straight to the file from the reactor thread: measured here, hashing and
writing inline beat handing chunks to a worker thread, and back-pressure bounds what is queued.

Atomicity: small files are written to a temporary sibling and renamed over the target, and a
finished upload becomes a blob by rename, so a reader never sees a half-written file, whatever
happens to the process.  A write that fails (a full disk) removes its temporary file, and the
folders it made for it.

Errors: a missing path is `PathNotFoundError`; a folder read as a file is `NotAFileError`
(damage, never "missing"); every other ``OSError`` (no space, no
permission, an I/O error) becomes a `StorageError` carrying the system's reason, which clients
get as a 503 that says it.

The root is made by the first write if it is not there (as registry:2 does; the start-up
probe's write makes it).  Once seen, it is never made again: a root that went away (a lost
mount, an ``rm -rf``, a folder replaced by a file) is a storage failure, not an empty registry
to start afresh in.  Writes fail with that reason, and a read that finds nothing says so
rather than "not found".
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from registry.storage.driver import (
    FileInfo,
    IConditionalWrites,
    IEmptyFolders,
    IFileWriter,
    InvalidOffsetError,
    IStorageDriver,
    ISymbolicLinks,
    NotAFileError,
    PathBusyError,
    PathNotFoundError,
    StorageError,
    StorageFull,
    VersionChangedError,
    WriteActivity,
    WriteRemoved,
)
from registry.storage.preallocate import release_unused, reserve_space
from registry.storage.producers import FileProducer

# What `writer(append=True)` refuses to continue (`NotAFileError`).
_NOT_REGULAR = "a symbolic link, a FIFO, a device or a folder"

log = Logger()
T = TypeVar("T")
_TEMP_PREFIX = ".tmp-"
_RESERVE_WINDOW = 64 * 1024 * 1024
# Bytes a writer writes between two looks at whether its file was removed meanwhile (an
# upload cancelled or purged while a PATCH streams into it): the rest of the body would go on
# filling the disk with bytes nobody can see or reclaim until the request ends.  One fstat.
_REMOVAL_CHECK = 16 * 1024 * 1024
_TRASH = ".trash"
# Emptyings of the trash queued in the pool at most; a delete beyond waits for one to finish.
# A caller deleting in a loop (the upload purge, through tens of thousands of uploads) queued
# one job per path faster than the pool ran them: 30,000 uploads held 40 MiB of queued jobs.
_TRASH_BACKLOG = 64
# Beside a file written conditionally (`IConditionalWrites`): what replaces and deletes of it
# take turns on.  Never deleted: a lock file removed while another process waits on it would
# let two in at once.
_LOCK_SUFFIX = ".lock"


def _storage_error(what: str, exc: OSError) -> StorageError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (StorageFull if full else StorageError)(f"{what}: {exc.strerror or exc}")


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """An ``OSError`` inside becomes a `StorageError` saying what failed and why."""
    try:
        yield
    except OSError as exc:
        raise _storage_error(what, exc) from exc


@implementer(IFileWriter)
class _FileWriter:
    def __init__(
        self, driver: FilesystemDriver, path: str, file: IO[bytes], size: int, locked: bool = False
    ) -> None:
        self._driver = driver
        self._path = path
        self._file: IO[bytes] | None = file
        self.size = size
        self._opened_size = size  # what `rollback` goes back to
        # An appender's file is locked (`FilesystemDriver.writer`); after `commit` it stays
        # open, so the lock is held while the caller moves the file, until `close`.
        self._locked = locked
        self._kept: IO[bytes] | None = None
        # Space set aside by `reserve`, and how far the request's body will go.
        self._reserved_end = 0
        self._promised_end = 0
        self._checked_at = size  # where `write` last looked for a removal

    def write(self, data: bytes) -> Deferred[None] | None:
        if self._file is None:
            raise StorageError(f"writer for {self._path} is closed")
        end = self.size + len(data)
        if end - self._checked_at >= _REMOVAL_CHECK:
            self._checked_at = end
            if os.fstat(self._file.fileno()).st_nlink == 0:
                # `close` says the same (and the caller closes next): what was written is gone.
                raise WriteRemoved(f"{self._path} was removed while written")
        if end > self._reserved_end and self._promised_end > self._reserved_end:
            with contextlib.suppress(OSError):  # a full disk: the write itself will say so
                self._reserve_next()
        try:
            self._file.write(data)
        except OSError as exc:  # a full disk, an I/O error: the client gets a 503 that says so
            raise _storage_error(f"writing {self._path}", exc) from exc
        self.size = end
        return None

    async def reserve(self, length: int) -> None:
        if self._file is None:
            raise StorageError(f"writer for {self._path} is closed")
        self._promised_end = self.size + length
        try:
            self._reserve_next()
        except OSError as exc:
            raise _storage_error(f"reserving {length} bytes for {self._path}", exc) from exc

    def _reserve_next(self) -> None:
        """
        The next window of the promised bytes.  In windows, not all at once: a client that
        announces terabytes and sends nothing holds one window, not the disk.  A window is
        one extent-allocating call (0.05 ms for 64 MiB here): done in this thread, like the
        writes it saves work for.
        """
        assert self._file is not None
        start = max(self.size, self._reserved_end)
        length = min(_RESERVE_WINDOW, self._promised_end - start)
        try:
            reserved = length > 0 and reserve_space(self._file.fileno(), start, length)
        except OSError:  # reserve_space gave back all space beyond the data
            self._reserved_end = self._promised_end = 0
            raise
        if reserved:
            self._reserved_end = start + length
        else:
            self._promised_end = 0  # nothing left to reserve, or no preallocation here

    async def _release_unused(self, file: IO[bytes]) -> None:
        if self._reserved_end > self.size:
            file.flush()
            await self._driver._in_thread(release_unused, file.fileno())
        self._reserved_end = self._promised_end = 0

    async def close(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()
        file, self._file = self._file, None
        if file is not None:
            # Closing flushes the last buffered bytes: a full disk can show up here.
            with _failing(f"writing {self._path}"):
                try:
                    await self._release_unused(file)
                    file.flush()
                    # Removed while written (its upload cancelled or purged meanwhile): what
                    # was written is gone with it, and nothing may be recorded beside it.
                    removed = os.fstat(file.fileno()).st_nlink == 0
                finally:
                    file.close()
            if removed:
                raise WriteRemoved(f"{self._path} was removed while written")

    async def commit(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        with _failing(f"writing {self._path}"):
            try:
                await self._release_unused(file)
                file.flush()
                if self._driver.fsync:
                    await self._driver._in_thread(os.fsync, file.fileno())
            finally:
                if self._locked:
                    self._kept = file
                else:
                    file.close()

    async def rollback(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()
        file, self._file = self._file, None
        if file is None:
            return
        with _failing(f"truncating {self._path}"):
            try:
                with contextlib.suppress(OSError):  # a full disk: truncated away just below
                    file.flush()
                # Also gives back space reserved beyond it (preallocated blocks past the end).
                os.ftruncate(file.fileno(), self._opened_size)
            finally:
                with contextlib.suppress(OSError):  # nothing is left unflushed worth keeping
                    file.close()
        self.size = self._opened_size
        self._reserved_end = self._promised_end = 0

    async def cancel(self) -> None:
        with contextlib.suppress(StorageError):  # unflushed bytes of a file being removed
            await self.close()
        with contextlib.suppress(FileNotFoundError), _failing(f"removing {self._path}"):
            os.unlink(self._driver._full(self._path))


# Allocated past the data beyond this, a file holds space a writer set aside (`reserve`), not
# the few blocks of a filesystem's own bookkeeping (an extent tree's, a partly used last block).
_INHERITED_SLACK = 1024 * 1024


def _release_inherited(fd: int) -> None:
    """
    Give back space a previous writer set aside past the data and never gave back: killed
    (kill -9) mid-request, its process could not, and nothing else would, since a commit moves
    the file as it is (the blob would keep tens of MiB for good, counted nowhere, as df sees
    it).  An fstat per appender; the truncation only after such a death.
    """
    info = os.fstat(fd)
    if info.st_blocks * 512 > info.st_size + _INHERITED_SLACK:
        release_unused(fd)


def _remove_made(made: list[str]) -> None:
    """Remove the folders a failed write made, the deepest first, each only while empty
    (``rmdir``): one that another write has put something in meanwhile stays, and so do its
    parents; a write that finds a parent of its file gone makes it again (`_in_folder`)."""
    for folder in reversed(made):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError:
            return


def _still_at(file: IO[bytes], full: str) -> bool:
    """Whether the open ``file`` is the one at ``full`` now (not moved, not removed)."""
    try:
        here = os.stat(full)
    except FileNotFoundError:
        return False
    mine = os.fstat(file.fileno())
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _remove(full: str) -> bool:
    try:
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)
    except FileNotFoundError:
        return False
    return True


def _replace(source: str, full: str, path: str) -> None:
    """
    ``os.replace``, also over an empty folder standing where the file goes (damage: a
    ``mkdir`` at a blob's ``data``), so that pushing the right bytes repairs it.  Only an
    empty one: ``rmdir`` cannot lose data, while a folder with content in it may be
    something a person put there, so that write fails naming the path, and they decide.
    """
    try:
        os.replace(source, full)
    except IsADirectoryError:
        try:
            os.rmdir(full)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise NotAFileError(path) from None
            raise
        log.warn("storage repaired at {path}: an empty folder replaced by the file", path=path)
        os.replace(source, full)


# What link(2) answers on a file system that has no hard links.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}
)

# Path components a storage path never has (empty, or climbing out of the root).
_BAD_PARTS = frozenset(("", ".", ".."))
_ROOT_GONE = "the storage root {root} is gone or not a folder"
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
# Most content read whole is a link or a manifest: one read of this size, then the read that
# finds the end.
_FIRST_READ = 4096


def _read_all(fd: int) -> bytes:
    """Everything from ``fd`` to its end (a directory raises `IsADirectoryError`)."""
    first = os.read(fd, _FIRST_READ)
    if not first:
        return first
    parts = [first]
    while chunk := os.read(fd, max(_FIRST_READ, 2 * len(parts[-1]))):
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _version(data: bytes) -> str:
    """A conditional file's version: its content's hash (its writers make each one unique)."""
    return hashlib.sha256(data).hexdigest()


@implementer(IStorageDriver, ISymbolicLinks, IConditionalWrites, IEmptyFolders)
class FilesystemDriver:
    name = "filesystem"

    def __init__(
        self, root: str, reactor: Any, threadpool: ThreadPool, fsync: bool = False
    ) -> None:
        self.root = os.path.abspath(root)
        self._prefix = os.path.join(self.root, "")  # the root with one trailing separator
        self.fsync = fsync
        self._reactor = reactor
        self._threadpool = threadpool
        # Outside registry:2's tree (``docker/``), on the same filesystem, so moving is a rename.
        self._trash = os.path.join(self.root, _TRASH)
        self._trash_jobs = 0
        self._trash_waiters: list[Deferred[None]] = []
        # Whether the root was there: made once if not (the first write, the start-up probe's),
        # never again after it was seen (see the module's docstring).
        self._root_seen = os.path.isdir(self.root)

    def _make_folder(self, directory: str, made: builtins.list[str] | None = None) -> None:
        """``os.makedirs`` that makes the root only if it was never there; the folders it
        makes (the root aside) are added to ``made``, parents first."""
        if directory == self.root:
            if not os.path.isdir(directory):
                if self._root_seen:
                    raise FileNotFoundError(errno.ENOENT, _ROOT_GONE.format(root=self.root))
                os.makedirs(directory, exist_ok=True)
            self._root_seen = True
            return
        try:
            os.mkdir(directory)
        except FileExistsError:
            return
        except FileNotFoundError:
            self._make_folder(os.path.dirname(directory), made)
            try:
                os.mkdir(directory)
            except FileExistsError:
                return
        if made is not None:
            made.append(directory)

    def _in_folder(
        self, directory: str, make: Callable[[], T], made: builtins.list[str] | None = None
    ) -> T:
        """
        ``make()``, which puts a file in ``directory``, after making the folder; once more
        when the folder went away in between.  The upload purge removes the folders it
        leaves empty (`remove_empty_folders`), and a push to that name may be making them
        again at that moment: the ``rmdir`` can land between the ``mkdir`` of a parent and
        that of its child, or between the last ``mkdir`` and the ``open`` of the file.  A
        second miss would need the purge to win that race again, on its way up.
        """
        try:
            self._make_folder(directory, made)
            return make()
        except FileNotFoundError:
            # Missing for another reason (the source of a move, a root gone): no retry.
            if os.path.isdir(directory) or not os.path.isdir(self.root):
                raise
        self._make_folder(directory, made)
        return make()

    def _missing(self, path: str) -> StorageError:
        """What a read that found nothing at ``path`` means: not there, or no root at all."""
        if os.path.isdir(self.root) or not (self._root_seen or os.path.lexists(self.root)):
            return PathNotFoundError(path)
        return StorageError(f"reading {path}: {_ROOT_GONE.format(root=self.root)}")

    def _full(self, path: str) -> str:
        # Called once per storage call (10,000 times for a page of tags sorted by date): set
        # membership and one concatenation, not a generator and os.path.join over the parts.
        parts = set(path.split("/"))
        if not path or not parts.isdisjoint(_BAD_PARTS):
            raise ValueError(f"invalid storage path {path!r}")
        return self._prefix + path

    def _in_thread(self, func: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._threadpool, func, *args)

    async def get_content(self, path: str) -> bytes:
        # Every manifest GET reads two or three of these (links of ~71 bytes, the manifest):
        # a descriptor and plain reads, not a buffered file object (which also fstats to size
        # its buffer), take about half the time.
        try:
            fd = os.open(self._full(path), _READ_FLAGS)
            try:
                return _read_all(fd)
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(path) from None
        except IsADirectoryError:
            raise NotAFileError(path) from None
        except OSError as exc:
            raise _storage_error(f"reading {path}", exc) from exc

    async def put_content(self, path: str, data: bytes) -> None:
        """
        A write that fails removes its temporary file and the folders it made: a full disk
        makes folders (a tmpfs's take no room) and then refuses the file's bytes, and a
        ``_layers/...`` folder left for a link never written made a repository of a name
        that was never pushed (`registry.storage.repositories`).
        """
        full = self._full(path)
        directory = os.path.dirname(full)
        made: builtins.list[str] = []

        def write() -> None:
            temp = os.path.join(directory, f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
            try:
                with open(temp, "wb") as file:
                    file.write(data)
                _replace(temp, full, path)
            except (OSError, StorageError):
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise

        with _failing(f"writing {path}"):
            try:
                self._in_folder(directory, write, made)
            except (OSError, StorageError):
                _remove_made(made)
                raise

    async def create(self, path: str, data: bytes) -> str:
        """
        Written whole to a temporary sibling, then hard-linked at ``path``: ``link`` fails
        when a file is there (``O_EXCL`` would show an empty file to readers before its bytes).
        A file system without hard links (vfat, some network and FUSE mounts) gets ``O_EXCL``
        after all: a reader of the gc marker takes an empty one for a damaged one, which is
        the safe side (any doomed file counts).
        """
        full = self._full(path)
        directory = os.path.dirname(full)

        def write() -> None:
            temp = os.path.join(directory, f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
            try:
                with open(temp, "wb") as file:
                    file.write(data)
                try:
                    os.link(temp, full)
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
                    with open(full, "xb") as file:
                        file.write(data)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temp)

        with _failing(f"creating {path}"):
            try:
                self._in_folder(directory, write)
            except FileExistsError:
                raise VersionChangedError(f"{path} exists already") from None
        return _version(data)

    async def read_versioned(self, path: str) -> tuple[bytes, str]:
        data = await self.get_content(path)
        return data, _version(data)

    async def replace_version(self, path: str, data: bytes, version: str) -> str:
        full = self._full(path)

        def replace(current: bytes | None) -> None:
            if current is None or _version(current) != version:
                raise VersionChangedError(f"{path} changed")
            temp = os.path.join(os.path.dirname(full), f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
            try:
                with open(temp, "wb") as file:
                    file.write(data)
                os.replace(temp, full)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise

        with _failing(f"replacing {path}"):
            await self._in_thread(self._in_turn, full, replace)
        return _version(data)

    async def delete_version(self, path: str, version: str) -> None:
        full = self._full(path)

        def delete(current: bytes | None) -> None:
            if current is None:
                raise PathNotFoundError(path)
            if _version(current) != version:
                raise VersionChangedError(f"{path} changed")
            os.unlink(full)

        with _failing(f"deleting {path}"):
            await self._in_thread(self._in_turn, full, delete)

    @staticmethod
    def _in_turn(full: str, step: Any) -> None:
        """``step(content or None)`` holding the file's lock: the look and the change are one
        (every process's replace and delete take it; a create cannot land on a file there)."""
        lock = os.open(full + _LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(full, "rb") as file:
                    current: bytes | None = file.read()
            except FileNotFoundError:
                current = None
            step(current)
        finally:
            os.close(lock)

    async def stat(self, path: str) -> FileInfo:
        try:
            result = os.stat(self._full(path))
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(path) from None
        except OSError as exc:
            raise _storage_error(f"reading {path}", exc) from exc
        is_dir = stat.S_ISDIR(result.st_mode)
        return FileInfo(path, 0 if is_dir else result.st_size, result.st_mtime, is_dir)

    async def list(self, path: str) -> list[str]:
        full = self._full(path)

        def names() -> list[str]:
            try:
                return sorted(n for n in os.listdir(full) if not n.startswith(_TEMP_PREFIX))
            except (FileNotFoundError, NotADirectoryError):
                return []

        with _failing(f"listing {path}"):
            found: list[str] = await self._in_thread(names)
        if not found:
            raise self._missing(path)
        return found

    async def list_apart(self, path: str) -> tuple[builtins.list[str], builtins.list[str]]:
        full = self._full(path)

        def names() -> tuple[builtins.list[str], builtins.list[str]]:
            plain: builtins.list[str] = []
            links: builtins.list[str] = []
            try:
                with os.scandir(full) as entries:
                    for entry in entries:
                        if not entry.name.startswith(_TEMP_PREFIX):
                            (links if entry.is_symlink() else plain).append(entry.name)
            except (FileNotFoundError, NotADirectoryError):
                pass
            return sorted(plain), sorted(links)

        with _failing(f"listing {path}"):
            found: tuple[builtins.list[str], builtins.list[str]] = await self._in_thread(names)
        if not found[0] and not found[1]:
            raise self._missing(path)
        return found

    async def delete(self, path: str) -> None:
        """
        Gone from ``path`` on return; the space comes back a moment later.  The file or folder
        is renamed into the trash, and emptied from there in the pool: removing a large file
        takes the kernel 60-240 ms per GiB (bench/unlink_cost.py), which a client committing a
        blob that was already stored (its upload is dropped) would otherwise wait for.  Only
        while more than `_TRASH_BACKLOG` emptyings wait for the pool does a delete wait, for
        one of them.
        """
        full = self._full(path)
        try:
            doomed = self._into_trash(full)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(path) from None
        except OSError as exc:
            raise _storage_error(f"deleting {path}", exc) from exc
        if doomed is None:
            with _failing(f"deleting {path}"):
                removed = await self._in_thread(_remove, full)
            if not removed:
                raise self._missing(path)
            return
        self._empty_trash_later(doomed)
        while self._trash_jobs > _TRASH_BACKLOG:
            waiter: Deferred[None] = Deferred()
            self._trash_waiters.append(waiter)
            await waiter

    def _into_trash(self, full: str) -> str | None:
        """
        The path's new name in the trash; None where a rename cannot do it (the trash on
        another filesystem, say), and the caller removes it in place.
        """
        doomed = os.path.join(self._trash, uuid.uuid4().hex)
        for attempt in range(2):
            try:
                os.rename(full, doomed)
                return doomed
            except OSError as exc:
                os.lstat(full)  # FileNotFound/NotADirectory: the path itself is missing
                if attempt == 0 and exc.errno == errno.ENOENT:
                    with contextlib.suppress(OSError):
                        self._make_folder(self._trash)
                    continue
        return None

    def _empty_trash_later(self, *paths: str) -> None:
        def failed(failure: Failure) -> None:
            if failure.check(OSError):
                # The storage went away or changed under us (a lost mount, a root replaced):
                # what is left in the trash is removed at the next start (`empty_trash`).
                error = failure.value
                log.warn(
                    "could not empty the storage trash: {reason}",
                    reason=getattr(error, "strerror", None) or str(error),
                )
                return
            log.failure("emptying {paths} from the storage trash", failure, paths=paths)

        self._trash_jobs += 1
        emptying = self._in_thread(lambda: [_remove(p) for p in paths])
        emptying.addErrback(failed)
        emptying.addBoth(self._trash_emptied)

    def _trash_emptied(self, result: object) -> None:
        self._trash_jobs -= 1
        waiters, self._trash_waiters = self._trash_waiters, []
        for waiter in waiters:
            if not waiter.called:  # not cancelled (its delete's caller went away)
                waiter.callback(None)

    def empty_trash(self) -> None:
        """At start-up: whatever a stopped process had not finished removing."""
        try:
            leftovers = [os.path.join(self._trash, n) for n in os.listdir(self._trash)]
        except OSError:  # none, or not a folder (then deletes remove in place)
            return
        if leftovers:
            self._empty_trash_later(*leftovers)

    async def move(self, source: str, dest: str) -> None:
        full_source, full_dest = self._full(source), self._full(dest)
        with _failing(f"moving {source} to {dest}"):
            try:
                self._in_folder(
                    os.path.dirname(full_dest), lambda: _replace(full_source, full_dest, dest)
                )
            except FileNotFoundError:
                raise PathNotFoundError(source) from None

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> IBodyProducer:
        try:
            file = open(self._full(path), "rb")  # noqa: SIM115 - the producer owns it
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(path) from None
        except IsADirectoryError:
            raise NotAFileError(path) from None
        except OSError as exc:
            raise _storage_error(f"reading {path}", exc) from exc
        size = os.fstat(file.fileno()).st_size
        if offset < 0 or offset > size:
            file.close()
            raise InvalidOffsetError(path, offset)
        file.seek(offset)
        available = size - offset
        count = available if length is None else min(length, available)
        return FileProducer(self._reactor, self._threadpool, file, count)

    async def writer(self, path: str, append: bool = False) -> IFileWriter:
        full = self._full(path)
        with _failing(f"writing {path}"):
            if append:
                # Continuing what is there, never creating it: an upload cancelled while this
                # request was on its way must stay gone (its folder is not made again).
                # Never through a symbolic link (it would write outside the root), and a FIFO
                # or a device refuses at once instead of blocking the reactor on its open.
                flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
                try:
                    fd = os.open(full, flags | getattr(os, "O_CLOEXEC", 0))
                except FileNotFoundError:
                    raise PathNotFoundError(path) from None
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                        raise NotAFileError(path, _NOT_REGULAR) from None
                    raise
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise NotAFileError(path, _NOT_REGULAR)
                os.set_blocking(fd, True)
                file = os.fdopen(fd, "ab")
            else:
                directory = os.path.dirname(full)
                file = self._in_folder(directory, lambda: open(full, "wb"))  # noqa: SIM115
        if append:
            # One appender at a time, whichever worker process it is in: the lock goes with
            # the file's closing (or the process's end, kill -9 included).
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.close()
                raise PathBusyError(f"{path} is being written by another request") from None
            except OSError as exc:
                file.close()
                raise _storage_error(f"locking {path}", exc) from exc
            if not _still_at(file, full):
                # Moved (committed) or removed by the writer that held it: not this upload's
                # data any more, whatever this descriptor still reaches.
                file.close()
                raise PathNotFoundError(path)
            file.seek(0, os.SEEK_END)  # what the previous writer added before it let go
            with _failing(f"giving back space set aside for {path}"):
                _release_inherited(file.fileno())
            return _FileWriter(self, path, file, file.tell(), locked=True)
        return _FileWriter(self, path, file, file.tell())

    async def redirect_url(self, path: str, method: str) -> str | None:
        return None

    async def write_activity(self, path: str, now: float) -> WriteActivity:
        """
        A writer appends to the file itself (no buffer beyond the library's few KiB), so its
        modification time is its last write.  Whether one holds it right now is not looked
        at: its lock is the appenders' to take, and a look that took it, however briefly,
        would turn a request of another worker away.
        """
        info = await self.stat(path)
        if info.is_dir:
            raise NotAFileError(path)
        return WriteActivity(max(0.0, now - info.modified))

    async def remove_empty_folders(self, path: str, keep: str) -> int:
        if not path.startswith(keep + "/"):
            raise ValueError(f"{keep!r} does not hold {path!r}")
        removed = 0
        while path != keep:
            try:
                os.rmdir(self._full(path))
            except FileNotFoundError:
                pass  # gone already (another purge): its parent may be empty now
            except OSError as exc:
                # Not empty (something written meanwhile), or no folder: kept, and its parents.
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EBUSY):
                    break
                raise _storage_error(f"removing the empty folder {path}", exc) from exc
            else:
                removed += 1
            path = path.rpartition("/")[0]
        return removed
