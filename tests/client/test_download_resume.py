"""
`RegistryClient.download_blob` resuming a body cut off mid-way, from the fake upstream's CDN
over loopback: with a ``Range`` request from the bytes it has, and, when the server ignores the
``Range`` (RFC 7233 allows it) and answers 200 with the whole blob, by skipping what it has of
that body (as containerd does) while the whole of it is checked against the digest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from registry.client import BadResponse, Unavailable
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.fakes.upstream import FakeUpstream

MiB = 1024 * 1024
SIZE = 3 * MiB


@pytest.mark.parametrize("declared", [None, SIZE])
@pytest_twisted.ensureDeferred
async def test_a_resumed_download_answered_whole_skips_what_it_has(
    fake: FakeUpstream, make_client: ClientFactory, tmp_path: Path, declared: int | None
) -> None:
    """The first body is cut after 1 MiB; the CDN answers the resumed request 200 with the
    whole blob: its first MiB is skipped, the rest written; the file is the blob."""
    layer = fake.content.add_image("library/big", "1", [SIZE]).layers[0]
    fake.switches.cut_blob_after = MiB
    fake.switches.cut_blob_times = 1
    fake.switches.ignore_range = True
    client = make_client(fake.url, retries=2)
    target = tmp_path / "layer"
    written = await client.download_blob("library/big", layer.digest, target, size=declared)
    assert written == SIZE
    assert images.digest(target.read_bytes()) == layer.digest
    assert fake.count("GET", "cdn", ref=layer.digest) == 2
    assert fake.cdn_sent == MiB + SIZE  # the second answer was the whole blob


@pytest_twisted.ensureDeferred
async def test_a_download_answered_whole_and_cut_every_time_stays_unavailable(
    fake: FakeUpstream, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Every body (the whole blob, Range or not) is cut after 1 MiB: each attempt is a cut,
    retried, and the last one's error is the answer: `Unavailable` (worth trying later),
    not a `BadResponse`; nothing is left on disk."""
    layer = fake.content.add_image("library/big", "1", [SIZE]).layers[0]
    fake.switches.cut_blob_after = MiB
    fake.switches.ignore_range = True
    client = make_client(fake.url, retries=2)
    target = tmp_path / "layer"
    with pytest.raises(Unavailable) as info:
        await client.download_blob("library/big", layer.digest, target)
    assert not isinstance(info.value, BadResponse)
    assert fake.count("GET", "cdn", ref=layer.digest) == 3
    assert not target.exists()


@pytest_twisted.ensureDeferred
async def test_a_resumed_download_with_range_gets_only_the_rest(
    fake: FakeUpstream, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A server that honours ``Range`` sends only what is missing (206)."""
    layer = fake.content.add_image("library/big", "1", [SIZE]).layers[0]
    fake.switches.cut_blob_after = MiB
    fake.switches.cut_blob_times = 1
    client = make_client(fake.url, retries=2)
    target = tmp_path / "layer"
    assert await client.download_blob("library/big", layer.digest, target) == SIZE
    assert images.digest(target.read_bytes()) == layer.digest
    assert fake.cdn_sent == SIZE
