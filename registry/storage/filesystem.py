"""
The filesystem storage driver: registry:2's layout under a root folder.

Small files (links, manifests, hash states) are read and written in the reactor thread: they are
a few bytes in the page cache, and a thread hop would cost more than the call.  Whole-folder
work (listing, recursive delete), reading blob data and fsync run in the driver's thread pool.
Appends to an upload go straight to the file from the reactor thread: measured here, hashing and
writing inline beat handing chunks to a worker thread, and back-pressure bounds what is queued.

Atomicity: small files are written to a temporary sibling and renamed over the target, and a
finished upload becomes a blob by rename, so a reader never sees a half-written file, whatever
happens to the process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from registry.storage.driver import (
    FileInfo,
    IFileWriter,
    InvalidOffsetError,
    IStorageDriver,
    PathNotFoundError,
    StorageError,
)
from registry.storage.producers import FileProducer

_TEMP_PREFIX = ".tmp-"


@implementer(IFileWriter)
class _FileWriter:
    def __init__(self, driver: FilesystemDriver, path: str, file: IO[bytes], size: int) -> None:
        self._driver = driver
        self._path = path
        self._file: IO[bytes] | None = file
        self.size = size

    def write(self, data: bytes) -> Deferred[None] | None:
        if self._file is None:
            raise StorageError(f"writer for {self._path} is closed")
        self._file.write(data)
        self.size += len(data)
        return None

    async def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    async def commit(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        if self._driver.fsync:
            file.flush()
            await self._driver._in_thread(os.fsync, file.fileno())
        file.close()

    async def cancel(self) -> None:
        await self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._driver._full(self._path))


@implementer(IStorageDriver)
class FilesystemDriver:
    name = "filesystem"

    def __init__(
        self, root: str, reactor: Any, threadpool: ThreadPool, fsync: bool = False
    ) -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self._reactor = reactor
        self._threadpool = threadpool

    def _full(self, path: str) -> str:
        parts = path.split("/")
        if not path or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid storage path {path!r}")
        return os.path.join(self.root, *parts)

    def _in_thread(self, func: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._threadpool, func, *args)

    async def get_content(self, path: str) -> bytes:
        try:
            with open(self._full(path), "rb") as file:
                return file.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFoundError(path) from None

    async def put_content(self, path: str, data: bytes) -> None:
        full = self._full(path)
        directory = os.path.dirname(full)
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
        with open(temp, "wb") as file:
            file.write(data)
        os.replace(temp, full)

    async def stat(self, path: str) -> FileInfo:
        try:
            result = os.stat(self._full(path))
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFoundError(path) from None
        is_dir = stat.S_ISDIR(result.st_mode)
        return FileInfo(path, 0 if is_dir else result.st_size, result.st_mtime, is_dir)

    async def list(self, path: str) -> list[str]:
        full = self._full(path)

        def names() -> list[str]:
            try:
                return sorted(n for n in os.listdir(full) if not n.startswith(_TEMP_PREFIX))
            except (FileNotFoundError, NotADirectoryError):
                return []

        found: list[str] = await self._in_thread(names)
        if not found:
            raise PathNotFoundError(path)
        return found

    async def delete(self, path: str) -> None:
        full = self._full(path)

        def remove() -> bool:
            try:
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.unlink(full)
            except FileNotFoundError:
                return False
            return True

        if not await self._in_thread(remove):
            raise PathNotFoundError(path)

    async def move(self, source: str, dest: str) -> None:
        full_dest = self._full(dest)
        os.makedirs(os.path.dirname(full_dest), exist_ok=True)
        try:
            os.replace(self._full(source), full_dest)
        except FileNotFoundError:
            raise PathNotFoundError(source) from None

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> IBodyProducer:
        try:
            file = open(self._full(path), "rb")  # noqa: SIM115 - the producer owns it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFoundError(path) from None
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
        os.makedirs(os.path.dirname(full), exist_ok=True)
        try:
            file = open(full, "ab" if append else "wb")  # noqa: SIM115 - the writer owns it
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StorageError(f"no space left for {path}") from exc
            raise
        return _FileWriter(self, path, file, file.tell())

    async def redirect_url(self, path: str, method: str) -> str | None:
        return None
