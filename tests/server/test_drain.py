"""
SIGTERM drains: the registry stops accepting, lets a download in flight finish (bytes and
digest intact), closes the connection, and exits 0; a download still running past
``[http] draintimeout`` is cut, and the process exits all the same.

The slow reader does not sleep: it reads a first part, then blocks until the test lets it go
on, so the download is certainly in flight (paused by back-pressure) when SIGTERM arrives.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from registry.server.drain import IDLE_GRACE
from tests.e2e.harness import write_config
from tests.server.proc import Child, start_registry

BLOB_SIZE = 64 * 1024 * 1024
FIRST_PART = 1024 * 1024
NAME = "drain/app"


def push_blob(port: int, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", f"/v2/{NAME}/blobs/uploads/")
    response = connection.getresponse()
    response.read()
    assert response.status == 202, response.status
    location = response.getheader("Location")
    assert location
    separator = "&" if "?" in location else "?"
    connection.request(
        "PUT",
        f"{location}{separator}digest={digest}",
        body=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    response = connection.getresponse()
    response.read()
    assert response.status == 201, response.status
    connection.close()
    return digest


class SlowDownload:
    """A blob GET over a raw socket that reads ``FIRST_PART`` bytes of body, then waits."""

    def __init__(self, port: int, digest: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        # A small receive window: the server's writes back up, and its producer pauses.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        request = f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        self.sock.sendall(request.encode())
        self.go_on = threading.Event()
        self.started = threading.Event()
        self.body = bytearray()
        self.length = -1
        self.status = 0
        self.closed_after_body = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._read()
        except OSError as exc:
            self.error = exc
        finally:
            self.started.set()

    def _read(self) -> None:
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the headers")
            buffer += chunk
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:])
        self.length = int({k.lower(): v for k, v in headers.items()}["content-length"])
        self.body += rest
        while len(self.body) < FIRST_PART:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            self.body += chunk
        self.started.set()
        self.go_on.wait(timeout=300)
        while len(self.body) < self.length:
            chunk = self.sock.recv(1024 * 1024)
            if not chunk:
                return
            self.body += chunk
        self.closed_after_body = self.sock.recv(1) == b""

    def finish(self) -> None:
        self.go_on.set()
        self.thread.join(timeout=300)
        self.sock.close()


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # A handshake that met the listening socket as it closed: not refused yet (the
        # caller asks again).
        return False


def wait_refused(port: int, child: Child, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if refuses_connections(port):
            return
        time.sleep(0.05)  # polling for a condition, bounded by the deadline
    raise AssertionError(f"still accepting after SIGTERM: {''.join(child.output)[-2000:]}")


@pytest.fixture
def blob() -> bytes:
    return os.urandom(BLOB_SIZE)


def started(
    tmp_path: Path, draintimeout: str, more: dict[str, str] | None = None
) -> Iterator[Child]:
    http = {"draintimeout": draintimeout, **(more or {})}
    config = write_config(tmp_path / "r.cfg", {"http": http})
    child = start_registry(
        tmp_path,
        "--config",
        str(config),
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--storage",
        str(tmp_path / "data"),
    )
    try:
        yield child
    finally:
        child.stop()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Child]:
    yield from started(tmp_path, "60s")


@pytest.fixture
def short_drain(tmp_path: Path) -> Iterator[Child]:
    yield from started(tmp_path, "2s")


def test_sigterm_lets_a_download_in_flight_finish(registry: Child, blob: bytes) -> None:
    port = registry.wait_listening()
    digest = push_blob(port, blob)
    download = SlowDownload(port, digest)
    assert download.started.wait(timeout=60) and download.error is None
    assert download.status == 200 and download.length == BLOB_SIZE

    registry.process.send_signal(signal.SIGTERM)
    wait_refused(port, registry)
    registry.process.send_signal(signal.SIGTERM)  # an impatient second one changes nothing
    registry.wait_for(re.compile("SIGTERM again: still draining"))
    assert registry.process.poll() is None, "exited with a download in flight"

    download.finish()
    assert download.error is None
    assert len(download.body) == BLOB_SIZE
    assert "sha256:" + hashlib.sha256(download.body).hexdigest() == digest
    assert download.closed_after_body, "the drained connection was not closed"
    assert registry.process.wait(timeout=60) == 0
    assert registry.stderr() == ""
    log = "".join(registry.output)
    assert "Traceback" not in log
    assert "draining 1 request(s)" in log


def test_a_download_past_draintimeout_is_cut(short_drain: Child, blob: bytes) -> None:
    port = short_drain.wait_listening()
    digest = push_blob(port, blob)
    download = SlowDownload(port, digest)
    assert download.started.wait(timeout=60) and download.error is None

    short_drain.process.send_signal(signal.SIGTERM)
    # The reader never goes on: the process must exit anyway, soon after the 2 s.
    assert short_drain.process.wait(timeout=60) == 0
    download.finish()
    assert len(download.body) < BLOB_SIZE
    log = "".join(short_drain.output)
    assert "draintimeout reached: cutting 1 connection(s)" in log
    assert "Traceback" not in log


def test_idle_connection_does_not_hold_the_stop(registry: Child) -> None:
    port = registry.wait_listening()
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    idle.request("GET", "/v2/")
    response = idle.getresponse()
    assert response.status == 200 and response.read() == b"{}"
    registry.process.send_signal(signal.SIGTERM)
    assert registry.process.wait(timeout=30) == 0
    idle.close()


# The access line of a download cut short: the status it was sent with, and a mark.
CUT_ACCESS = re.compile(
    r"\[registry\.http\.request#info\] access method=GET path=/v2/drain/app/blobs/\S+ "
    r"status=200 bytes=(?P<bytes>\d+) complete=false duration_ms="
)


@pytest.fixture
def single(tmp_path: Path) -> Iterator[Child]:
    """One process (``[http] workers = 1``) that would drain for 300 s."""
    yield from started(tmp_path, "300s", {"workers": "1"})


@pytest.mark.parametrize(
    ("signals", "status"),
    [
        (("SIGINT", "SIGINT"), 130),
        (("SIGTERM", "SIGINT"), 130),
        (("SIGTERM", "SIGTERM", "SIGQUIT"), 131),
        (("SIGQUIT",), 131),
    ],
)
def test_one_process_stops_at_once_on_a_second_sigint_or_a_sigquit(
    single: Child, blob: bytes, signals: tuple[str, ...], status: int
) -> None:
    """
    ``[http] workers = 1`` answers Ctrl-C as the supervisor of workers does: a second SIGINT
    during the drain (or a SIGQUIT) cuts the download in flight, says so in the supervisor's
    words, and exits 128 + the signal's number.  Twisted's own handler used to stop the
    reactor a second time (``ReactorNotRunning``, a critical traceback) and go on draining.
    """
    port = single.wait_listening()
    digest = push_blob(port, blob)
    download = SlowDownload(port, digest)
    assert download.started.wait(timeout=60) and download.error is None
    first, *rest = signals
    single.process.send_signal(getattr(signal, first))
    if first != "SIGQUIT":
        single.wait_for(re.compile(rf"#info\] {first}: no longer accepting; draining requests"))
        wait_refused(port, single)
    for name in rest[:-1]:
        single.process.send_signal(getattr(signal, name))
        single.wait_for(re.compile(rf"#info\] {name} again: still draining \(at most 300 s\)"))
    assert single.process.poll() is None, "stopped with a download in flight"
    if rest:
        single.process.send_signal(getattr(signal, rest[-1]))
    again = " again" if rest and rest[-1] == "SIGINT" else ""
    single.wait_for(
        re.compile(
            rf"^\S+ \[registry\.server\.service#warn\] {signals[-1]}{again}: stopping now, "
            rf"cutting every connection \(exit status {status}\)$"
        )
    )
    assert single.process.wait(timeout=60) == status
    download.finish()
    assert len(download.body) < BLOB_SIZE
    log = "".join(single.output)
    assert "told to stop at once: cutting 1 connection(s) with 1 request(s)" in log
    if first == "SIGQUIT":  # nothing was drained: no line says so
        assert "request(s) on 1 connection(s), for up to" not in log
    assert "Traceback" not in log and "#critical]" not in log
    assert "ReactorNotRunning" not in log
    assert single.stderr() == ""


def test_one_process_drains_on_sigint_and_exits_0(single: Child, blob: bytes) -> None:
    """A single Ctrl-C is a drain, as SIGTERM (and as with workers): the download in flight
    ends whole, and the exit status is 0, not death by SIGINT."""
    port = single.wait_listening()
    digest = push_blob(port, blob)
    download = SlowDownload(port, digest)
    assert download.started.wait(timeout=60) and download.error is None
    single.process.send_signal(signal.SIGINT)
    single.wait_for(re.compile(r"#info\] SIGINT: no longer accepting; draining requests"))
    wait_refused(port, single)
    download.finish()
    assert len(download.body) == BLOB_SIZE
    assert single.process.wait(timeout=60) == 0
    assert single.stderr() == ""


def _blob_gets(port: int) -> dict[str, float]:
    """status -> blob GETs counted, from the registry's own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        text = response.read().decode()
        assert response.status == 200, text
    finally:
        connection.close()
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "txregistry_http_requests_total"
        and sample.labels.get("route") == "blob"
        and sample.labels.get("method") == "GET"
    }


