"""
The S3 driver against a real S3 server (SeaweedFS on 127.0.0.1, signatures checked).

Every test gets its own ``rootdirectory`` in the shared bucket, so tests never see each other's
keys; the server itself is started once per session (`tests.storage.s3server`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, tcp
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from registry.api.errors import RegistryError
from registry.handlers.common import error_for
from registry.storage.blobs import BlobStore
from registry.storage.driver import (
    InvalidOffsetError,
    PathBusyError,
    PathNotFoundError,
    StorageError,
    WriteTakenOver,
)
from registry.storage.s3 import S3CredentialsError, S3Driver, S3Settings
from registry.storage.s3 import _lease as s3_lease
from registry.storage.s3 import _multipart as multipart
from registry.storage.s3._connections import IO_SIZE
from registry.storage.s3._lease import LEASE_SUFFIX
from registry.storage.s3._reader import describe_end
from registry.storage.s3._writer import STATE_SUFFIX
from registry.storage.uploads import UploadStore
from tests.storage.driver_suite import DriverSuite, read_all
from tests.storage.s3server import S3Server, require_weed

MIB = 1024 * 1024


def settings_for(server: S3Server, **overrides: Any) -> S3Settings:
    return server.settings(f"/tests/{uuid.uuid4().hex}/", **overrides)


@pytest_twisted.async_yield_fixture
async def make_driver(s3_server: S3Server) -> AsyncIterator[Any]:
    """A factory of drivers on the test server; all share one fresh rootdirectory by default."""
    root = f"/tests/{uuid.uuid4().hex}/"
    drivers: list[S3Driver] = []

    def make(**overrides: Any) -> S3Driver:
        overrides.setdefault("rootdirectory", root)
        driver = S3Driver(reactor, settings_for(s3_server, **overrides))
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()


@pytest.fixture
def driver(make_driver: Any) -> S3Driver:
    return make_driver()  # type: ignore[no-any-return]


class TestS3Driver(DriverSuite):
    """The shared driver suite, on S3."""


async def write_all(writer: Any, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        pending = writer.write(data[start : start + piece])
        if pending is not None:
            await pending


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_are_named(make_driver: Any) -> None:
    """A wrong secret or an unknown key gives S3CredentialsError naming bucket and S3 code."""
    bad_secret = make_driver(secretkey="not-the-secret")
    with pytest.raises(S3CredentialsError) as caught:
        await bad_secret.put_content("x/y", b"data")
    assert "refused the credentials for bucket txregistry" in str(caught.value)
    assert "SignatureDoesNotMatch" in str(caught.value)
    unknown = make_driver(accesskey="nobody", secretkey="whatever")
    with pytest.raises(S3CredentialsError) as caught:
        await unknown.get_content("x/y")
    assert "InvalidAccessKeyId" in str(caught.value)
    # HEAD replies have no body: the status alone must still be recognised.
    with pytest.raises(S3CredentialsError):
        await unknown.stat("x/y")


@pytest_twisted.ensureDeferred
async def test_multipart_resumed_by_another_driver(make_driver: Any) -> None:
    """
    12 MiB in odd pieces with 5 MiB parts, closed with a tail under 5 MiB, resumed by a new
    driver instance (as another process would), committed as a multipart object.
    """
    data = os.urandom(12 * MIB + 12345)
    first = make_driver(chunksize=5 * MIB)
    writer = await first.writer("uploads/u1/data")
    cut = 7 * MIB + 333_333  # one full part, then a 2.3 MiB tail at close
    await write_all(writer, data[:cut], 777_777)
    await writer.close()
    with pytest.raises(PathNotFoundError):
        await first.stat("uploads/u1/data")
    assert await first.list("uploads") == ["u1"]  # the folder exists (the state object)...
    with pytest.raises(PathNotFoundError):
        await first.list("uploads/u1")  # ...but holds no finished file

    second = make_driver(chunksize=5 * MIB)
    writer = await second.writer("uploads/u1/data", append=True)
    assert writer.size == cut
    await write_all(writer, data[cut:], 1_000_003)
    assert writer.size == len(data)
    await writer.commit()

    info = await second.stat("uploads/u1/data")
    assert info.size == len(data)
    stored = await read_all(second, "uploads/u1/data")
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
    head = await second._client.call("HEAD", second._key("uploads/u1/data"))
    etag = head[0].headers.getRawHeaders("ETag")[0]
    assert etag.strip('"').endswith("-3"), etag  # three parts: 5 MiB+, 5 MiB+, the rest
    assert await second.list("uploads/u1") == ["data"]
    state = await second._client.call(
        "GET", second._key("uploads/u1/data") + STATE_SUFFIX, missing_ok=True
    )
    assert state is None


@pytest_twisted.ensureDeferred
async def test_close_append_twice_and_cancel(make_driver: Any) -> None:
    """Several close/append rounds keep the size; cancel removes the upload and its state."""
    driver = make_driver(chunksize=5 * MIB)
    pieces = [os.urandom(size) for size in (100, 3 * MIB, 6 * MIB + 1, 10)]
    writer = await driver.writer("up/data")
    total = 0
    for piece in pieces:
        await write_all(writer, piece, 65_536)
        total += len(piece)
        await writer.close()
        writer = await driver.writer("up/data", append=True)
        assert writer.size == total
    await writer.cancel()
    state = await driver._client.call("GET", driver._key("up/data") + STATE_SUFFIX, missing_ok=True)
    assert state is None
    uploads = await driver._uploads_under(driver._key("up"))
    assert uploads == []
    with pytest.raises(PathNotFoundError):
        await driver.writer("up/data", append=True)


@pytest_twisted.ensureDeferred
async def test_append_to_finished_object(make_driver: Any) -> None:
    """Appending to a committed object continues it (server-side copy when it is large)."""
    driver = make_driver(chunksize=5 * MIB)
    for name, size in (("small", 1000), ("large", 6 * MIB)):
        head, tail = os.urandom(size), os.urandom(2 * MIB)
        await driver.put_content(f"a/{name}", head)
        writer = await driver.writer(f"a/{name}", append=True)
        assert writer.size == size
        await write_all(writer, tail, MIB)
        await writer.commit()
        assert await read_all(driver, f"a/{name}") == head + tail


@pytest_twisted.ensureDeferred
async def test_spooled_parts(make_driver: Any, tmp_path: Path) -> None:
    """With spooldirectory, parts are buffered on disk and the files go away."""
    driver = make_driver(chunksize=5 * MIB, spooldirectory=str(tmp_path))
    data = os.urandom(11 * MIB + 7)
    writer = await driver.writer("s/data")
    await write_all(writer, data, 1_048_573)
    await writer.commit()
    assert hashlib.sha256(await read_all(driver, "s/data")).digest() == (
        hashlib.sha256(data).digest()
    )
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_move_multipart_object(make_driver: Any) -> None:
    """A multipart object moves by CopyObject, and by UploadPartCopy above the copy threshold."""
    driver = make_driver(chunksize=5 * MIB)
    data = os.urandom(11 * MIB + 1)
    writer = await driver.writer("mv/src")
    await write_all(writer, data, 999_999)
    await writer.commit()
    await driver.move("mv/src", "mv/copied")
    with pytest.raises(PathNotFoundError):
        await driver.stat("mv/src")
    assert await read_all(driver, "mv/copied") == data

    driver.copy_threshold = 6 * MIB
    driver.copy_part_size = 5 * MIB
    await driver.move("mv/copied", "mv/parts")
    assert await driver.list("mv") == ["parts"]
    assert hashlib.sha256(await read_all(driver, "mv/parts")).digest() == (
        hashlib.sha256(data).digest()
    )
    head = await driver._client.call("HEAD", driver._key("mv/parts"))
    assert head[0].headers.getRawHeaders("ETag")[0].strip('"').endswith("-2")


@attrs.define
class PausingConsumer:
    """Pauses its producer after every ``every`` bytes and resumes it a moment later."""

    every: int
    received: list[bytes] = attrs.Factory(list)
    producer: Any = None
    paused: bool = False
    pauses: int = 0
    written_while_paused: int = 0
    since_pause: int = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        if self.paused:
            self.written_while_paused += len(data)
        self.received.append(data)
        self.since_pause += len(data)
        if self.since_pause >= self.every and not self.paused:
            self.since_pause = 0
            self.paused = True
            self.pauses += 1
            self.producer.pauseProducing()
            reactor.callLater(0.01, self._resume)

    def _resume(self) -> None:
        self.paused = False
        if self.producer is not None:
            self.producer.resumeProducing()


@pytest_twisted.ensureDeferred
async def test_reader_ranges_and_backpressure(driver: S3Driver) -> None:
    """Range reads are exact; a pausing consumer gets nothing while paused."""
    data = os.urandom(8 * MIB + 5)
    await driver.put_content("big/blob", data)
    for offset, length in ((0, None), (5, 100), (MIB, 3 * MIB), (len(data) - 1, None)):
        producer = await driver.reader("big/blob", offset, length)
        expected = data[offset:] if length is None else data[offset : offset + length]
        assert producer.length == len(expected)
        consumer = PausingConsumer(every=256 * 1024)
        consumer.registerProducer(producer, True)
        await producer.startProducing(consumer)
        assert b"".join(consumer.received) == expected
        assert consumer.written_while_paused == 0
        if len(expected) > MIB:
            # S3 sockets read up to IO_SIZE at a time: at least one pause per read.
            assert consumer.pauses >= len(expected) // IO_SIZE
    assert (await driver.reader("big/blob", len(data))).length == 0
    assert (await driver.reader("big/blob", 10, 0)).length == 0
    with pytest.raises(InvalidOffsetError):
        await driver.reader("big/blob", len(data) + 1)
    # A reader dropped before it starts releases its connection.
    producer = await driver.reader("big/blob", 0)
    producer.stopProducing()
    assert await driver.get_content("big/blob") == data


@pytest_twisted.ensureDeferred
async def test_connections_move_large_reads_and_sends(driver: S3Driver) -> None:
    """The pooled S3 sockets read and send IO_SIZE per reactor turn, not Twisted's 64/128 KiB."""
    await driver.put_content("tuned/blob", b"x" * 100)
    pool: Any = driver._client._pool
    transports = [c.transport for cs in pool._connections.values() for c in cs]
    assert transports
    for transport in transports:
        # The TCP connection itself, under what wraps it (registry.http.bounded_agent).
        while isinstance(transport, ProtocolWrapper):
            transport = transport.transport
        assert isinstance(transport, tcp.Client), transport
        assert transport.bufferSize == IO_SIZE
        assert transport.SEND_LIMIT == IO_SIZE


