"""A fill whose upstream body is cut mid-way (a CDN connection dropped) asks the upstream for
the rest from the byte it reached, with a ``Range`` request, and its clients get the whole
blob in the same response: a layer of tens of gigabytes is not fetched again from its first
byte, and no client sees the cut.  The fill hashes its body itself, across the cut."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.threads import deferToThread

from tests.e2e.client import get, sha256
from tests.fakes.upstream import FakeUpstream
from tests.proxy.registries import Proxied
from tests.proxy.test_fill_integrity import _try_get
from tests.proxy.test_fill_storage_failure import Logs
from tests.proxy.util import blob_data_path, fetch, metric, storage_root, wait_for
from tests.storage.s3server import S3Server, signed_request

MiB = 1024 * 1024
LAYER = 12 * MiB  # with 5 MiB parts on S3: a multipart upload, resumed in its third part
CUT = LAYER // 2 + 12345


def _cdn_ranges(fake: FakeUpstream, digest: str) -> list[str | None]:
    return [r.range for r in fake.log if r.kind == "cdn" and r.method == "GET" and r.ref == digest]


@pytest.mark.parametrize("storage", ["filesystem", "s3"])
@pytest_twisted.ensureDeferred
async def test_a_cut_upstream_body_is_resumed_from_the_byte_reached(
    proxied: Proxied, fake: FakeUpstream, s3_server: S3Server, storage: str
) -> None:
    """Two clients of one fill whose upstream body is cut once: both get the whole blob;
    the second upstream GET asks for the bytes from where the first stopped, so the upstream
    sends the blob once in all; the blob is stored and hashes to its digest."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    fake.switches.cut_blob_after = CUT
    fake.switches.cut_blob_times = 1
    root = f"/resume/{uuid.uuid4().hex}"
    extra = {}
    if storage == "s3":
        extra = {"storage": s3_server.storage_section(root, chunksize="5MiB")}
    registry = await proxied(extra)
    url = f"{registry.url}/v2/alpine/blobs/{digest}"
    with Logs() as logs:
        answers = await gatherResults([ensureDeferred(get(url)), ensureDeferred(get(url))])
    for response, body in answers:
        assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
    assert _cdn_ranges(fake, digest) == [None, f"bytes={CUT}-"]
    assert fake.cdn_sent == LAYER
    said = logs.saying("asking for the rest")
    assert [text for _level, text in said] == [
        f"proxy hub: upstream body of {digest} stopped at byte {CUT} of {LAYER}: connection"
        f" lost after {CUT} of {LAYER} bytes (closed by the other side); asking for the rest"
        " (try 1 of 3 in a row, 1 of 20 in all)"
    ], said
    assert said[0][0] == "warn"
    logs.assert_clean()
    _response, text = await fetch(f"{registry.url}/metrics")
    assert metric(text.decode(), "txregistry_proxy_fill_resumes_total") == 1
    # Stored whole: a later pull is a hit, and the stored bytes are the blob.
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    assert len(_cdn_ranges(fake, digest)) == 2
    if storage == "filesystem":
        data = blob_data_path(storage_root(registry), digest).read_bytes()
        assert sha256(data) == digest
    else:
        hex_ = digest.split(":", 1)[1]
        data_url = (
            f"{s3_server.endpoint}/{s3_server.bucket}{root}/docker/registry/v2/blobs/sha256/"
            f"{hex_[:2]}/{hex_}/data"
        )
        status, stored = await deferToThread(signed_request, "GET", data_url)
        assert (status, sha256(stored)) == (200, digest)