@pytest.mark.parametrize("sendfile", ["false", "true"])
def test_a_download_its_client_left_is_logged_incomplete(
    tmp_path: Path, blob: bytes, sendfile: str
) -> None:
    """
    A client that goes away mid-body: the access line keeps the status it was sent (200, as
    nginx logs it) with the bytes sent and ``complete=false``, and the metrics count it as
    499, as the access line says.  It used to read as a complete 200 (the route finished the
    request with what it had written when the transport stopped its producer), counted 200;
    through sendfile it had no access line at all.  A whole download has no mark.
    """
    running = started(tmp_path, "60s", {"workers": "1", "sendfile": sendfile})
    child = next(running)  # stopped by `running`'s end (below), or its collection
    try:
        port = child.wait_listening()
        digest = push_blob(port, blob)
        whole = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        whole.request("GET", f"/v2/{NAME}/blobs/{digest}")
        response = whole.getresponse()
        assert response.status == 200 and len(response.read()) == BLOB_SIZE
        whole.close()
        child.wait_for(re.compile(rf"status=200 bytes={BLOB_SIZE} duration_ms="))

        download = SlowDownload(port, digest)
        assert download.started.wait(timeout=60) and download.error is None
        download.sock.close()  # the client is gone, with most of the body unsent
        cut = child.wait_for(CUT_ACCESS)
        assert 0 < int(cut["bytes"]) < BLOB_SIZE
        assert _blob_gets(port) == {"200": 1.0, "499": 1.0}
        log = "".join(child.output)
        assert log.count("complete=false") == 1
        assert "Traceback" not in log
    finally:
        running.close()


