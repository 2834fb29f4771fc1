"""
Progress for long operations tasks: a line at most every second, only when something changed,
and a storage driver wrapper that counts what a task does (for tasks that report nothing
themselves, such as a catalog walk).
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.iweb import IBodyProducer
from zope.interface import alsoProvides, implementer

from registry.storage.driver import (
    FileInfo,
    IEmptyFolders,
    IFileWriter,
    IStagedWrites,
    IStorageDriver,
    ISymbolicLinks,
    WriteActivity,
)

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(count: int) -> str:
    return f"{count:,}"


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``12.0 s``, ``3m05s``, ``2h``, ``1h30m``, ``168h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes}m{rest:02d}s"
    text = f"{hours}h"
    if minutes or rest:
        text += f"{minutes:02d}m"
    if rest:
        text += f"{rest:02d}s"
    return text


@attrs.define
class ProgressReporter:
    """
    Calls ``render`` every ``interval`` seconds and writes the line when it differs from the
    last one written: a person watching millions of blobs go by sees it move, a log file does
    not fill with identical lines.
    """

    clock: IReactorTime
    render: Callable[[], str]
    write: Callable[[str], None]
    interval: float = 1.0
    _last: str | None = attrs.field(default=None, init=False)
    _loop: LoopingCall | None = attrs.field(default=None, init=False)

    def start(self) -> None:
        loop = LoopingCall(self._tick)
        loop.clock = self.clock
        loop.start(self.interval, now=False)
        self._loop = loop

    def _tick(self) -> None:
        line = self.render()
        if line != self._last:
            self._last = line
            self.write(line)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


@implementer(IStorageDriver)
@attrs.define(slots=False)
class CountingDriver:
    """
    Another driver, counting folder listings, reads and deletions as they complete.  Not
    slotted: ``alsoProvides`` (below) needs an instance ``__dict__`` for ``__provides__``.
    """

    wrapped: IStorageDriver
    listed: int = 0
    read: int = 0
    deleted: int = 0

    @property
    def name(self) -> str:
        return str(self.wrapped.name)

    async def get_content(self, path: str) -> bytes:
        data = await self.wrapped.get_content(path)
        self.read += 1
        return data

    def put_content(self, path: str, data: bytes) -> Awaitable[None]:
        return self.wrapped.put_content(path, data)

    def stat(self, path: str) -> Awaitable[FileInfo]:
        return self.wrapped.stat(path)

    async def list(self, path: str) -> list[str]:
        try:
            return await self.wrapped.list(path)
        finally:
            self.listed += 1

    async def list_apart(self, path: str) -> tuple[builtins.list[str], builtins.list[str]]:
        try:
            return await ISymbolicLinks(self.wrapped).list_apart(path)
        finally:
            self.listed += 1

    async def delete(self, path: str) -> None:
        await self.wrapped.delete(path)
        self.deleted += 1

    def move(self, source: str, dest: str) -> Awaitable[None]:
        return self.wrapped.move(source, dest)

    def reader(self, path: str, offset: int = 0, length: int | None = None) -> Any:
        result: Awaitable[IBodyProducer] = self.wrapped.reader(path, offset, length)
        return result

    def writer(self, path: str, append: bool = False) -> Awaitable[IFileWriter]:
        return self.wrapped.writer(path, append)

    def redirect_url(self, path: str, method: str) -> Awaitable[str | None]:
        return self.wrapped.redirect_url(path, method)

    def write_activity(self, path: str, now: float) -> Awaitable[WriteActivity]:
        return self.wrapped.write_activity(path, now)

    def __attrs_post_init__(self) -> None:
        if IStagedWrites.providedBy(self.wrapped):
            alsoProvides(self, IStagedWrites)  # so that purge-uploads aborts stale staged writes
        if ISymbolicLinks.providedBy(self.wrapped):
            alsoProvides(self, ISymbolicLinks)  # so that walks do not follow links
        if IEmptyFolders.providedBy(self.wrapped):
            alsoProvides(self, IEmptyFolders)  # so that purge-uploads removes emptied folders

    def staged_writer(self, path: str) -> Awaitable[IFileWriter]:
        return IStagedWrites(self.wrapped).staged_writer(path)

    def abort_stale_writes(
        self,
        path: str,
        age: float,
        now: float,
        owned: Callable[[str], Awaitable[bool]] | None = None,
    ) -> Awaitable[int]:
        return IStagedWrites(self.wrapped).abort_stale_writes(path, age, now, owned)

    def remove_empty_folders(self, path: str, keep: str) -> Awaitable[int]:
        return IEmptyFolders(self.wrapped).remove_empty_folders(path, keep)