@pytest_twisted.ensureDeferred
async def test_a_resume_answered_whole_drops_the_bytes_the_fill_has(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """An upstream that ignores the ``Range`` (it may: RFC 9110) answers 200 with the whole
    blob: the fill drops what it has already and takes the rest, so the client's body is the
    blob, not its first half twice."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    fake.switches.cut_blob_after = CUT
    fake.switches.cut_blob_times = 1
    fake.switches.ignore_range = True
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{digest}"
    response, body = await get(url)
    assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
    assert _cdn_ranges(fake, digest) == [None, f"bytes={CUT}-"]
    assert fake.cdn_sent == CUT + LAYER
    await wait_for(blob_data_path(storage_root(registry), digest).exists)


@pytest_twisted.ensureDeferred
async def test_resumes_that_bring_nothing_end_the_fill(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """An upstream whose every body is cut at the same byte (it ignores the ``Range`` and
    sends the blob from its start each time): three tries that bring nothing, then the fill
    fails, its client's body ends short, and nothing is stored; the next pull fills again."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    fake.switches.cut_blob_after = CUT
    fake.switches.ignore_range = True
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{digest}"
    with Logs() as logs:
        response, body = await _try_get(url)
    assert response == 200 and body is None
    assert _cdn_ranges(fake, digest) == [None] + [f"bytes={CUT}-"] * 3
    tries = [text.rsplit("(", 1)[1] for _level, text in logs.saying("asking for the rest")]
    assert tries == [
        "try 1 of 3 in a row, 1 of 20 in all)",
        "try 2 of 3 in a row, 2 of 20 in all)",
        "try 3 of 3 in a row, 3 of 20 in all)",
    ]
    assert not blob_data_path(storage_root(registry), digest).exists()
    fake.switches.cut_blob_after = None
    response2, data = await get(url)
    assert (response2.code, sha256(data)) == (200, digest)


@pytest_twisted.ensureDeferred
async def test_resumes_that_bring_a_few_bytes_each_end_the_fill(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """An upstream that cuts every body after a few bytes, ``Range`` or not: such tries are
    not progress, so three of them end the fill, instead of one try per few bytes of the
    blob (a thousand tries for a megabyte)."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    fake.switches.cut_blob_after = 1000
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{digest}"
    with Logs() as logs:
        status, body = await _try_get(url)
    assert status == 200 and body is None
    assert _cdn_ranges(fake, digest) == [None, "bytes=1000-", "bytes=2000-", "bytes=3000-"]
    tries = [text.rsplit("(", 1)[1] for _level, text in logs.saying("asking for the rest")]
    assert tries == [
        "try 1 of 3 in a row, 1 of 20 in all)",
        "try 2 of 3 in a row, 2 of 20 in all)",
        "try 3 of 3 in a row, 3 of 20 in all)",
    ]
    logs.assert_clean()
    assert not blob_data_path(storage_root(registry), digest).exists()


@pytest_twisted.ensureDeferred
async def test_a_body_whole_but_without_its_last_chunk_is_checked_and_kept(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Every byte of a chunked body came, then the connection closed without the last
    chunk: nothing is left to ask for, so the digest decides, and the blob is kept (it was
    fetched again, whole, at every pull)."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    fake.switches.unfinished_blobs = True
    registry = await proxied()
    url = f"{registry.url}/v2/alpine/blobs/{digest}"
    response, body = await get(url)
    assert (response.code, len(body), sha256(body)) == (200, LAYER, digest)
    assert blob_data_path(storage_root(registry), digest).exists()
    response, body = await get(url)
    assert (response.code, sha256(body)) == (200, digest)
    assert _cdn_ranges(fake, digest) == [None]


@pytest_twisted.ensureDeferred
async def test_no_resume_is_asked_while_the_upstream_is_held_off(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """A body cut while the upstream is held off after failures: no try is made, counted or
    said; the cut is the fill's failure, in one line."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    registry = await proxied(hold_off="60s")
    parked = fake.hold_body(digest, CUT)
    response = await treq.get(f"{registry.url}/v2/alpine/blobs/{digest}", unbuffered=True)
    assert response.code == 200
    body = ensureDeferred(_content_or_none(response))
    await wait_for(lambda: parked.arrived == 1)
    fake.switches.fail_status = 503
    for name in ("one", "two", "three"):  # three failures in a row: held off
        answer, _ = await get(f"{registry.url}/v2/library/{name}/manifests/latest")
        assert answer.code == 503
    with Logs() as logs:
        fake.drop_connections()
        assert await body is None
    assert logs.saying("asking for the rest") == []
    failed = logs.saying(f"blob GET library/alpine:{digest} failed")
    assert len(failed) == 1 and "connection lost after" in failed[0][1], failed
    _response, text = await fetch(f"{registry.url}/metrics")
    assert metric(text.decode(), "txregistry_proxy_fill_resumes_total") == 0
    assert _cdn_ranges(fake, digest) == [None]


@pytest_twisted.ensureDeferred
async def test_a_blob_gone_when_asked_for_the_rest_ends_the_fill_in_one_line(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """The upstream answers 404 to the resume (the blob was deleted there meanwhile): the fill
    ends, and says so (a 404 is otherwise a plain miss, not logged)."""
    image = fake.content.add_image("library/alpine", "latest", [LAYER])
    digest = image.layers[0].digest
    registry = await proxied()
    parked = fake.hold_body(digest, CUT)
    response = await treq.get(f"{registry.url}/v2/alpine/blobs/{digest}", unbuffered=True)
    assert response.code == 200
    body = ensureDeferred(_content_or_none(response))
    await wait_for(lambda: parked.arrived == 1)
    fake.content.remove_blob(digest)
    with Logs() as logs:
        fake.drop_connections()
        assert await body is None
    failed = logs.saying(f"blob GET library/alpine:{digest} failed")
    assert len(failed) == 1, logs.events
    assert f"asked for the rest from byte {CUT}: registry 404" in failed[0][1], failed
    assert fake.count("GET", "blob", name="library/alpine", ref=digest) == 2
    assert not blob_data_path(storage_root(registry), digest).exists()


async def _content_or_none(response: object) -> bytes | None:
    try:
        data: bytes = await response.content()  # type: ignore[attr-defined]
    except Exception:
        return None
    return data


@pytest_twisted.ensureDeferred
async def test_a_fill_asks_for_the_rest_twenty_times_at_most(
    proxied: Proxied, fake: FakeUpstream
) -> None:
    """Each try brings a megabyte (progress), and each is cut again: after twenty tries the
    fill ends all the same, and its client's body ends short."""
    size = 24 * MiB
    image = fake.content.add_image("library/alpine", "latest", [size])
    digest = image.layers[0].digest
    fake.switches.cut_blob_after = MiB
    registry = await proxied()
    status, body = await _try_get(f"{registry.url}/v2/alpine/blobs/{digest}")
    assert status == 200 and body is None
    assert _cdn_ranges(fake, digest) == [None] + [f"bytes={n * MiB}-" for n in range(1, 21)]
    assert not blob_data_path(storage_root(registry), digest).exists()