@pytest_twisted.ensureDeferred
async def test_presigned_redirect(make_driver: Any) -> None:
    """With redirect on, GET gives a presigned URL that serves the bytes (and only signed)."""
    plain = make_driver()
    await plain.put_content("r/blob", b"redirected bytes")
    assert await plain.redirect_url("r/blob", "GET") is None
    redirecting = make_driver(redirect=True)
    url = await redirecting.redirect_url("r/blob", "GET")
    assert url is not None and "X-Amz-Signature=" in url
    response = await treq.get(url)
    assert response.code == 200
    assert await treq.content(response) == b"redirected bytes"
    assert await redirecting.redirect_url("r/blob", "PUT") is None
    forged = make_driver(redirect=True, secretkey="wrong")
    response = await treq.get(await forged.redirect_url("r/blob", "GET"))
    assert response.code == 403
    await treq.content(response)


async def foreign_upload(driver: S3Driver, path: str, *parts: tuple[int, bytes]) -> str:
    """A multipart upload of ``path`` with the given numbered parts and no state object, as
    registry:2's S3 driver leaves one."""
    key = driver._key(path)
    upload_id = await multipart.create(driver._client, key)
    for number, data in parts:
        await multipart.upload_part(driver._client, key, upload_id, number, data)
    return upload_id


