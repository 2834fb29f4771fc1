"""
The behaviour every storage driver must show, written once and run against each backend.

A backend's test module subclasses `DriverSuite` and provides a ``driver`` fixture; the S3
driver runs this same suite against a real S3 server.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from registry.storage.driver import (
    IFileWriter,
    InvalidOffsetError,
    IStorageDriver,
    PathNotFoundError,
)
from registry.storage.producers import CollectingConsumer


async def write_all(writer: Any, data: bytes) -> None:
    """Write, waiting when the writer asks for it."""
    pending = writer.write(data)
    if pending is not None:
        await pending


async def read_all(driver: Any, path: str, offset: int = 0, length: int | None = None) -> bytes:
    producer = await driver.reader(path, offset, length)
    consumer = CollectingConsumer()
    await producer.startProducing(consumer)
    data = consumer.value()
    assert len(data) == producer.length
    return data


class DriverSuite:
    """Subclasses provide a fixture named ``driver`` returning a fresh, empty driver."""

    # What reading a folder as a file raises: on object stores a prefix is not an object
    # (missing); on a filesystem a folder at a file's path is damage (`NotAFileError`).
    folder_content_error: type[Exception] = PathNotFoundError
    # Whether `write_activity` tells a writer appending right now.
    sees_writers = True

    def test_provides_interface(self, driver: Any) -> None:
        assert verifyObject(IStorageDriver, driver)

    @pytest_twisted.ensureDeferred
    async def test_put_get_content(self, driver: Any) -> None:
        await driver.put_content("a/b/c", b"hello")
        assert await driver.get_content("a/b/c") == b"hello"
        await driver.put_content("a/b/c", b"again")
        assert await driver.get_content("a/b/c") == b"again"

    @pytest_twisted.ensureDeferred
    async def test_content_sizes_round_trip(self, driver: Any) -> None:
        """Whole-content reads return every byte, at and around the read sizes drivers use."""
        for size in (0, 1, 4095, 4096, 4097, 12289, 200_000):
            data = bytes(range(251)) * (size // 251) + bytes(range(size % 251))
            await driver.put_content(f"sizes/{size}", data)
            assert await driver.get_content(f"sizes/{size}") == data

    @pytest_twisted.ensureDeferred
    async def test_folder_content_is_missing(self, driver: Any) -> None:
        await driver.put_content("folder/inside", b"x")
        with pytest.raises(self.folder_content_error) as raised:
            await driver.get_content("folder")
        with pytest.raises(self.folder_content_error):
            await driver.reader("folder")
        if self.folder_content_error is not PathNotFoundError:
            assert not isinstance(raised.value, PathNotFoundError)

    @pytest_twisted.ensureDeferred
    async def test_missing_content(self, driver: Any) -> None:
        with pytest.raises(PathNotFoundError):
            await driver.get_content("nope/x")
        with pytest.raises(PathNotFoundError):
            await driver.stat("nope/x")
        with pytest.raises(PathNotFoundError):
            await driver.reader("nope/x")
        with pytest.raises(PathNotFoundError):
            await driver.delete("nope/x")
        with pytest.raises(PathNotFoundError):
            await driver.list("nope")

    @pytest_twisted.ensureDeferred
    async def test_stat_file_and_folder(self, driver: Any) -> None:
        await driver.put_content("d/e/f", b"12345")
        info = await driver.stat("d/e/f")
        assert (info.size, info.is_dir) == (5, False)
        assert info.modified > 0
        folder = await driver.stat("d/e")
        assert folder.is_dir

    @pytest_twisted.ensureDeferred
    async def test_list_children_sorted(self, driver: Any) -> None:
        for name in ("z", "a", "m/deep"):
            await driver.put_content(f"top/{name}", b"x")
        assert await driver.list("top") == ["a", "m", "z"]
        assert await driver.list("top/m") == ["deep"]

    @pytest_twisted.ensureDeferred
    async def test_delete_file_and_tree(self, driver: Any) -> None:
        await driver.put_content("t/one", b"1")
        await driver.put_content("t/sub/two", b"2")
        await driver.put_content("keep/three", b"3")
        await driver.delete("t/one")
        with pytest.raises(PathNotFoundError):
            await driver.get_content("t/one")
        await driver.delete("t")
        with pytest.raises(PathNotFoundError):
            await driver.get_content("t/sub/two")
        assert await driver.get_content("keep/three") == b"3"

    @pytest_twisted.ensureDeferred
    async def test_move_replaces_destination(self, driver: Any) -> None:
        await driver.put_content("m/src", b"new")
        await driver.put_content("m/dst", b"old")
        await driver.move("m/src", "m/dst")
        assert await driver.get_content("m/dst") == b"new"
        with pytest.raises(PathNotFoundError):
            await driver.get_content("m/src")
        with pytest.raises(PathNotFoundError):
            await driver.move("m/src", "m/other")

    @pytest_twisted.ensureDeferred
    async def test_reader_ranges(self, driver: Any) -> None:
        data = os.urandom(100_000)
        await driver.put_content("r/data", data)
        assert await read_all(driver, "r/data") == data
        assert await read_all(driver, "r/data", 1000) == data[1000:]
        assert await read_all(driver, "r/data", 1000, 500) == data[1000:1500]
        assert await read_all(driver, "r/data", 100_000) == b""
        with pytest.raises(InvalidOffsetError):
            await driver.reader("r/data", 100_001)

    @pytest_twisted.ensureDeferred
    async def test_writer_commit(self, driver: Any) -> None:
        writer = await driver.writer("w/file")
        assert verifyObject(IFileWriter, writer)
        parts = [os.urandom(70_000) for _ in range(5)]
        for part in parts:
            await write_all(writer, part)
        assert writer.size == 350_000
        await writer.commit()
        assert await read_all(driver, "w/file") == b"".join(parts)

    @pytest_twisted.ensureDeferred
    async def test_writer_close_then_append(self, driver: Any) -> None:
        """A closed writer keeps its bytes; an appending writer continues at the same size."""
        first = os.urandom(6 * 1024 * 1024)
        second = os.urandom(3 * 1024 * 1024 + 17)
        writer = await driver.writer("w/upload")
        await write_all(writer, first)
        await writer.close()
        writer = await driver.writer("w/upload", append=True)
        assert writer.size == len(first)
        await write_all(writer, second)
        assert writer.size == len(first) + len(second)
        await writer.commit()
        data = await read_all(driver, "w/upload")
        assert hashlib.sha256(data).digest() == hashlib.sha256(first + second).digest()

    @pytest_twisted.ensureDeferred
    async def test_rollback_leaves_the_file_as_it_was_opened(self, driver: Any) -> None:
        """What an appending writer wrote is dropped (more than one S3 part of it, too), and
        the next writer continues where the file was (a malformed upload body)."""
        first = os.urandom(6 * 1024 * 1024 + 5)
        dropped = os.urandom(11 * 1024 * 1024 + 3)
        second = os.urandom(1000)
        writer = await driver.writer("w/rolled")
        await write_all(writer, first)
        await writer.close()
        writer = await driver.writer("w/rolled", append=True)
        await writer.reserve(20 * 1024 * 1024)
        await write_all(writer, dropped)
        await writer.rollback()
        writer = await driver.writer("w/rolled", append=True)
        assert writer.size == len(first)
        await write_all(writer, second)
        await writer.commit()
        data = await read_all(driver, "w/rolled")
        assert hashlib.sha256(data).digest() == hashlib.sha256(first + second).digest()

    @pytest_twisted.ensureDeferred
    async def test_reserve_is_only_a_hint(self, driver: Any) -> None:
        """Announcing more than arrives changes neither the size nor the data."""
        first, second = os.urandom(300_000), os.urandom(200_000)
        writer = await driver.writer("w/promised")
        await writer.reserve(10 * 1024 * 1024)
        await write_all(writer, first)
        await writer.close()
        writer = await driver.writer("w/promised", append=True)
        assert writer.size == len(first)
        await writer.reserve(len(second))
        await write_all(writer, second)
        await writer.commit()
        assert (await driver.stat("w/promised")).size == len(first) + len(second)
        assert await read_all(driver, "w/promised") == first + second

    @pytest_twisted.ensureDeferred
    async def test_write_activity(self, driver: Any) -> None:
        """
        A file is active from its last write, committed or not (on S3 a closed writer's
        bytes are beside the key, which exists only once committed); a writer appending to
        it now is seen where the driver can tell (not on a filesystem: a writer's lock is the
        appenders' to take).  What the upload purge keeps uploads by.
        """
        with pytest.raises(PathNotFoundError):
            await driver.write_activity("act/none", time.time())
        writer = await driver.writer("act/upload")
        await write_all(writer, b"first")
        await writer.close()
        activity = await driver.write_activity("act/upload", time.time())
        assert 0 <= activity.idle < 60, activity
        assert not activity.writing
        writer = await driver.writer("act/upload", append=True)
        await write_all(writer, b"second")
        activity = await driver.write_activity("act/upload", time.time())
        assert activity.writing is self.sees_writers, activity
        assert 0 <= activity.idle < 60, activity
        await writer.close()
        assert not (await driver.write_activity("act/upload", time.time())).writing
        writer = await driver.writer("act/upload", append=True)
        await writer.commit()
        await writer.close()
        activity = await driver.write_activity("act/upload", time.time())
        assert not activity.writing
        assert 0 <= activity.idle < 60, activity

    @pytest_twisted.ensureDeferred
    async def test_writer_cancel(self, driver: Any) -> None:
        writer = await driver.writer("w/gone")
        writer.write(b"abc")
        await writer.cancel()
        with pytest.raises(PathNotFoundError):
            await driver.get_content("w/gone")

    @pytest_twisted.ensureDeferred
    async def test_appending_never_creates(self, driver: Any) -> None:
        """Nothing to continue (never written, or cancelled): appending is refused, and leaves
        nothing behind, so a cancelled upload cannot come back through a late chunk."""
        with pytest.raises(PathNotFoundError):
            await driver.writer("w/never", append=True)
        writer = await driver.writer("w/cancelled")
        await write_all(writer, b"abc")
        await writer.cancel()
        with pytest.raises(PathNotFoundError):
            await driver.writer("w/cancelled", append=True)
        with pytest.raises(PathNotFoundError):
            await driver.list("w")

    @pytest_twisted.ensureDeferred
    async def test_invalid_paths_refused(self, driver: Any) -> None:
        for bad in ("../etc/passwd", "a/../../b", "a//b", "/abs"):
            with pytest.raises((ValueError, PathNotFoundError)):
                await driver.put_content(bad, b"x")
