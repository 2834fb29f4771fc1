"""The fill's window of recent bytes (`Fill.recent`): what readers that keep up are served
from, bounded whatever the blob's size, and kept only while the fill has readers."""

from __future__ import annotations

from registry.api.digests import Digest
from registry.proxy.fill import RECENT, Fill

DIGEST = Digest.parse("sha256:" + "0" * 64)


def _fill(readers: int = 1) -> Fill:
    fill = Fill(DIGEST, "fills/x", "blobs/x", None)
    fill.readers = readers
    return fill


def test_pieces_are_the_stored_bytes_between_two_offsets() -> None:
    fill = _fill()
    blob = bytes(range(256)) * 40  # 10,240 bytes in uneven chunks
    for start in range(0, len(blob), 1000):
        fill.stored_chunk(blob[start : start + 1000])
    for position, end in [(0, len(blob)), (0, 1), (999, 1001), (1500, 7777), (10_000, 10_240)]:
        assert b"".join(fill.recent(position, end)) == blob[position:end]
    assert fill.recent(len(blob), len(blob) + 10) == []
    assert fill.recent(500, 500) == []


def test_whole_chunks_are_not_copied() -> None:
    fill = _fill()
    first, second = b"a" * 100, b"b" * 100
    fill.stored_chunk(first)
    fill.stored_chunk(second)
    pieces = fill.recent(0, 200)
    assert pieces[0] is first and pieces[1] is second


def test_the_window_is_bounded_and_older_bytes_come_from_storage() -> None:
    fill = _fill()
    chunk = 256 * 1024
    total = 40 * chunk
    for n in range(total // chunk):
        fill.stored_chunk(bytes([n % 256]) * chunk)
    held = fill.recent(fill.stored - RECENT - chunk, fill.stored)
    assert held == []  # before the window: a reader there reads the file
    window = fill.recent(fill.stored - RECENT, fill.stored)
    assert sum(len(piece) for piece in window) == RECENT
    assert window[-1] == bytes([(total // chunk - 1) % 256]) * chunk
    assert fill.stored == total


def test_a_chunk_larger_than_the_window_is_kept() -> None:
    fill = _fill()
    big = b"x" * (RECENT + 10)
    fill.stored_chunk(b"y" * 10)
    fill.stored_chunk(big)
    assert fill.recent(10, 10 + len(big)) == [big]
    assert fill.recent(0, 10) == []


def test_without_readers_nothing_is_kept() -> None:
    fill = _fill(readers=0)
    fill.stored_chunk(b"a" * 1000)
    assert fill.recent(0, 1000) == []
    fill.readers = 1
    fill.stored_chunk(b"b" * 1000)
    assert fill.recent(0, 1000) == []
    assert fill.recent(1000, 2000) == [b"b" * 1000]
    fill.forget_recent()
    assert fill.recent(1000, 2000) == []