@pytest_twisted.ensureDeferred
async def test_an_upload_another_writer_left_is_completed_and_continued(
    make_driver: Any,
) -> None:
    """
    A key with no state object and exactly one multipart upload (registry:2's unfinished
    file) is continued from that upload's bytes, also over an older object at the key; with
    no part yet, from nothing.  The upload is completed, not left behind.
    """
    driver = make_driver(chunksize=5 * MIB)
    first, last, more = os.urandom(5 * MIB), os.urandom(1234), os.urandom(10)
    await driver.put_content("r2/data", first[:100])  # registry:2's copy of a first request
    await foreign_upload(driver, "r2/data", (1, first), (2, last))
    await foreign_upload(driver, "empty/data")
    for path, stored in (("r2/data", first + last), ("empty/data", b"")):
        writer = await driver.writer(path, append=True)
        assert writer.size == len(stored)
        await write_all(writer, more, MIB)
        await writer.commit()
        await writer.close()
        assert await read_all(driver, path) == stored + more
        assert await multipart.uploads_of(driver._client, driver._key(path)) == []


@pytest_twisted.ensureDeferred
async def test_an_upload_left_ambiguous_or_with_a_gap_is_not_continued(
    make_driver: Any,
) -> None:
    """Two uploads of one key (which holds the file?), or one lacking a part (bytes left out):
    neither is completed; the key goes on as it is (not found, or its object)."""
    driver = make_driver(chunksize=5 * MIB)
    await foreign_upload(driver, "two/data", (1, b"one"))
    await foreign_upload(driver, "two/data", (1, b"two"))
    await foreign_upload(driver, "gap/data", (1, os.urandom(5 * MIB)), (3, b"three"))
    for path in ("two/data", "gap/data"):
        with pytest.raises(PathNotFoundError):
            await driver.writer(path, append=True)
        with pytest.raises(PathNotFoundError):
            await driver.stat(path)
    await driver.put_content("gap/data", b"kept")
    writer = await driver.writer("gap/data", append=True)
    assert writer.size == 4
    await writer.cancel()
    assert len(await multipart.uploads_of(driver._client, driver._key("two/data"))) == 2


