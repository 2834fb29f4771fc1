"""
Upload bodies the registry refuses are answered at once, not after the client sent them.

A PATCH or PUT to an unknown upload, with the wrong ``Content-Range``, without the right to
push, or when the disk is full, gets its error while the body is still coming (and with
``Expect: 100-continue``, before it is sent at all).  Raw sockets, so that the tests see
exactly when each byte of the answer arrives.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import attrs
import bcrypt
import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from tests.e2e.client import sha256, split_response, start_upload
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry, sleep
from tests.e2e.test_upload_resilience import upload_range

MiB = 1024 * 1024


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    # "HTTP/1.1 100 Continue" came before the final answer.
    continued: bool


class RawUpload:
    """One HTTP/1.1 request over a plain socket, sent and read step by step."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.host = host
        self._buffer = b""

    @classmethod
    def over(cls, sock: socket.socket) -> RawUpload:
        """On a socket already connected (a TLS one, say)."""
        upload = cls.__new__(cls)
        upload.sock, upload.host, upload._buffer = sock, "127.0.0.1", b""
        return upload

    def send_headers(self, method: str, path: str, length: int, *extra: str) -> None:
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}",
            f"Content-Length: {length}",
            "Content-Type: application/octet-stream",
            *extra,
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed before an answer: {self._buffer!r}"
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def answer(self) -> Answer:
        """The next final answer (after any ``100 Continue``), within the socket timeout."""
        continued = False
        status, headers = self._head()
        if status == 100:
            continued = True
            status, headers = self._head()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed in the middle of the answer"
            self._buffer += chunk
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Answer(status, headers, body, continued)

    def interim(self) -> int:
        """The status of the next answer's head: 100 when the body is welcome."""
        status, _ = self._head()
        if status != 100:
            self._buffer = b""  # a final answer: not read further here
        return status

    def closed_by_server(self) -> bool:
        """True when the server closes the connection (and sends nothing more)."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return not self._buffer
            self._buffer += chunk

    def __enter__(self) -> RawUpload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def error_code(answer: Answer) -> str:
    assert answer.headers["content-type"] == "application/json"
    errors = json.loads(answer.body)["errors"]
    assert len(errors) == 1, errors
    code: str = errors[0]["code"]
    return code


@pytest_twisted.ensureDeferred
async def test_expect_continue_refused_before_the_body_is_sent(
    registry: InProcessRegistry,
) -> None:
    def exchange() -> Answer:
        with RawUpload(registry.url) as client:
            client.send_headers(
                "PATCH", "/v2/early/blobs/uploads/no-such-upload", 64 * MiB, "Expect: 100-continue"
            )
            # Not a byte of the body: the answer must come anyway, and no "100 Continue".
            answer = client.answer()
            assert client.closed_by_server()
            return answer

    answer = await deferToThread(exchange)
    assert not answer.continued
    assert answer.status == 404
    assert error_code(answer) == "BLOB_UPLOAD_UNKNOWN"
    assert answer.headers["connection"] == "close"
    assert answer.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize(
    ("method", "query", "extra", "status", "code"),
    [
        ("PATCH", "", ("Content-Range: 0-9",), 400, "SIZE_INVALID"),
        ("PUT", f"?digest={sha256(b'x')}", ("Content-Range: 0-9",), 400, "SIZE_INVALID"),
        ("PATCH", "", ("Content-Range: 5-9",), 416, "RANGE_INVALID"),
        ("PUT", "", (), 400, "DIGEST_INVALID"),
        ("PUT", "?digest=sha256:zz", (), 400, "DIGEST_INVALID"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_expect_continue_refused_before_an_unusable_body_is_sent(
    registry: InProcessRegistry,
    method: str,
    query: str,
    extra: tuple[str, ...],
    status: int,
    code: str,
) -> None:
    """A chunk whose Content-Length is not its Content-Range's length, and a final PUT without
    a digest that parses, are refused from their headers: no byte of the body is asked for."""
    location = await start_upload(registry.url, "early")
    path = location.removeprefix(registry.url) + query

    def exchange() -> Answer:
        with RawUpload(registry.url) as client:
            client.send_headers(method, path, 64 * MiB, "Expect: 100-continue", *extra)
            answer = client.answer()
            assert client.closed_by_server()
            return answer

    answer = await deferToThread(exchange)
    assert not answer.continued
    assert answer.status == status, answer.body
    assert error_code(answer) == code
    assert await upload_range(location) == "0-0"


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("PATCH", "/v2/UPPER/blobs/uploads/some-upload", "NAME_INVALID"),
        ("POST", "/v2/UPPER/blobs/uploads/", "NAME_INVALID"),
        ("PUT", "/v2/team/app/manifests/-bad", "TAG_INVALID"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_body_for_an_invalid_name_is_refused_by_the_name_not_its_size(
    registry: InProcessRegistry, method: str, path: str, code: str
) -> None:
    """A body larger than any limit, to a name or tag that cannot be: the route's 400, from
    the headers (no "100 Continue"), not a 413 for the body's size."""

    def exchange() -> Answer:
        with RawUpload(registry.url) as client:
            client.send_headers(method, path, 200 * MiB, "Expect: 100-continue")
            answer = client.answer()
            assert client.closed_by_server()
            return answer

    answer = await deferToThread(exchange)
    assert not answer.continued
    assert answer.status == 400, answer.body
    assert error_code(answer) == code


