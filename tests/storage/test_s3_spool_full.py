"""
The S3 writer's spool on a real full disk: ``spooldirectory`` is a small tmpfs (mounting it
needs root), SeaweedFS is the S3.  A part file that hits ENOSPC fails the write, and once the
writer is given up (cancelled, or closed after the failure) none of its part files is still
open: the process holds no descriptor into the spool and the tmpfs is as full as before, so
the next write with room works.  The same holds for a full part still waiting for a slot
when S3 refuses the parts before it.  (A part file is created already unlinked: one left
open is invisible to ``ls`` yet keeps its blocks until the process ends.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from registry.storage.driver import StorageFull
from registry.storage.s3 import S3Driver
from registry.storage.s3 import _client as s3_client
from registry.storage.s3._client import S3Error
from tests.e2e.test_full_disk import leave_free, mounted_tmpfs, open_in, used
from tests.proxy.util import wait_for
from tests.storage.s3front import RecordingFront, Seen, s3_front  # noqa: F401 - the fixture
from tests.storage.s3server import S3Server
from tests.storage.test_driver_s3 import settings_for

MIB = 1024 * 1024
DISK = 24 * MIB  # room for the parts of a write in flight at once (with the filler gone)
FREE = 3 * MIB  # less than one 5 MiB part: the first part file fails with ENOSPC


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path, DISK) as disk:
        yield disk


async def write_until_refused(writer: Any, chunks: list[bytes]) -> BaseException:
    """Write ``chunks`` (waiting when asked to) and end with ``commit``; returns the failure,
    which must come."""
    try:
        for chunk in chunks:
            waiting = writer.write(chunk)
            if waiting is not None:
                await waiting
        await writer.commit()
    except Exception as error:
        return error
    raise AssertionError("the writer took every byte on a full spool")


def assert_spool_full(error: BaseException, spool: Path) -> None:
    """The failure callers get: a `StorageFull` (a 503) naming the spool folder."""
    assert isinstance(error, StorageFull), repr(error)
    assert str(error) == f"spooling an S3 upload part in {spool}: No space left on device"


async def assert_spool_released(spool: Path, before: int) -> None:
    """No descriptor into the spool, its usage back to ``before``.  The part files are
    closed in the thread pool right after the writer lets them go: wait (bounded) for that,
    then say what is left."""
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: not open_in(spool) and used(spool) == before, within=5)
    assert open_in(spool) == []
    assert used(spool) == before


async def write_with_room(driver: S3Driver, spool: Path, path: str) -> None:
    """The spool has room again: a multipart write (three parts) is stored whole."""
    before = used(spool)
    data = [os.urandom(MIB) for _ in range(12)]
    writer = await driver.writer(path)
    for chunk in data:
        waiting = writer.write(chunk)
        if waiting is not None:
            await waiting
    await writer.commit()
    assert await driver.get_content(path) == b"".join(data)
    await assert_spool_released(spool, before)


@pytest_twisted.ensureDeferred
async def test_a_write_refused_by_a_full_spool_then_cancelled_leaves_no_part_file_open(
    s3_server: S3Server, spool: Path
) -> None:
    """A pull-through fill's writer: the spool fills mid-part, the fill cancels the writer."""
    from twisted.internet import reactor

    driver = S3Driver(
        reactor, settings_for(s3_server, chunksize=5 * MIB, spooldirectory=str(spool))
    )
    try:
        filler = leave_free(spool, FREE)
        before = used(spool)
        writer = await driver.writer("spool/full/cancelled")
        error = await write_until_refused(writer, [os.urandom(MIB) for _ in range(12)])
        assert_spool_full(error, spool)
        await writer.cancel()
        await assert_spool_released(spool, before)

        filler.unlink()
        await write_with_room(driver, spool, "spool/full/cancelled")
    finally:
        await driver.close()


@pytest_twisted.ensureDeferred
async def test_a_write_refused_by_a_full_spool_then_closed_leaves_no_part_file_open(
    s3_server: S3Server, spool: Path
) -> None:
    """A push's writer: the request's bytes end, ``close`` finds the part refused (the
    upload store only closes the writer then)."""
    from twisted.internet import reactor

    driver = S3Driver(
        reactor, settings_for(s3_server, chunksize=5 * MIB, spooldirectory=str(spool))
    )
    try:
        filler = leave_free(spool, FREE)
        before = used(spool)
        writer = await driver.writer("spool/full/closed")
        try:
            for _ in range(12):
                waiting = writer.write(os.urandom(MIB))
                if waiting is not None:
                    await waiting
        except StorageFull as refused:
            assert_spool_full(refused, spool)
        with pytest.raises(StorageFull) as closing:
            await writer.close()
        assert_spool_full(closing.value, spool)
        await assert_spool_released(spool, before)

        filler.unlink()
        await write_with_room(driver, spool, "spool/full/other")
    finally:
        await driver.close()


def is_part(seen: Seen) -> bool:
    return seen.method == "PUT" and "partNumber" in seen.query


@pytest_twisted.ensureDeferred
async def test_a_part_waiting_for_a_slot_when_s3_refuses_is_not_left_open(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    spool: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two parts on their way, the third full and waiting for a slot: S3 refuses the two
    (500 to every attempt), and the request ends (``close``).  Nothing will ever send the
    third: its file goes too."""
    from twisted.internet import reactor

    monkeypatch.setattr(s3_client, "RETRY_DELAYS", (0.05, 0.05, 0.05))
    settings = settings_for(
        s3_server,
        regionendpoint=s3_front.endpoint,
        chunksize=5 * MIB,
        spooldirectory=str(spool),
    )
    driver = S3Driver(reactor, settings)
    try:
        before = used(spool)
        s3_front.hold(is_part)
        writer = await driver.writer("spool/refused/closed")
        for _ in range(2):
            waiting = writer.write(os.urandom(6 * MIB))
            if waiting is not None:
                await waiting
        third = writer.write(os.urandom(6 * MIB))
        assert third is not None  # both slots are taken
        await wait_for(lambda: s3_front.holding == 2)
        assert not third.called
        fault = s3_front.fault(is_part, "answer_up", after=0, count=1000)
        s3_front.drop_held()
        with pytest.raises(S3Error):
            await third
        with pytest.raises(S3Error):
            await writer.close()
        await assert_spool_released(spool, before)

        fault.count = 0
        await write_with_room(driver, spool, "spool/refused/other")
    finally:
        await driver.close()
