"""
Storage operation latency: `MeasuredDriver` wraps any `IStorageDriver` and times each call
into ``txregistry_storage_operation_duration_seconds`` (by driver and operation), counting
failures other than a missing path in ``txregistry_storage_errors_total``.

``reader`` and ``writer`` are timed until the producer or writer is open (what a slow backend
makes a client wait for); the transfer itself shows in the request metrics.  A writer's own
failures (``reserve``: a disk too small for the announced body; ``write``, ``commit``,
``close``, ``cancel``) count as errors of the call that opened it (``writer`` or
``staged_writer``).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import alsoProvides, implementer

from registry.ops.metrics import Metrics
from registry.storage.driver import (
    FileInfo,
    ICutBack,
    IEmptyFolders,
    IFileWriter,
    IStagedWrites,
    IStorageDriver,
    ISymbolicLinks,
    IUnfinishedFiles,
    PathNotFoundError,
    Unfinished,
    WriteActivity,
)

T = TypeVar("T")


class _ErrorCount(Protocol):
    def inc(self) -> None: ...


OPERATIONS = (
    "get_content",
    "put_content",
    "stat",
    "list",
    "delete",
    "move",
    "reader",
    "writer",
    "redirect_url",
    "write_activity",
    "staged_writer",
    "abort_stale_writes",
    "remove_empty_folders",
)


@implementer(IStorageDriver)
class MeasuredDriver:
    """The same interface as the driver it wraps, with every call timed."""

    def __init__(self, inner: IStorageDriver, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._timers = {op: metrics.storage_duration.labels(inner.name, op) for op in OPERATIONS}
        self._errors = {op: metrics.storage_errors.labels(inner.name, op) for op in OPERATIONS}
        if IStagedWrites.providedBy(inner):
            # The optional capability passes through: pushes with a known digest stay staged.
            alsoProvides(self, IStagedWrites)
        if ISymbolicLinks.providedBy(inner):
            alsoProvides(self, ISymbolicLinks)  # walks of repositories/ do not follow links
        if IEmptyFolders.providedBy(inner):
            alsoProvides(self, IEmptyFolders)  # the upload purge removes the folders it empties
        if IUnfinishedFiles.providedBy(inner):
            alsoProvides(self, IUnfinishedFiles)  # an upload's offset where it cannot re-hash

    async def _timed(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        try:
            return await call()
        except PathNotFoundError:
            raise  # an answer, not a failure of the storage
        except Exception:
            self._errors[operation].inc()
            raise
        finally:
            self._timers[operation].observe(time.monotonic() - started)

    async def get_content(self, path: str) -> bytes:
        return await self._timed("get_content", lambda: self.inner.get_content(path))

    async def put_content(self, path: str, data: bytes) -> None:
        await self._timed("put_content", lambda: self.inner.put_content(path, data))

    async def stat(self, path: str) -> FileInfo:
        return await self._timed("stat", lambda: self.inner.stat(path))

    async def list(self, path: str) -> list[str]:
        return await self._timed("list", lambda: self.inner.list(path))

    async def delete(self, path: str) -> None:
        await self._timed("delete", lambda: self.inner.delete(path))

    async def move(self, source: str, dest: str) -> None:
        await self._timed("move", lambda: self.inner.move(source, dest))

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> IBodyProducer:
        return await self._timed("reader", lambda: self.inner.reader(path, offset, length))

    async def writer(self, path: str, append: bool = False) -> IFileWriter:
        opened = await self._timed("writer", lambda: self.inner.writer(path, append))
        return MeasuredWriter(opened, self._errors["writer"])

    async def redirect_url(self, path: str, method: str) -> str | None:
        return await self._timed("redirect_url", lambda: self.inner.redirect_url(path, method))

    async def write_activity(self, path: str, now: float) -> WriteActivity:
        return await self._timed("write_activity", lambda: self.inner.write_activity(path, now))

    async def list_apart(self, path: str) -> tuple[builtins.list[str], builtins.list[str]]:
        """`ISymbolicLinks.list_apart`, where the wrapped driver provides it."""
        links = ISymbolicLinks(self.inner)
        return await self._timed("list", lambda: links.list_apart(path))

    async def staged_writer(self, path: str) -> IFileWriter:
        """`IStagedWrites.staged_writer`, where the wrapped driver provides it."""
        staged = IStagedWrites(self.inner)
        opened = await self._timed("staged_writer", lambda: staged.staged_writer(path))
        return MeasuredWriter(opened, self._errors["staged_writer"])

    async def abort_stale_writes(
        self,
        path: str,
        age: float,
        now: float,
        owned: Callable[[str], Awaitable[bool]] | None = None,
    ) -> int:
        """`IStagedWrites.abort_stale_writes`, where the wrapped driver provides it."""
        staged = IStagedWrites(self.inner)
        return await self._timed(
            "abort_stale_writes", lambda: staged.abort_stale_writes(path, age, now, owned)
        )

    async def remove_empty_folders(self, path: str, keep: str) -> int:
        """`IEmptyFolders.remove_empty_folders`, where the wrapped driver provides it."""
        folders = IEmptyFolders(self.inner)
        return await self._timed(
            "remove_empty_folders", lambda: folders.remove_empty_folders(path, keep)
        )

    async def unfinished(self, path: str) -> Unfinished | None:
        """`IUnfinishedFiles.unfinished`, where the wrapped driver provides it."""
        unfinished = IUnfinishedFiles(self.inner)
        return await self._timed("get_content", lambda: unfinished.unfinished(path))

    async def close(self) -> None:
        """Close the wrapped driver's connections, for drivers that have any (S3)."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()


def _storage_failure(error: BaseException | None) -> bool:
    return isinstance(error, Exception) and not isinstance(error, PathNotFoundError)


@implementer(IFileWriter)
class MeasuredWriter:
    """
    A driver's writer whose failures count in ``txregistry_storage_errors_total`` under the
    operation that opened it: a full disk shows there whether it refused the reservation, a
    write, or the commit.
    """

    def __init__(self, inner: IFileWriter, errors: _ErrorCount) -> None:
        self.inner = inner
        self._errors = errors
        if ICutBack.providedBy(inner):
            alsoProvides(self, ICutBack)  # its `unfinished` and `cut` pass through

    async def cut(self, offset: int) -> None:
        """`ICutBack.cut`, where the wrapped writer provides it."""
        await self._counted(lambda: ICutBack(self.inner).cut(offset))

    @property
    def size(self) -> int:
        size: int = self.inner.size
        return size

    def __getattr__(self, name: str) -> Any:
        # Whatever else a driver's writer offers its own callers (tests, the driver itself).
        return getattr(self.inner, name)

    def _failed(self, failure: Failure) -> Failure:
        if _storage_failure(failure.value):
            self._errors.inc()
        return failure

    async def _counted(self, call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        except Exception as error:
            if _storage_failure(error):
                self._errors.inc()
            raise

    def write(self, data: bytes) -> Deferred[None] | None:
        try:
            pending = self.inner.write(data)
        except Exception as error:
            if _storage_failure(error):
                self._errors.inc()
            raise
        if pending is not None:
            pending.addErrback(self._failed)
        return pending

    async def reserve(self, length: int) -> None:
        await self._counted(lambda: self.inner.reserve(length))

    async def close(self) -> None:
        await self._counted(self.inner.close)

    async def commit(self) -> None:
        await self._counted(self.inner.commit)

    async def cancel(self) -> None:
        await self._counted(self.inner.cancel)

    async def rollback(self) -> None:
        await self._counted(self.inner.rollback)