@pytest_twisted.ensureDeferred
async def test_a_large_body_to_an_invalid_name_is_not_read_through(
    registry: InProcessRegistry,
) -> None:
    """Past every limit, without "Expect": the name's 400 at once, then the connection is
    closed without reading the body (as a 413 is)."""

    def exchange() -> Answer:
        with RawUpload(registry.url) as client:
            client.send_headers("PATCH", "/v2/UPPER/blobs/uploads/x", 4 * 1024 * MiB)
            answer = client.answer()
            assert client.closed_by_server()
            return answer

    answer = await deferToThread(exchange)
    assert answer.status == 400
    assert error_code(answer) == "NAME_INVALID"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        # Without a body there is nothing to stop reading.
        ("PATCH", "/v2/early/blobs/uploads/no-such-upload", b"", 404, "BLOB_UPLOAD_UNKNOWN"),
        # A body the registry takes whole is read, then the route answers.
        ("PUT", "/v2/team/app/manifests/-bad", b"{}", 400, "TAG_INVALID"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_refusal_of_a_body_read_whole_keeps_its_connection(
    registry: InProcessRegistry, method: str, path: str, body: bytes, status: int, code: str
) -> None:
    """The refusal is an ordinary answer, and the request pipelined behind it on the same
    connection is answered too (registry:2 does the same)."""

    def exchange() -> tuple[Answer, Answer]:
        with RawUpload(registry.url) as client:
            client.send_headers(method, path, len(body))
            client.send(body + b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            return client.answer(), client.answer()

    refused, after = await deferToThread(exchange)
    assert refused.status == status
    assert error_code(refused) == code
    assert "connection" not in refused.headers
    assert after.status == 200
    assert json.loads(after.body) == {}


@pytest_twisted.ensureDeferred
async def test_expect_continue_welcomed_once_the_upload_is_open(
    registry: InProcessRegistry,
) -> None:
    data = os.urandom(3 * MiB)
    location = await start_upload(registry.url, "early")
    path = location.removeprefix(registry.url)

    def exchange() -> tuple[int, Answer]:
        with RawUpload(registry.url) as client:
            client.send_headers("PATCH", path, len(data), "Expect: 100-continue")
            interim = client.interim()
            client.send(data)
            return interim, client.answer()

    interim, answer = await deferToThread(exchange)
    assert interim == 100
    assert answer.status == 202, answer.body
    assert answer.headers["range"] == f"0-{len(data) - 1}"
    assert "connection" not in answer.headers  # the connection stays open for the next one
    response = await treq.put(f"{location}?digest={sha256(data)}")
    assert response.code == 201, await response.text()


def send_until_closed(client: RawUpload, limit: int) -> int:
    """Send zeros until the server closes the connection (or ``limit`` bytes went out)."""
    sent, chunk = 0, bytes(MiB)
    try:
        while sent < limit:
            client.send(chunk)
            sent += len(chunk)
    except OSError:  # reset, broken pipe: closed by the server
        pass
    return sent


def refused_then_flooded(client: RawUpload) -> tuple[Answer, int]:
    """A PATCH of an unknown upload announcing 10 GiB: its answer, then how much more went
    out before the registry closed the connection."""
    with client:
        client.send_headers("PATCH", "/v2/early/blobs/uploads/no-such-upload", 10 * 1024 * MiB)
        client.send(os.urandom(64 * 1024))
        answer = client.answer()
        return answer, send_until_closed(client, 512 * MiB)


@pytest_twisted.ensureDeferred
async def test_refused_while_the_body_is_coming(registry: InProcessRegistry) -> None:
    """
    Without ``Expect``, the answer comes while the client is still sending.  A client that
    sends on gets no second answer, and once 256 KiB more have been read the connection is
    closed (as registry:2's server does): a body announced as 10 GiB was read to its end,
    so that anyone, credentials or not, could keep the registry reading for as long as they
    sent.  (Kernel buffers take a few MiB more before the close is seen.)
    """

    answer, sent = await deferToThread(refused_then_flooded, RawUpload(registry.url))
    assert answer.status == 404
    assert error_code(answer) == "BLOB_UPLOAD_UNKNOWN"
    assert answer.headers["connection"] == "close"
    assert sent < 64 * MiB


@pytest_twisted.ensureDeferred
async def test_refused_over_tls_the_rest_is_not_read_either(
    start_registry: Starter, tls_listen: str, tmp_path: Path
) -> None:
    """The same bound over TLS: closing a TLS connection waits for the client's close_notify,
    and meanwhile every byte it sent was read and decrypted, a 10 GiB body to its end."""
    import ssl

    registry = await start_registry({}, tls_listen)
    context = ssl.create_default_context(cafile=str(tmp_path / "tls-ca.pem"))
    port = int(registry.url.rsplit(":", 1)[1])

    def connect() -> RawUpload:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        return RawUpload.over(context.wrap_socket(raw, server_hostname="127.0.0.1"))

    answer, sent = await deferToThread(lambda: refused_then_flooded(connect()))
    assert answer.status == 404
    assert error_code(answer) == "BLOB_UPLOAD_UNKNOWN"
    assert sent < 64 * MiB


@pytest_twisted.ensureDeferred
async def test_wrong_range_answered_at_once_and_upload_untouched(
    registry: InProcessRegistry,
) -> None:
    data = os.urandom(2 * MiB)
    location = await start_upload(registry.url, "early")
    path = location.removeprefix(registry.url)
    response = await treq.patch(location, data=data[:1000], headers={"Content-Range": "0-999"})
    assert response.code == 202, await response.text()

    def exchange() -> Answer:
        with RawUpload(registry.url) as client:
            client.send_headers("PATCH", path, 16 * MiB, "Content-Range: 5000-16782215")
            client.send(os.urandom(MiB))
            return client.answer()

    answer = await deferToThread(exchange)
    assert answer.status == 416
    assert error_code(answer) == "RANGE_INVALID"
    assert answer.headers["range"] == "0-999"
    assert answer.headers["location"].endswith(path.split("?")[0])
    # Nothing of the refused body reached the upload, which goes on from where it was.
    assert await upload_range(location) == "0-999"
    response = await treq.patch(
        location, data=data[1000:], headers={"Content-Range": f"1000-{len(data) - 1}"}
    )
    assert response.code == 202, await response.text()
    response = await treq.put(f"{location}?digest={sha256(data)}")
    assert response.code == 201, await response.text()


@pytest_twisted.ensureDeferred
async def test_push_without_credentials_refused_before_the_body(
    start_registry: Starter, tmp_path: Path
) -> None:
    secret = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"ci:{secret}\n")
    registry = await start_registry(
        {"auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "early-realm"}}
    )
    digest = "sha256:" + "0" * 64

    def exchange() -> Answer:
        with RawUpload(registry.url) as client:
            client.send_headers(
                "POST",
                f"/v2/early/blobs/uploads/?digest={digest}",
                256 * MiB,
                "Expect: 100-continue",
            )
            return client.answer()

    answer = await deferToThread(exchange)
    assert not answer.continued
    assert answer.status == 401
    assert error_code(answer) == "UNAUTHORIZED"
    assert 'realm="early-realm"' in answer.headers["www-authenticate"]


@pytest_twisted.ensureDeferred
async def test_full_disk_answered_while_the_body_is_coming(
    registry: InProcessRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The disk fills up 4 MiB into a 64 MiB chunk: 503 with the reason while the client is
    still sending, and the bytes stored before stay a resumable upload.
    """
    from registry.storage import filesystem

    writer_class = filesystem._FileWriter
    original_write = writer_class.write
    full_at = 4 * MiB

    def write(self: filesystem._FileWriter, data: bytes) -> object:
        if self.size + len(data) > full_at:
            raise filesystem.StorageError("writing upload data: No space left on device")
        return original_write(self, data)

    monkeypatch.setattr(writer_class, "write", write)
    data = os.urandom(8 * MiB)
    location = await start_upload(registry.url, "early")
    path = location.removeprefix(registry.url)

    def exchange() -> Answer:
        with RawUpload(registry.url) as client:
            client.send_headers("PATCH", path, 64 * MiB)
            client.send(data)
            return client.answer()  # 56 MiB still to come

    answer = await deferToThread(exchange)
    assert answer.status == 503
    assert error_code(answer) == "UNAVAILABLE"
    assert "No space left on device" in json.loads(answer.body)["errors"][0]["detail"]["reason"]

    monkeypatch.setattr(writer_class, "write", original_write)  # space freed
    stored = await upload_range(location)
    assert stored is not None
    size = int(stored.split("-")[1]) + 1
    assert 0 < size <= full_at
    for _ in range(100):  # the server closes the upload once it sees the client leave
        response = await treq.patch(
            location, data=data[size:], headers={"Content-Range": f"{size}-{len(data) - 1}"}
        )
        text = await response.text()
        if "another request is writing" not in text:
            break
        await sleep(0.05)
    assert response.code == 202, text
    response = await treq.put(f"{location}?digest={sha256(data)}")
    assert response.code == 201, await response.text()


@pytest_twisted.ensureDeferred
async def test_no_late_continue_once_the_client_sends_anyway(
    registry: InProcessRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A client that stops waiting for ``100 Continue`` (curl: after 1 s) and sends the body must
    not get a ``100 Continue`` in the middle of it, only the final answer.
    """
    from registry.http.upload_sink import UploadSink
    from registry.storage.uploads import UploadStore

    original_open = UploadStore.open
    original_feed = UploadSink.feed
    received: list[int] = []

    def counting_feed(self: UploadSink[Any], data: bytes) -> object:
        received.append(len(data))
        return original_feed(self, data)

    async def slow_open(self: UploadStore, *args: object, **kwargs: object) -> object:
        # Storage that takes its time (a slow S3, say): the upload opens only once body
        # bytes have arrived, as they do when a client stops waiting for 100 Continue.
        for _ in range(1000):
            if received:
                break
            await sleep(0.01)
        return await original_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(UploadSink, "feed", counting_feed)
    monkeypatch.setattr(UploadStore, "open", slow_open)
    data = os.urandom(2 * MiB)
    location = await start_upload(registry.url, "early")
    path = location.removeprefix(registry.url)

    def exchange() -> Answer:
        with RawUpload(registry.url) as client:
            client.send_headers("PATCH", path, len(data), "Expect: 100-continue")
            client.send(data)  # at once, without waiting
            return client.answer()

    answer = await deferToThread(exchange)
    assert not answer.continued
    assert answer.status == 202, answer.body
    assert answer.headers["range"] == f"0-{len(data) - 1}"


def announce_only(url: str, head: bytes) -> bytes:
    """Send only a request's head, then read everything until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest_twisted.ensureDeferred
async def test_oversized_manifest_is_refused_from_its_length(registry: InProcessRegistry) -> None:
    """
    A manifest PUT announcing more than max_manifest_size gets 413 before any of its body
    is sent, and the connection closes: the body is never waited for.
    """
    head = (
        b"PUT /v2/big/manifests/v1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        b"Content-Length: 10737418240\r\n\r\n"
    )
    status, headers, body = split_response(await deferToThread(announce_only, registry.url, head))
    assert status == b"HTTP/1.1 413 Content Too Large"
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "errors": [
            {
                "code": "MANIFEST_INVALID",
                "message": "manifest too big: the limit is 4194304 bytes",
                "detail": {"limit": 4194304},
            }
        ]
    }
    assert headers["content-length"] == str(len(body))


@pytest_twisted.ensureDeferred
async def test_oversized_other_body_is_refused_from_its_length(
    registry: InProcessRegistry,
) -> None:
    """Not an upload, not a manifest: over max_body_size (1 MiB) is 413 at once."""
    head = b"POST /v2/big/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n"
    status, headers, body = split_response(await deferToThread(announce_only, registry.url, head))
    assert status == b"HTTP/1.1 413 Content Too Large"
    assert headers["connection"] == "close"
    (entry,) = json.loads(body)["errors"]
    assert entry["code"] == "SIZE_INVALID"
    assert entry["message"] == "request body too large: the limit is 1048576 bytes"
    assert entry["detail"] == {"reason": "request body too large", "limit": 1048576}


@pytest.mark.parametrize("http2", [False, True])
@pytest_twisted.ensureDeferred
async def test_oversized_manifest_over_tls_and_http2(
    start_registry: Starter, tls_listen: str, tmp_path: Path, http2: bool
) -> None:
    """The same 413 over TLS, and over HTTP/2 (which has no early answers: it comes after)."""
    from tests.e2e.tools import require, run

    registry = await start_registry({"http": {"http2": str(http2).lower()}}, tls_listen)
    body = tmp_path / "manifest.json"
    body.write_bytes(b" " * (5 * MiB))
    answer = tmp_path / "answer.json"
    written = await run(
        require("curl"), "-sS", "--http2" if http2 else "--http1.1", "--cacert",
        str(tmp_path / "tls-ca.pem"), "-X", "PUT", "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json", "--data-binary", f"@{body}",
        "-o", str(answer), "-w", "%{http_version} %{http_code}",
        f"{registry.url}/v2/big/manifests/v1",
    )  # fmt: skip
    assert written == ("2 413" if http2 else "1.1 413")
    (entry,) = json.loads(answer.read_bytes())["errors"]
    assert (entry["code"], entry["detail"]) == ("MANIFEST_INVALID", {"limit": 4 * MiB})


@pytest_twisted.ensureDeferred
async def test_a_refused_upload_body_is_one_error_line(
    registry: InProcessRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No room for the body (the reservation fails): a 503 with the reason, one error line and
    one access line for the request, not an error line per layer."""
    from twisted.logger import LogLevel, globalLogPublisher

    from registry.storage import filesystem

    async def reserve(self: filesystem._FileWriter, length: int) -> None:
        raise filesystem.StorageError(f"reserving {length} bytes: No space left on device")

    monkeypatch.setattr(filesystem._FileWriter, "reserve", reserve)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        data = os.urandom(MiB)

        def exchange() -> Answer:
            with RawUpload(registry.url) as client:
                client.send_headers(
                    "POST", f"/v2/refused/a/blobs/uploads/?digest={sha256(data)}", len(data)
                )
                client.send(data)
                return client.answer()

        answer = await deferToThread(exchange)
        for _ in range(100):  # bounded: the route runs once the body is in
            if any(e.get("log_namespace") == "registry.app" for e in events) or any(
                "storage failure" in str(e.get("log_format")) for e in events
            ):
                break
            await sleep(0.02)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert answer.status == 503
    assert "No space left on device" in json.loads(answer.body)["errors"][0]["detail"]["reason"]
    errors = [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    assert [e.get("log_format") for e in errors] == [
        "upload body refused on {method} {uri}: {reason}"
    ], errors
    assert [e["status"] for e in events if e.get("access")] == [503]
