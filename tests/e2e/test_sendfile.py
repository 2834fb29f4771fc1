"""
Blob GETs through ``os.sendfile`` (registry/http/sendfile.py), over real sockets.

Responses are read with a raw HTTP/1.1 client so that several requests share one connection
(the connection must stay usable after a body the kernel sent), and the access log's
``sendfile`` field tells which path served each body.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher

from registry.http import sendfile
from tests.e2e.client import push_blob
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry, sleep

Response = tuple[int, dict[str, str], bytes]
SENDFILE_ON = {"http": {"sendfile": "true"}}


@pytest_twisted.async_yield_fixture
async def registry(start_registry: Starter) -> AsyncIterator[InProcessRegistry]:
    """A registry that sends with sendfile to every peer (the tests' are all on loopback)."""
    yield await start_registry(SENDFILE_ON)


@pytest.fixture
def sendfile_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of the thread each ``os.sendfile`` call ran in (the real call is made)."""
    threads: list[str] = []
    real = os.sendfile

    def recording(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        threads.append(threading.current_thread().name)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", recording)
    yield threads


@pytest.fixture
def warnings_logged() -> Iterator[list[dict[str, Any]]]:
    """Every event logged at level warn or above while the test runs."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def _connect(url: str, ca: Path | None = None) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        context.check_hostname = False
        context.set_alpn_protocols(["http/1.1"])
        sock = context.wrap_socket(sock, server_hostname=parts.hostname)
    return sock


def _exchange(
    url: str, requests: list[tuple[str, dict[str, str]]], ca: Path | None = None
) -> list[Response]:
    """Send each GET on one connection, after the previous answer was read whole."""
    answers = []
    with _connect(url, ca) as sock, sock.makefile("rb") as stream:
        for path, headers in requests:
            lines = [f"GET {path} HTTP/1.1", "Host: registry"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            status_line = stream.readline().decode("latin-1")
            status = int(status_line.split()[1])
            fields = {}
            while (line := stream.readline().decode("latin-1").rstrip("\r\n")) != "":
                name, value = line.split(":", 1)
                fields[name.strip().lower()] = value.strip()
            assert "transfer-encoding" not in fields, fields
            body = stream.read(int(fields["content-length"]))
            answers.append((status, fields, body))
    return answers


async def exchange(
    url: str, requests: list[tuple[str, dict[str, str]]], ca: Path | None = None
) -> list[Response]:
    answers: list[Response] = await deferToThread(_exchange, url, requests, ca)
    return answers


def _pattern(size: int) -> bytes:
    """Different bytes at every offset (a shifted or repeated block shows up)."""
    block = os.urandom(min(size, 1024 * 1024))
    return (block * (size // max(len(block), 1) + 1))[:size] if size else b""


async def pull_whole_and_from(url: str, data: bytes, offset: int) -> str:
    """Push ``data``, then GET it whole and from ``offset`` on one connection, checking both
    answers' status and bytes; returns the digest."""
    digest = await push_blob(url, "team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    answers = await exchange(url, [(path, {}), (path, {"Range": f"bytes={offset}-"})])
    assert [(s, b == data[o:]) for (s, _, b), o in zip(answers, (0, offset), strict=True)] == [
        (200, True),
        (206, True),
    ]
    return digest


def sendfile_flags(events: list[dict[str, Any]], digest: str) -> list[bool]:
    return [bool(e["sendfile"]) for e in events if e["method"] == "GET" and digest in e["path"]]


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_this_platform_can_sendfile() -> None:
    """The sendfile path is on here (what it needs from Twisted: tests/http/test_twisted_internals.py)."""
    assert sendfile.platform_problems() == ()


@pytest.mark.parametrize("size", [0, 1, 64 * 1024 + 1, 20 * 1024 * 1024])
@pytest_twisted.ensureDeferred
async def test_full_and_range_gets_on_one_connection(
    registry: InProcessRegistry, access_events: list[dict[str, Any]], size: int
) -> None:
    data = _pattern(size)
    digest = await push_blob(registry.url, "team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    requests = [(path, {})]
    first, last = size // 3, max(size // 3, size - 2)
    if size:
        requests.append((path, {"Range": f"bytes={first}-{last}"}))
        requests.append((path, {"Range": "bytes=-1"}))
    requests.append((path, {}))  # the connection still works after the ranges

    answers = await exchange(registry.url, requests)

    assert [status for status, _, _ in answers] == [200] + [206] * (len(requests) - 2) + [200]
    for _, headers, body in (answers[0], answers[-1]):
        assert body == data
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        assert headers["docker-content-digest"] == digest
    if size:
        _, headers, body = answers[1]
        assert body == data[first : last + 1]
        assert hashlib.sha256(body).digest() == hashlib.sha256(data[first : last + 1]).digest()
        assert headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert answers[2][2] == data[-1:]
        assert answers[2][1]["content-range"] == f"bytes {size - 1}-{size - 1}/{size}"
    await wait_for(lambda: len(sendfile_flags(access_events, digest)) == len(requests), "logs")
    # Every body went out through sendfile; an empty blob has no body to send.
    assert sendfile_flags(access_events, digest) == [size > 0] * len(requests)
    sent = [e["bytes"] for e in access_events if e["method"] == "GET" and digest in e["path"]]
    assert sent == [len(body) for _, _, body in answers]


@pytest_twisted.ensureDeferred
async def test_tls_keeps_the_producer_path(
    start_registry: Starter, tls_listen: str, tmp_path: Path, access_events: list[dict[str, Any]]
) -> None:
    registry = await start_registry(SENDFILE_ON, listen=tls_listen)
    ca = tmp_path / "tls-ca.pem"
    data = _pattern(3 * 1024 * 1024 + 5)
    digest = hashlib.sha256(data).hexdigest()
    path = f"/v2/team/app/blobs/sha256:{digest}"
    await deferToThread(_push_tls, registry.url, ca, data, "sha256:" + digest)

    answers = await exchange(registry.url, [(path, {}), (path, {"Range": "bytes=7-"})], ca)

    assert [(s, b == data[o:]) for (s, _, b), o in zip(answers, (0, 7), strict=True)] == [
        (200, True),
        (206, True),
    ]
    await wait_for(lambda: len(sendfile_flags(access_events, digest)) == 2, "logs")
    assert sendfile_flags(access_events, digest) == [False, False]


def _push_tls(url: str, ca: Path, data: bytes, digest: str) -> None:
    with _connect(url, ca) as sock, sock.makefile("rb") as stream:
        head = (
            f"POST /v2/team/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: registry\r\n"
            f"Content-Length: {len(data)}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        sock.sendall(head.encode() + data)
        assert b" 201 " in stream.readline()


@pytest_twisted.ensureDeferred
async def test_switched_off(start_registry: Starter, access_events: list[dict[str, Any]]) -> None:
    registry = await start_registry({"http": {"sendfile": "false"}})
    data = _pattern(200_000)
    digest = await push_blob(registry.url, "team/app", data)
    path = f"/v2/team/app/blobs/{digest}"

    answers = await exchange(registry.url, [(path, {}), (path, {"Range": "bytes=1-2"})])

    assert [(s, b) for s, _, b in answers] == [(200, data), (206, data[1:3])]
    await wait_for(lambda: len(sendfile_flags(access_events, digest)) == 2, "logs")
    assert sendfile_flags(access_events, digest) == [False, False]


@pytest_twisted.ensureDeferred
async def test_by_default_not_to_a_peer_on_loopback(
    start_registry: Starter, access_events: list[dict[str, Any]]
) -> None:
    """``sendfile = auto`` (the default) leaves a loopback peer to the producer path, and the
    bytes are the same."""
    registry = await start_registry()
    assert registry.options.config.http.sendfile == "auto"
    digest = await pull_whole_and_from(registry.url, _pattern(3 * 1024 * 1024 + 7), 5)
    await wait_for(lambda: len(sendfile_flags(access_events, digest)) == 2, "logs")
    assert sendfile_flags(access_events, digest) == [False, False]


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        (IPv4Address("TCP", "127.0.0.1", 5000), True),
        (IPv4Address("TCP", "127.8.9.10", 5000), True),
        (IPv6Address("TCP", "::1", 5000), True),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 5000), True),
        (IPv4Address("TCP", "10.1.2.3", 5000), False),
        (IPv4Address("TCP", "192.168.1.20", 5000), False),
        (IPv6Address("TCP", "fe80::1%eth0", 5000), False),
        (IPv6Address("TCP", "2001:db8::1", 5000), False),
        (UNIXAddress(b"/run/registry.sock"), False),
    ],
)
def test_which_peers_are_on_loopback(peer: object, loopback: bool) -> None:
    """Under ``auto``, sendfile serves every peer this does not call loopback.  (Only
    loopback addresses are used on the wire in these tests: the other side of the rule is
    checked here.)"""
    assert sendfile.on_loopback(peer) is loopback


def _open_files(path: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            continue
    return count


def _read_some_and_leave(url: str, path: str, reset: bool) -> bytes:
    with _connect(url) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: registry\r\n\r\n".encode())
        received = b""
        while len(received) < 256 * 1024:
            received += sock.recv(65536)
        if reset:  # a reset instead of a FIN: the server's next send fails at once
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    return received


@pytest.mark.parametrize("reset", [False, True])
@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_body(
    registry: InProcessRegistry,
    access_events: list[dict[str, Any]],
    warnings_logged: list[dict[str, Any]],
    reset: bool,
) -> None:
    """The file is closed, nothing is logged as a failure, and the next GET is whole."""
    data = _pattern(64 * 1024 * 1024)
    digest = await push_blob(registry.url, "team/app", data)
    path = f"/v2/team/app/blobs/{digest}"
    data_file = os.path.join(
        registry.options.config.storage.rootdirectory,  # type: ignore[union-attr]
        "docker/registry/v2/blobs/sha256",
        digest[7:9],
        digest[7:],
        "data",
    )
    assert os.path.exists(data_file)

    received = await deferToThread(_read_some_and_leave, registry.url, path, reset)

    assert received.startswith(b"HTTP/1.1 200 ")
    await wait_for(lambda: _open_files(data_file) == 0, "the blob file to be closed")
    [(status, _, body)] = await exchange(registry.url, [(path, {})])
    assert (status, body == data) == (200, True)
    await wait_for(lambda: sendfile_flags(access_events, digest)[-1:] == [True], "logs")
    assert [e.get("log_format") for e in warnings_logged] == []


@pytest_twisted.ensureDeferred
async def test_sendfile_runs_in_the_storage_threads(
    registry: InProcessRegistry, sendfile_threads: list[str]
) -> None:
    """
    Never on the reactor thread: a body that is not in the page cache is read from disk
    inside ``sendfile``, which would hold every other connection up meanwhile.
    """
    await pull_whole_and_from(registry.url, _pattern(16 * 1024 * 1024 + 1), 5)
    assert sendfile_threads != []
    assert threading.current_thread().name not in sendfile_threads  # the reactor's
    assert {name.rsplit("-", 1)[0] for name in sendfile_threads} == {"PoolThread-registry-io"}


def _pipelined(url: str, paths: list[str]) -> list[Response]:
    """Send every GET at once, then read the answers in order."""
    with _connect(url) as sock, sock.makefile("rb") as stream:
        sock.sendall(
            b"".join(f"GET {p} HTTP/1.1\r\nHost: registry\r\n\r\n".encode() for p in paths)
        )
        answers = []
        for _ in paths:
            status = int(stream.readline().split()[1])
            fields = {}
            while (line := stream.readline().decode("latin-1").rstrip("\r\n")) != "":
                name, value = line.split(":", 1)
                fields[name.strip().lower()] = value.strip()
            answers.append((status, fields, stream.read(int(fields["content-length"]))))
    return answers


@pytest_twisted.ensureDeferred
async def test_pipelined_requests(
    registry: InProcessRegistry, access_events: list[dict[str, Any]]
) -> None:
    """Requests that arrived during a sendfile body are answered after it, in order."""
    big, small = _pattern(8 * 1024 * 1024 + 3), _pattern(100)
    big_digest = await push_blob(registry.url, "team/app", big)
    small_digest = await push_blob(registry.url, "team/app", small)
    paths = [f"/v2/team/app/blobs/{d}" for d in (big_digest, small_digest, big_digest)]

    answers = await deferToThread(_pipelined, registry.url, paths)

    assert [(s, b) for s, _, b in answers] == [(200, big), (200, small), (200, big)]
    await wait_for(lambda: len(sendfile_flags(access_events, big_digest)) == 2, "logs")
    assert sendfile_flags(access_events, big_digest) == [True, True]


def _http10(url: str, path: str) -> bytes:
    """An HTTP/1.0 GET: the server closes the connection after the body."""
    with _connect(url) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        received = []
        for _ in range(100_000):
            data = sock.recv(1024 * 1024)
            if not data:
                break
            received.append(data)
    return b"".join(received)


@pytest_twisted.ensureDeferred
async def test_http10_connection_closes_after_the_body(
    registry: InProcessRegistry, access_events: list[dict[str, Any]]
) -> None:
    data = _pattern(3 * 1024 * 1024)
    digest = await push_blob(registry.url, "team/app", data)

    answer = await deferToThread(_http10, registry.url, f"/v2/team/app/blobs/{digest}")

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    assert body == data
    await wait_for(lambda: sendfile_flags(access_events, digest) == [True], "logs")
