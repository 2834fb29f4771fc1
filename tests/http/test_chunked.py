"""
`ChunkedBodyDecoder` against twisted.web's own decoder: the same body and the same bytes
after it for any way the network splits the input, and the same inputs refused.
"""

from __future__ import annotations

import itertools
import random

import pytest
from twisted.web.http import _ChunkedTransferDecoder, _DataLoss, _MalformedChunkedDataError

from registry.http.chunked import MAX_SIZE_LINE, ChunkedBodyDecoder


def encode(parts: list[bytes], extension: bytes = b"", trailers: bytes = b"") -> bytes:
    chunks = [b"%x%s\r\n%s\r\n" % (len(part), extension, part) for part in parts if part]
    return b"".join(chunks) + b"0\r\n" + trailers + b"\r\n"


class Outcome:
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.rest: bytes | None = None

    def data(self, data: bytes) -> None:
        assert self.rest is None, "body data after the end"
        assert type(data) is bytes
        self.body.append(data)

    def finish(self, rest: bytes) -> None:
        self.rest = rest


def decode(wire: bytes, cuts: list[int], decoder_class: type = ChunkedBodyDecoder) -> Outcome:
    outcome = Outcome()
    decoder = decoder_class(outcome.data, outcome.finish)
    edges = [0, *sorted(cuts), len(wire)]
    for start, end in itertools.pairwise(edges):
        if outcome.rest is not None:
            outcome.rest += wire[start:]  # the channel reads on by itself from here
            break
        if end > start:
            decoder.dataReceived(wire[start:end])
    return outcome


BODIES = [
    [b"x"],
    [b"hello", b" ", b"world"],
    [bytes(range(256)) * 40, b"\r\n\r\n", b"0\r\n"],  # CRLFs inside the data
    [random.Random(7).randbytes(70_000), random.Random(8).randbytes(3)],
]


@pytest.mark.parametrize("parts", BODIES)
@pytest.mark.parametrize(
    ("extension", "trailers"),
    [(b"", b""), (b";name=value", b""), (b';q="a b"', b"Checksum: abc\r\nOther: x\r\n")],
)
def test_every_split_gives_twisteds_result(
    parts: list[bytes], extension: bytes, trailers: bytes
) -> None:
    wire = encode(parts, extension, trailers) + b"GET /next HTTP/1.1\r\n"
    rng = random.Random(len(wire))
    splits = [[], [1], [len(wire) - 1], list(range(1, min(len(wire), 400)))]
    splits += [rng.sample(range(1, len(wire)), min(12, len(wire) - 1)) for _ in range(40)]
    for cuts in splits:
        ours = decode(wire, cuts)
        theirs = decode(wire, cuts, _ChunkedTransferDecoder)
        assert b"".join(ours.body) == b"".join(parts), cuts
        assert b"".join(ours.body) == b"".join(theirs.body)
        assert ours.rest == theirs.rest == b"GET /next HTTP/1.1\r\n"


def test_a_read_of_body_bytes_only_is_passed_on_as_is() -> None:
    payload = random.Random(1).randbytes(1 << 20)
    head = b"%x\r\n" % len(payload)
    outcome = Outcome()
    decoder = ChunkedBodyDecoder(outcome.data, outcome.finish)
    decoder.dataReceived(head)
    decoder.dataReceived(payload)
    assert outcome.body[0] is payload  # no copy
    decoder.dataReceived(b"\r\n0\r\n\r\n")
    assert outcome.rest == b""


def test_one_call_per_read_whatever_the_chunk_count() -> None:
    parts = [bytes([n]) * 1000 for n in range(64)]
    outcome = decode(encode(parts), [])
    assert len(outcome.body) == 1
    assert outcome.body[0] == b"".join(parts)


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\nab\r\n0\r\n\r\n",  # not hexadecimal
        b"0x2\r\nab\r\n0\r\n\r\n",  # a prefix int() would take
        b"+2\r\nab\r\n0\r\n\r\n",
        b" 2\r\nab\r\n0\r\n\r\n",
        b"\r\nab\r\n0\r\n\r\n",  # no size at all
        b"2\r\nabX\r\n0\r\n\r\n",  # chunk longer than announced
        b"2;a\x00b\r\nab\r\n0\r\n\r\n",  # control character in an extension
        b"2\r\nab\r\n0\r\n" + b"X-Long: " + b"y" * (64 * 1024) + b"\r\n\r\n",  # trailers
        b"1" * (MAX_SIZE_LINE + 10),  # a size line that never ends
    ],
)
def test_refused_like_twisted(wire: bytes) -> None:
    for cuts in ([], [1], list(range(1, len(wire), 7))):
        with pytest.raises(_MalformedChunkedDataError):
            decode(wire, cuts)
        with pytest.raises(_MalformedChunkedDataError):
            decode(wire, cuts, _ChunkedTransferDecoder)


def test_body_before_a_malformed_part_is_passed_on() -> None:
    outcome = Outcome()
    decoder = ChunkedBodyDecoder(outcome.data, outcome.finish)
    with pytest.raises(_MalformedChunkedDataError):
        decoder.dataReceived(b"3\r\nabc\r\nzz\r\n")
    assert outcome.body == [b"abc"]


def test_unfinished_body_is_data_loss_and_data_after_the_end_an_error() -> None:
    outcome = Outcome()
    decoder = ChunkedBodyDecoder(outcome.data, outcome.finish)
    decoder.dataReceived(b"3\r\nab")
    with pytest.raises(_DataLoss):
        decoder.noMoreData()
    decoder.dataReceived(b"c\r\n0\r\n\r\n")
    decoder.noMoreData()
    with pytest.raises(RuntimeError):
        decoder.dataReceived(b"more")
