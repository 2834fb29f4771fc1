"""
A server-side copy (``move`` above the copy threshold) that S3 refuses ends with the copy's
error, through a front that refuses the copy and the abort that follows it (S3 out of
service): the abort's failure is one warning, not the error reported.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from registry.storage.s3 import S3Driver
from registry.storage.s3._client import S3Error
from tests.storage.s3front import RecordingFront, Seen, s3_front  # noqa: F401 - the fixture
from tests.storage.s3server import S3Server
from tests.storage.test_driver_s3 import write_all

MIB = 1024 * 1024


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def _part_copy(seen: Seen) -> bool:
    return seen.is_copy and "uploadId" in seen.query


def _abort(seen: Seen) -> bool:
    return seen.method == "DELETE" and "uploadId" in seen.query


@pytest_twisted.ensureDeferred
async def test_a_refused_copy_is_reported_not_the_abort_after_it(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    logged: list[str],
) -> None:
    settings = s3_server.settings(
        f"/tests/{uuid.uuid4().hex}/", chunksize=5 * MIB, regionendpoint=s3_front.endpoint
    )
    driver = S3Driver(reactor, settings)
    try:
        writer = await driver.writer("mv/src")
        await write_all(writer, os.urandom(11 * MIB), 1024 * 1024)
        await writer.commit()
        driver.copy_threshold = 6 * MIB
        driver.copy_part_size = 5 * MIB
        s3_front.fault(_part_copy, "answer_up", 0, count=100)
        s3_front.fault(_abort, "answer_up", 0, count=100)
        with pytest.raises(S3Error) as info:
            await driver.move("mv/src", "mv/dest")
        message = str(info.value)
        assert "PUT" in message and "DELETE" not in message, message
        # Each attempt met the same error: said once, with the count.
        assert message.count("refused mid-body by the test front") == 1, message
        assert message.endswith(" (4 attempts)"), message
        assert any(
            "S3 multipart upload" in line and "not aborted" in line and "purge-uploads" in line
            for line in logged
        ), logged[-20:]
        assert len(await driver.list("mv")) == 1  # the source is still there
    finally:
        await driver.close()
