"""
An in-memory storage driver, for tests and throw-away registries.

Everything it holds is lost on restart, and every byte stays in memory: not for large blobs.
"""

from __future__ import annotations

import hashlib
import time

from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from registry.storage.driver import (
    FileInfo,
    IConditionalWrites,
    IFileWriter,
    InvalidOffsetError,
    IStorageDriver,
    PathNotFoundError,
    VersionChangedError,
    WriteActivity,
)
from registry.storage.producers import BytesProducer


def _check(path: str) -> str:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid storage path {path!r}")
    return path


@implementer(IFileWriter)
class _MemoryWriter:
    def __init__(self, driver: MemoryDriver, path: str, initial: bytes) -> None:
        self._driver = driver
        self._path = path
        self._buffer = bytearray(initial)
        self.size = len(self._buffer)
        self._opened_size = self.size  # what `rollback` goes back to
        self._done = False
        driver._writing[path] = driver._writing.get(path, 0) + 1

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            count = self._driver._writing.pop(self._path, 1) - 1
            if count:
                self._driver._writing[self._path] = count

    def write(self, data: bytes) -> Deferred[None] | None:
        if self._done:
            raise ValueError("writer already closed")
        self._buffer += data
        self.size += len(data)
        return None

    async def close(self) -> None:
        if self._done:  # closed, committed or cancelled already: the file is where it went
            return
        self._finish()
        self._driver._store(self._path, bytes(self._buffer))

    async def commit(self) -> None:
        await self.close()

    async def rollback(self) -> None:
        if self._done:
            return
        del self._buffer[self._opened_size :]
        self.size = self._opened_size
        await self.close()

    async def reserve(self, length: int) -> None:
        pass

    async def cancel(self) -> None:
        self._finish()
        self._driver._files.pop(self._path, None)


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@implementer(IStorageDriver, IConditionalWrites)
class MemoryDriver:
    """Files in a dict; folders exist while a file lies below them."""

    name = "inmemory"

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, float]] = {}
        # Writers open on each path (a writer's bytes reach `_files` only when it closes):
        # what `write_activity` calls being written right now.
        self._writing: dict[str, int] = {}

    def _store(self, path: str, data: bytes) -> None:
        self._files[path] = (data, time.time())

    def _file(self, path: str) -> bytes:
        try:
            return self._files[_check(path)][0]
        except KeyError:
            raise PathNotFoundError(path) from None

    def _below(self, path: str) -> list[str]:
        prefix = _check(path) + "/"
        return [key for key in self._files if key.startswith(prefix)]

    async def get_content(self, path: str) -> bytes:
        return self._file(path)

    async def put_content(self, path: str, data: bytes) -> None:
        self._store(_check(path), bytes(data))

    async def create(self, path: str, data: bytes) -> str:
        if _check(path) in self._files:
            raise VersionChangedError(f"{path} exists already")
        self._store(path, bytes(data))
        return _version(data)

    async def read_versioned(self, path: str) -> tuple[bytes, str]:
        data = self._file(path)
        return data, _version(data)

    async def replace_version(self, path: str, data: bytes, version: str) -> str:
        if _check(path) not in self._files or _version(self._files[path][0]) != version:
            raise VersionChangedError(f"{path} changed")
        self._store(path, bytes(data))
        return _version(data)

    async def delete_version(self, path: str, version: str) -> None:
        if _version(self._file(path)) != version:
            raise VersionChangedError(f"{path} changed")
        del self._files[path]

    async def stat(self, path: str) -> FileInfo:
        if _check(path) in self._files:
            data, modified = self._files[path]
            return FileInfo(path, len(data), modified, False)
        below = self._below(path)
        if not below:
            raise PathNotFoundError(path)
        return FileInfo(path, 0, max(self._files[key][1] for key in below), True)

    async def list(self, path: str) -> list[str]:
        prefix = _check(path) + "/"
        names = {key[len(prefix) :].split("/", 1)[0] for key in self._below(path)}
        if not names:
            raise PathNotFoundError(path)
        return sorted(names)

    async def delete(self, path: str) -> None:
        doomed = self._below(path)
        if _check(path) in self._files:
            doomed.append(path)
        if not doomed:
            raise PathNotFoundError(path)
        for key in doomed:
            del self._files[key]

    async def move(self, source: str, dest: str) -> None:
        data = self._file(source)
        self._store(_check(dest), data)
        del self._files[source]

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> IBodyProducer:
        data = self._file(path)
        if offset < 0 or offset > len(data):
            raise InvalidOffsetError(path, offset)
        end = len(data) if length is None else min(len(data), offset + length)
        return BytesProducer(memoryview(data)[offset:end])

    async def writer(self, path: str, append: bool = False) -> IFileWriter:
        if append and _check(path) not in self._files:
            raise PathNotFoundError(path)  # continuing only: as the filesystem driver
        initial = self._files.get(_check(path), (b"", 0.0))[0] if append else b""
        return _MemoryWriter(self, path, initial)

    async def redirect_url(self, path: str, method: str) -> str | None:
        return None

    async def write_activity(self, path: str, now: float) -> WriteActivity:
        writing = _check(path) in self._writing
        try:
            modified = self._files[path][1]
        except KeyError:
            if not writing:
                raise PathNotFoundError(path) from None
            modified = now
        return WriteActivity(max(0.0, now - modified), writing)
