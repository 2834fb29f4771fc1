"""
A blob streamed from one registry into another whose source body is cut off mid-way: the
source is read on with a ``Range`` request from the byte reached, into the same upload (a
source that answers the range with the whole blob has its first bytes dropped), the whole
stream checked against the digest; the fake Docker Hub over loopback is the source, the
project's registry the destination.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from registry.client import Unavailable
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.test_copy_command import txregistry
from tests.client.test_hostile_source import uploads_left
from tests.e2e.conftest import Starter
from tests.fakes.upstream import FakeUpstream

MiB = 1024 * 1024
SIZE = 3 * MiB
CUT = 349_525


@pytest.mark.parametrize("ignore_range", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_cut_source_body_is_read_on_into_the_same_upload(
    fake: FakeUpstream,
    start_registry: Starter,
    make_client: ClientFactory,
    tmp_path: Path,
    ignore_range: bool,
) -> None:
    layer = fake.content.add_image("library/big", "1", [SIZE]).layers[0]
    fake.switches.cut_blob_after = CUT
    fake.switches.cut_blob_times = 1
    fake.switches.ignore_range = ignore_range
    destination = make_client((await start_registry()).url)
    source = make_client(fake.url, retries=2)
    sent = await destination.copy_blob_from(
        source, "library/big", "copy/big", layer.digest, size=SIZE
    )
    assert sent == SIZE
    got = await (await destination.blob("copy/big", layer.digest)).read(SIZE)
    assert images.digest(got) == layer.digest
    gets = [r.range for r in fake.log if r.kind == "cdn" and r.ref == layer.digest]
    assert gets == [None, f"bytes={CUT}-"]
    # Range ignored: the second answer is the whole blob, its first CUT bytes dropped.
    assert fake.cdn_sent == CUT + (SIZE if ignore_range else SIZE - CUT)
    assert uploads_left(tmp_path / "registry0", "copy/big") == []


@pytest_twisted.ensureDeferred
async def test_txregistry_copy_reads_a_cut_source_on(
    fake: FakeUpstream, start_registry: Starter, make_client: ClientFactory
) -> None:
    """``txregistry copy docker://SRC docker://DST``: every body of the 1 MiB layer is cut
    after CUT bytes, so it takes four reads (three resumed, ``--retry-times 3``); the copy
    succeeds, the destination holds the layer.  With ``--retry-times 2`` it fails naming
    the source."""
    image = fake.content.add_image("library/cut", "1", [MiB])
    layer = image.layers[0]
    fake.switches.cut_blob_after = CUT
    ours = await start_registry()
    host = ours.url.removeprefix("http://")
    source = f"docker://127.0.0.1:{fake.port}/library/cut:1"
    # (Plain http: the probe for https waits for its --timeout.)
    common = ["copy", "-q", "--timeout", "3", "--src-tls-verify=false"]
    common += ["--dest-tls-verify=false", source]
    code, out, err = await txregistry(
        *common[:2], "--retry-times", "2", *common[2:], f"docker://{host}/few/x:v1"
    )
    assert (code, out) == (1, ""), err
    assert err.startswith(
        f"txregistry copy: failed: source http://127.0.0.1:{fake.port}, "
        f"blob library/cut@{layer.digest}: connection lost after {CUT} of {MiB - 2 * CUT} bytes"
    )
    code, out, err = await txregistry(
        *common[:2], "--retry-times", "3", *common[2:], f"docker://{host}/st/x:v1"
    )
    assert code == 0, err
    ranges = [r.range for r in fake.log if r.kind == "cdn" and r.ref == layer.digest]
    assert ranges[-4:] == [None, f"bytes={CUT}-", f"bytes={2 * CUT}-", f"bytes={3 * CUT}-"]
    client = make_client(ours.url)
    got = await (await client.blob("st/x", layer.digest)).read(MiB)
    assert images.digest(got) == layer.digest


@pytest_twisted.ensureDeferred
async def test_a_source_cut_every_time_fails_after_the_retries(
    fake: FakeUpstream,
    start_registry: Starter,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    """Every body is cut: the source is read on twice (``retries``), then the copy fails
    with the source's `Unavailable`, naming the source; nothing is committed."""
    layer = fake.content.add_image("library/big", "1", [SIZE]).layers[0]
    fake.switches.cut_blob_after = CUT
    destination = make_client((await start_registry()).url)
    source = make_client(fake.url, retries=2)
    with pytest.raises(Unavailable) as info:
        await destination.copy_blob_from(source, "library/big", "copy/big", layer.digest)
    assert str(info.value).startswith(
        f"source {fake.url}, blob library/big@{layer.digest}: connection lost after {CUT} "
    )
    assert fake.count("GET", "cdn", ref=layer.digest) == 3
    assert await destination.blob_exists("copy/big", layer.digest) is None
    assert uploads_left(tmp_path / "registry0", "copy/big") == []
