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


@pytest_twisted.ensureDeferred
async def test_a_stalled_source_is_the_sources_stall_not_the_destinations_silence(
    fake: FakeUpstream, start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The source's body stops after CUT bytes and stays silent; both sides have the same
    timeout.  The destination is healthy: the error names the source and says its body
    stalled, and counts as none of the destination's."""
    layer = fake.content.add_image("library/big", "1", [SIZE]).layers[0]
    fake.switches.stall_blob_after = CUT
    destination = make_client((await start_registry()).url, timeout=1.0)
    source = make_client(fake.url, timeout=1.0, retries=0)
    with pytest.raises(Unavailable) as info:
        await destination.copy_blob_from(source, "library/big", "copy/big", layer.digest)
    assert str(info.value) == (
        f"source {fake.url}, blob library/big@{layer.digest}: "
        f"body stalled: nothing for 1.0s after {CUT} bytes"
    )
    assert destination.errors == 0
    assert await destination.blob_exists("copy/big", layer.digest) is None
    assert uploads_left(tmp_path / "registry0", "copy/big") == []


@pytest_twisted.ensureDeferred
async def test_txregistry_copy_names_a_stalled_source(
    fake: FakeUpstream, start_registry: Starter
) -> None:
    """``txregistry copy --timeout 2 --retry-times 0 docker://SRC/... docker://DST/...`` with a
    source whose layer body stalls: exit 1, the line names the source and its stall (not a
    silence of the healthy destination)."""
    layer = fake.content.add_image("stall/app", "v1", [MiB]).layers[0]
    fake.switches.stall_blob_after = CUT
    host = (await start_registry()).url.removeprefix("http://")
    code, out, err = await txregistry(
        "copy",
        "-q",
        "--timeout",
        "2",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://127.0.0.1:{fake.port}/stall/app:v1",
        f"docker://{host}/st/x:v1",
    )
    assert (code, out) == (1, "")
    assert err == (
        f"txregistry copy: failed: source http://127.0.0.1:{fake.port}, "
        f"blob stall/app@{layer.digest}: body stalled: nothing for 2.0s after {CUT} bytes\n"
    )


@pytest_twisted.ensureDeferred
async def test_a_source_that_stalls_is_read_on_too(
    fake: FakeUpstream, start_registry: Starter, make_client: ClientFactory
) -> None:
    """Each body of the 1 MiB layer stalls after CUT bytes: a stall is resumed as a cut is,
    and the fourth read brings the last byte."""
    layer = fake.content.add_image("library/slow", "1", [MiB]).layers[0]
    fake.switches.stall_blob_after = CUT
    destination = make_client((await start_registry()).url, timeout=0.5)
    source = make_client(fake.url, timeout=0.5, retries=3)
    sent = await destination.copy_blob_from(source, "library/slow", "copy/slow", layer.digest)
    assert sent == MiB
    assert await destination.blob_exists("copy/slow", layer.digest) == MiB
    ranges = [r.range for r in fake.log if r.kind == "cdn" and r.ref == layer.digest]
    assert ranges == [None, f"bytes={CUT}-", f"bytes={2 * CUT}-", f"bytes={3 * CUT}-"]
