"""
`TailProducer` promised more (or other) bytes than the blob being filled has: a HEAD that
gave the response its Content-Length said another size than the body.  It ends the response
short at once, never a loop waiting for bytes past the blob's end (which, on a finished fill,
held the reactor thread) and never a short blob sent as a whole one.  The fill is driven by
hand over the memory driver; what reached the consumer is asserted.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from registry.api.digests import Digest
from registry.proxy.fill import Fill, TailProducer
from registry.storage.memory import MemoryDriver

BLOB = bytes(range(256)) * 400  # 102,400 bytes
DIGEST = Digest.parse("sha256:" + "0" * 64)  # never checked here: the fill is marked done


@implementer(IConsumer)
class Collecting:
    def __init__(self) -> None:
        self.data = bytearray()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.data += data


async def _finished_fill(size: int | None) -> tuple[Fill, MemoryDriver]:
    driver = MemoryDriver()
    await driver.put_content("blobs/x", BLOB)
    fill = Fill(DIGEST, "fills/x", "blobs/x", size)
    fill.opened = True
    fill.stored = len(BLOB)
    fill.done = True
    return fill, driver


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [len(BLOB), None], ids=["sized", "chunked"])
@pytest_twisted.ensureDeferred
async def test_a_response_promised_past_the_blobs_end_is_cut_short(size: int | None) -> None:
    fill, driver = await _finished_fill(size)
    consumer = Collecting()
    producer = TailProducer(fill, driver, 0, len(BLOB) + 1000)
    with pytest.raises(CancelledError):
        await producer.startProducing(consumer)
    assert bytes(consumer.data) == b""  # cut before any byte: the promise cannot be kept


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_a_whole_blob_claim_of_another_size_sends_nothing() -> None:
    """The HEAD said 50,000 bytes: the response is sized for the whole blob at 50,000, and the
    blob has 102,400.  Sending 50,000 of them would be a complete, wrong blob."""
    fill, driver = await _finished_fill(len(BLOB))
    consumer = Collecting()
    producer = TailProducer(fill, driver, 0, 50_000, whole=50_000)
    with pytest.raises(CancelledError):
        await producer.startProducing(consumer)
    assert bytes(consumer.data) == b""


@pytest_twisted.ensureDeferred
async def test_a_range_inside_the_blob_is_served() -> None:
    fill, driver = await _finished_fill(len(BLOB))
    consumer = Collecting()
    await TailProducer(fill, driver, 1000, 5000).startProducing(consumer)
    assert bytes(consumer.data) == BLOB[1000:6000]
    consumer = Collecting()
    await TailProducer(fill, driver, 0, len(BLOB), whole=len(BLOB)).startProducing(consumer)
    assert bytes(consumer.data) == BLOB