@pytest_twisted.ensureDeferred
async def test_delete_folder_aborts_unfinished_uploads(make_driver: Any) -> None:
    """Deleting an upload folder removes files, the state object and the multipart upload."""
    driver = make_driver(chunksize=5 * MIB)
    await driver.put_content("_uploads/x/startedat", b"now")
    writer = await driver.writer("_uploads/x/data")
    await write_all(writer, os.urandom(6 * MIB), MIB)
    await writer.close()
    assert len(await driver._uploads_under(driver._key("_uploads"))) == 1
    await driver.delete("_uploads/x")
    assert await driver._uploads_under(driver._key("_uploads")) == []
    with pytest.raises(PathNotFoundError):
        await driver.list("_uploads")
    with pytest.raises(PathNotFoundError):
        await driver.writer("_uploads/x/data", append=True)


@pytest_twisted.ensureDeferred
async def test_list_paginates(driver: S3Driver) -> None:
    """More than a page of children (page size lowered through the real API's max-keys)."""
    original = driver._list_page

    async def small_pages(prefix: str, delimiter: Any = None, token: Any = None, **_: Any) -> Any:
        return await original(prefix, delimiter, token, max_keys=3)

    driver._list_page = small_pages  # type: ignore[method-assign]
    names = [f"n{i:02d}" for i in range(8)]
    for name in names:
        await driver.put_content(f"p/{name}", b"x")
    await driver.put_content("p/sub/deep", b"x")
    assert await driver.list("p") == [*names, "sub"]
    await driver.delete("p")
    with pytest.raises(PathNotFoundError):
        await driver.list("p")


def test_missing_weed_skips_locally_and_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXREGISTRY_WEED", "/nonexistent/weed")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="weed binary not found"):
        require_weed()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="weed binary not found"):
        require_weed()


@pytest_twisted.ensureDeferred
async def test_unreachable_server_is_a_storage_error(s3_server: S3Server) -> None:
    """A refused connection is retried, then reported as a StorageError naming the endpoint."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    driver = S3Driver(reactor, settings_for(s3_server, regionendpoint=f"http://127.0.0.1:{port}"))
    driver._client.retry_delays = (0.01, 0.01)
    with pytest.raises(StorageError, match="unreachable"):
        await driver.get_content("a/b")
    await driver.close()


@pytest_twisted.ensureDeferred
async def test_folders_are_not_files(driver: S3Driver) -> None:
    """A folder (a key prefix, or a folder entry on SeaweedFS) reads as missing."""
    await driver.put_content("d/e/f", b"x")
    with pytest.raises(PathNotFoundError):
        await driver.get_content("d/e")
    with pytest.raises(PathNotFoundError):
        await driver.reader("d/e")
    await driver.delete("d/e/f")
    with pytest.raises(PathNotFoundError):
        await driver.get_content("d/e/f")


def test_huge_single_write_is_cut_below_the_part_limit(
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One write larger than S3's part limit is cut so that no part exceeds it."""
    from registry.storage.s3 import _writer

    monkeypatch.setattr(_writer, "MAX_PART_SIZE", 6 * MIB)
    driver = S3Driver(reactor, settings_for(s3_server, chunksize=5 * MIB))
    writer = _writer.S3Writer(driver._client, reactor, "k", "p", tail=b"x" * MIB)
    pieces = writer._pieces(b"y" * 20 * MIB)
    assert [len(piece) for piece in pieces] == [5 * MIB, 5 * MIB, 5 * MIB, 5 * MIB]
    assert writer._pieces(b"z" * MIB) == [b"z" * MIB]