@pytest.fixture
def short_single(tmp_path: Path) -> Iterator[Child]:
    yield from started(tmp_path, "2s", {"workers": "1"})


def test_a_download_the_drain_cut_is_logged_incomplete(short_single: Child, blob: bytes) -> None:
    """A download still running at ``[http] draintimeout`` (one process) is cut: its access
    line says ``complete=false`` rather than a plain 200 (or, as often, no line at all)."""
    short_drain = short_single
    port = short_drain.wait_listening()
    digest = push_blob(port, blob)
    download = SlowDownload(port, digest)
    assert download.started.wait(timeout=60) and download.error is None
    short_drain.process.send_signal(signal.SIGTERM)
    assert short_drain.process.wait(timeout=60) == 0
    download.finish()
    log = "".join(short_drain.output)
    assert "draintimeout reached: cutting 1 connection(s)" in log
    cut = CUT_ACCESS.search(log)
    assert cut is not None, log[-3000:]
    assert int(cut["bytes"]) < BLOB_SIZE


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str]]:
    buffer = b""
    for _ in range(1000):  # bounded: a head is a few hundred bytes
        if b"\r\n\r\n" in buffer:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    head = buffer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), {k.lower(): v for k, v in headers.items()}


def test_a_request_answered_while_draining_says_the_connection_closes(
    registry: Child, tmp_path: Path
) -> None:
    """
    A PATCH whose body is still arriving when SIGTERM (or a rolling restart's SIGHUP) comes
    is answered with ``Connection: close``, as Go's server does while it shuts down: the
    worker closes the connection after it, and a keep-alive client that reused it for its
    next request (docker's PUT after the last PATCH) would get no answer, which Go's client
    does not retry for a POST or PATCH.
    """
    port = registry.wait_listening()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", f"/v2/{NAME}/blobs/uploads/")
    response = connection.getresponse()
    response.read()
    location = response.getheader("Location")
    assert response.status == 202 and location
    connection.close()
    data = os.urandom(2 * 1024 * 1024)
    upload = tmp_path / "data/docker/registry/v2/repositories" / NAME / "_uploads"
    data_file = upload / location.rsplit("/", 1)[1] / "data"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(data)}\r\nContent-Range: 0-{len(data) - 1}\r\n\r\n".encode()
            + data[: len(data) // 2]
        )
        for _ in range(600):  # bounded: 30 s for the first half to be stored
            if data_file.exists() and data_file.stat().st_size >= len(data) // 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the first half of the body never reached the upload")
        registry.process.send_signal(signal.SIGTERM)
        wait_refused(port, registry)
        sock.sendall(data[len(data) // 2 :])
        status, headers = _read_head(sock)
        assert status == 202, headers
        assert headers.get("connection") == "close", headers
        assert headers["range"] == f"0-{len(data) - 1}"
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed after the answer
    assert registry.process.wait(timeout=60) == 0


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length: status, headers, body."""
    buffer = b""
    for _ in range(1000):  # bounded: a head is a few hundred bytes
        if b"\r\n\r\n" in buffer:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the connection closed after {buffer!r}")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    length = int(headers["content-length"])
    for _ in range(1000):
        if len(body) >= length:
            break
        body += sock.recv(length - len(body))
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Child]:
    yield from started(tmp_path, "60s", {"workers": "2"})


def _worker_serving(supervisor: int, client: socket.socket) -> psutil.Process:
    """The worker process holding the other end of ``client``'s connection."""
    port = client.getsockname()[1]
    for worker in psutil.Process(supervisor).children():
        if any(c.raddr and c.raddr.port == port for c in worker.net_connections("tcp")):
            return worker
    raise AssertionError("no worker holds the connection")


@pytest.mark.parametrize("whole_instance", [False, True])
def test_a_request_on_a_connection_idle_when_a_worker_drains(
    two_workers: Child, whole_instance: bool
) -> None:
    """
    A keep-alive client between two requests when its worker is replaced (a rolling
    restart's SIGHUP, or a SIGTERM to that worker alone): its next request, sent as the drain
    begins, is answered with ``Connection: close``; the connection used to be closed at once
    under it, and the client got no answer (28 of 40,000 requests of 8 keep-alive clients
    over two SIGHUPs).  When the whole instance stops, an idle connection is closed at once,
    as before: nothing would serve the client's next connection anyway.
    """
    port = two_workers.wait_listening()
    request = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        status, headers, body = _answer(sock)
        assert (status, body) == (200, b"{}") and "connection" not in headers, headers
        worker = _worker_serving(two_workers.process.pid, sock)
        if whole_instance:
            two_workers.process.send_signal(signal.SIGTERM)
        else:
            worker.send_signal(signal.SIGTERM)
        two_workers.wait_for(re.compile(r"SIGTERM: no longer accepting"))
        time.sleep(0.2)  # (the drain begins right after that line)
        if whole_instance:
            sock.settimeout(10)
            assert sock.recv(1) == b""  # closed at once, with nothing to answer
            assert two_workers.process.wait(timeout=60) == 0
            return
        sock.sendall(request)
        status, headers, body = _answer(sock)
        assert (status, body, headers.get("connection")) == (200, b"{}", "close"), headers
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed after the answer
    worker.wait(timeout=60)  # (not our child: no status to read)
    two_workers.wait_for(re.compile(r"worker \d \(pid \d+\) serving"))


def test_a_request_head_arriving_across_the_grace_is_answered(two_workers: Child) -> None:
    """A request whose head had begun to arrive when the idle grace ran out was cut without an
    answer: bytes on the connection renew the grace (within the drain's deadline)."""
    port = two_workers.wait_listening()
    request = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        status, headers, body = _answer(sock)
        assert (status, body) == (200, b"{}"), headers
        worker = _worker_serving(two_workers.process.pid, sock)
        worker.send_signal(signal.SIGTERM)
        two_workers.wait_for(re.compile(r"SIGTERM: no longer accepting"))
        time.sleep(0.5)
        sock.sendall(request[:10])  # the head begins within the grace...
        time.sleep(IDLE_GRACE + 1.0)  # ...and ends after it
        sock.sendall(request[10:])
        status, headers, body = _answer(sock)
        assert (status, body, headers.get("connection")) == (200, b"{}", "close"), headers
    worker.wait(timeout=60)