@pytest_twisted.ensureDeferred
async def test_writer_backpressure_and_failure(make_driver: Any) -> None:
    """
    A writer fed faster than S3 takes parts makes the caller wait, holding at most two parts on
    their way plus one ready; a part S3 refuses fails the writer instead of losing data quietly.
    """
    from registry.storage.s3._multipart import abort

    driver = make_driver(chunksize=5 * MIB)
    writer = await driver.writer("bp/data")
    piece = os.urandom(MIB)
    waited = 0
    for _ in range(30):
        pending = writer.write(piece)
        assert len(writer._sending) <= 2 and len(writer._full) <= 1
        if pending is not None:
            waited += 1
            await pending
    assert waited >= 1
    await writer.commit()
    assert (await driver.stat("bp/data")).size == 30 * MIB

    writer = await driver.writer("bp/doomed")
    await write_all(writer, os.urandom(6 * MIB), MIB)
    await writer._settle()
    await abort(driver._client, driver._key("bp/doomed"), writer._upload_id)
    with pytest.raises(StorageError, match="NoSuchUpload"):
        await write_all(writer, os.urandom(10 * MIB), MIB)
        await writer.commit()


class _Flaky(Resource):
    """An S3 stand-in that fails the first ``failures`` GETs with 503 SlowDown."""

    isLeaf = True

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.seen = 0

    def render_GET(self, request: Any) -> bytes:
        self.seen += 1
        assert request.getHeader(b"authorization").startswith(b"AWS4-HMAC-SHA256 ")
        if self.seen <= self.failures:
            request.setResponseCode(503)
            return b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>"
        return b"content"


@pytest_twisted.ensureDeferred
async def test_5xx_is_retried_then_reported() -> None:
    """S3's 503 SlowDown is sent again after a pause; when it persists, its code is reported."""
    for failures, expected in ((2, b"content"), (10, None)):
        flaky = _Flaky(failures)
        port = reactor.listenTCP(0, Site(flaky), interface="127.0.0.1")
        settings = S3Settings(
            bucket="b",
            regionendpoint=f"http://127.0.0.1:{port.getHost().port}",
            accesskey="k",
            secretkey="s",
        )
        driver = S3Driver(reactor, settings)
        driver._client.retry_delays = (0.01, 0.01, 0.01)
        try:
            if expected is not None:
                assert await driver.get_content("x") == expected
                assert flaky.seen == 3
            else:
                with pytest.raises(StorageError, match="HTTP 503 SlowDown"):
                    await driver.get_content("x")
                assert flaky.seen == 4
        finally:
            await driver.close()
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_busy_upload_reports_the_size_its_state_records(driver: S3Driver) -> None:
    """On S3 an unfinished upload's data is a multipart upload, not an object: the 416 for a
    request that finds the upload busy carries the size from the saved hash state, not 0."""
    store = UploadStore(driver, BlobStore(driver))
    upload = await store.start("app")
    first = await store.open("app", upload, 0)
    await write_all(first, os.urandom(6 * 1024 * 1024), 1024 * 1024)
    await first.close()
    writing = await store.open("app", upload, 6 * 1024 * 1024)  # has the upload now
    try:
        with pytest.raises(RegistryError) as busy:
            await store.open("app", upload, 6 * 1024 * 1024)
        assert busy.value.detail["reason"] == "another request is writing"
        assert busy.value.detail["size"] == 6 * 1024 * 1024
    finally:
        await writing.close()


def _dead_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait(timeout=30)
    return child.pid


@pytest_twisted.ensureDeferred
async def test_one_appending_writer_at_a_time(make_driver: Any) -> None:
    """Two processes (two driver instances) appending to one upload: the second is refused
    while the first writes (its request answers 416), and gets it once the first closed."""
    first, second = make_driver(), make_driver()
    writer = await first.writer("up/data")
    await write_all(writer, b"x" * 100, 100)
    await writer.close()
    holding = await first.writer("up/data", append=True)
    with pytest.raises(PathBusyError):
        await second.writer("up/data", append=True)
    await holding.close()
    writer = await second.writer("up/data", append=True)
    assert writer.size == 100
    await writer.close()
    lease = second._key("up/data") + LEASE_SUFFIX
    assert await second._client.call("GET", lease, missing_ok=True) is None


@pytest_twisted.ensureDeferred
async def test_a_lease_whose_holder_stopped_is_taken_over(
    make_driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process of this host that died holding the lease (kill -9) is passed over at once;
    another host's holder only once S3's clock says it stopped renewing."""
    driver = make_driver()
    await (await driver.writer("up/data")).close()
    lease = driver._key("up/data") + LEASE_SUFFIX
    dead = {"host": socket.gethostname(), "pid": _dead_pid(), "id": "x"}
    await driver._client.call("PUT", lease, body=json.dumps(dead).encode())
    writer = await driver.writer("up/data", append=True)
    await writer.close()

    elsewhere = {"host": "another-host.invalid", "pid": 1, "id": "y"}
    await driver._client.call("PUT", lease, body=json.dumps(elsewhere).encode())
    with pytest.raises(PathBusyError):
        await driver.writer("up/data", append=True)
    monkeypatch.setattr(s3_lease, "STALE_SECONDS", -1.0)  # as if not renewed for long
    writer = await driver.writer("up/data", append=True)
    await writer.close()
    assert await driver._client.call("GET", lease, missing_ok=True) is None


@pytest_twisted.ensureDeferred
async def test_a_holder_whose_pid_now_names_another_process_is_taken_over(
    make_driver: Any,
) -> None:
    """A restarted container's registry is pid 1 again, as its killed predecessor was: the
    lease names the pid with its start time, so a pid reused by another process (or by this
    one) is not mistaken for the holder, and is not waited out for STALE_SECONDS."""
    driver = make_driver()
    await (await driver.writer("up/data")).close()
    lease = driver._key("up/data") + LEASE_SUFFIX
    alive, started = _running()
    try:
        holder = {"host": socket.gethostname(), "pid": alive.pid, "started": started, "id": "a"}
        await driver._client.call("PUT", lease, body=json.dumps(holder).encode())
        with pytest.raises(PathBusyError):  # the holder itself, still running
            await driver.writer("up/data", append=True)
        for pid in (alive.pid, os.getpid()):
            earlier = {**holder, "pid": pid, "started": started - 1}
            await driver._client.call("PUT", lease, body=json.dumps(earlier).encode())
            writer = await driver.writer("up/data", append=True)
            await writer.close()
        # A holder in another pid namespace (another container sharing the host name): its
        # pid and start time mean nothing here, and the lease is left to its age.
        elsewhere = {**holder, "pid": os.getpid(), "started": started - 1, "pidns": "pid:[1]"}
        await driver._client.call("PUT", lease, body=json.dumps(elsewhere).encode())
        with pytest.raises(PathBusyError):
            await driver.writer("up/data", append=True)
        # A holder on another machine of the same host name (cloned machines, containers
        # given one name): the root pid namespace reads the same there, its boot id does not.
        namesake = {**holder, "pid": _dead_pid(), "started": None, "boot": "another-machine"}
        await driver._client.call("PUT", lease, body=json.dumps(namesake).encode())
        with pytest.raises(PathBusyError):
            await driver.writer("up/data", append=True)
    finally:
        alive.kill()
        alive.wait()


def _running() -> tuple[subprocess.Popen[bytes], int]:
    """A child that runs (the caller kills it) and its start time, read from /proc."""
    alive = subprocess.Popen(["sleep", "60"])
    with open(f"/proc/{alive.pid}/stat", "rb") as stat:
        return alive, int(stat.read().rsplit(b")", 1)[-1].split()[19])  # field 22


def _zombie() -> subprocess.Popen[bytes]:
    """A child killed and not reaped (the caller waits for it at the end)."""
    killed = subprocess.Popen(["sleep", "60"])
    killed.kill()
    for _ in range(500):  # bounded: the kernel makes it a zombie within milliseconds
        with open(f"/proc/{killed.pid}/stat", "rb") as stat:
            if stat.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return killed
        time.sleep(0.01)
    raise AssertionError("the killed child never became a zombie")


@pytest_twisted.ensureDeferred
async def test_a_holder_killed_but_not_yet_reaped_is_taken_over(make_driver: Any) -> None:
    """Right after a kill -9 the holder is a zombie until its parent reaps it: it writes no
    more, and a restarted registry's retry was refused ("another request is writing") until
    the lease went stale."""
    driver = make_driver()
    await (await driver.writer("up/data")).close()
    lease = driver._key("up/data") + LEASE_SUFFIX
    killed = _zombie()
    try:
        holder = {"host": socket.gethostname(), "pid": killed.pid, "id": "z"}
        await driver._client.call("PUT", lease, body=json.dumps(holder).encode())
        writer = await driver.writer("up/data", append=True)
        await writer.close()
    finally:
        killed.wait()


@pytest_twisted.ensureDeferred
async def test_a_writer_that_lost_its_lease_neither_commits_nor_records(
    make_driver: Any,
) -> None:
    """Taken over (it stopped renewing, say), a writer must not commit or write its state
    over the new holder's."""
    first, second = make_driver(), make_driver()
    writer = await first.writer("up/data")
    await write_all(writer, b"a" * 10, 10)
    await writer.close()
    stale = await first.writer("up/data", append=True)
    await write_all(stale, b"b" * 10, 10)
    await first._client.call("DELETE", first._key("up/data") + LEASE_SUFFIX)
    taker = await second.writer("up/data", append=True)
    with pytest.raises(StorageError, match="took over"):
        await stale.commit()
    await stale.close()
    await write_all(taker, b"c" * 10, 10)
    await taker.commit()
    await taker.close()
    assert await read_all(second, "up/data") == b"a" * 10 + b"c" * 10


def test_a_cut_read_says_why_in_words() -> None:
    """Not "[<twisted.python.failure.Failure ...ConnectionDone...>, ...]" in the log line."""
    from twisted.internet.error import ConnectionDone
    from twisted.web._newclient import ResponseFailed

    cut = Failure(ResponseFailed([Failure(ConnectionDone()), Failure(ValueError())]))
    assert describe_end(cut) == "Connection was closed cleanly."
    assert describe_end(Failure(ValueError())) == "ValueError"


@pytest_twisted.ensureDeferred
async def test_a_paused_writer_does_not_write_over_the_state_of_its_successor(
    make_driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that checked its lease, then paused (a stopped process, a network cut) while
    another request took the upload over and appended: its state write must fail (the state
    object is written only over the version it continued), not throw the other's data away."""
    first, second = make_driver(), make_driver()
    writer = await first.writer("up/data")
    await write_all(writer, b"a" * 10, 10)
    await writer.close()
    paused = await first.writer("up/data", append=True)
    await write_all(paused, b"b" * 10, 10)
    # Its lease lapses and the other request takes over and appends.
    await first._client.call("DELETE", first._key("up/data") + LEASE_SUFFIX)
    taker = await second.writer("up/data", append=True)
    await write_all(taker, b"c" * 30, 30)
    await taker.close()

    async def checked_before_the_pause() -> None:
        """The lease check passed just before the pause (what the state write must not trust)."""

    monkeypatch.setattr(paused._lease, "confirm", checked_before_the_pause)
    with pytest.raises(WriteTakenOver):
        await paused.close()
    reader = await second.writer("up/data", append=True)
    assert reader.size == 40  # the successor's state: 10 + 30
    await reader.close()


def test_a_write_taken_over_is_the_clients_upload_going_on_elsewhere() -> None:
    """Not a 503 (which asks the client to send the same request again)."""
    error = error_for(WriteTakenOver("another request took over the upload u/data"))
    assert (error.code.value, error.status) == ("BLOB_UPLOAD_INVALID", 400)
    assert error.detail == {"reason": "another request took over the upload u/data"}
