"""
A download whose client's flow-control window is shut (it stopped reading, or reads slowly)
waits for the window to open again: it costs no CPU, and it does not keep the connection
alive, so the idle timeout closes a connection on which nothing moves.  Whatever opens the
window wakes it (a WINDOW_UPDATE on the stream or on the connection, a SETTINGS frame raising
the initial window), a response's end goes out once its bytes have, a stream the client resets
while it waits leaves the connection serving, and the other streams of the connection are
served meanwhile.

A real ``twistd -n registry`` over TLS offering ``h2``; the client is the h2 library over a
blocking socket, frame by frame (tests/e2e/test_h2_refused_bodies.py's helpers).
"""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.errors
import h2.events
import h2.settings
import pytest

from tests.e2e.test_h2_refused_bodies import Outcome, _connect, h2_registry, logged
from tests.e2e.test_h2_reset import push

MiB = 1024 * 1024
BLOB = hashlib.sha256(b"flow").digest() * (MiB // 32)  # 1 MiB: sixteen default windows
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PULL = f"/v2/h2/reset/blobs/{DIGEST}"  # where tests/e2e/test_h2_reset.push puts it
UNKNOWN = "/v2/h2/reset/blobs/sha256:" + "0" * 64
DEFAULT_WINDOW = 65535
INITIAL_WINDOW = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
# Bound on any wait (not a measure: a pass takes a fraction of it).
BOUND = 30.0


class Client:
    """
    An h2 client on one TLS connection, taking what the server sends into an `Outcome` per
    stream; it acknowledges (opens the window again for) what it reads on a stream unless
    told not to (``held``).
    """

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext,
        settings: dict[Any, int] | None = None,
        connection_window: int = 0,
    ) -> None:
        self.sock, self.conn = _connect(port, context)
        if settings:
            self.conn.update_settings(settings)
        if connection_window:
            self.conn.increment_flow_control_window(connection_window)
        self.flush()
        self.out: dict[int, Outcome] = {}
        self.held: set[int] = set()
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path: str, *, held: bool = False) -> int:
        stream: int = self.conn.get_next_available_stream_id()
        self.out[stream] = Outcome()
        if held:
            self.held.add(stream)
        request = [(":method", "GET"), (":path", path), (":scheme", "https")]
        self.conn.send_headers(stream, [*request, (":authority", "127.0.0.1")], end_stream=True)
        self.flush()
        return stream

    def read(self, wait: float = 1.0) -> None:
        """Take one read's frames (nothing within ``wait`` seconds: nothing)."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1024 * 1024)
        except (TimeoutError, ssl.SSLWantReadError):
            return
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            out = self.out.get(getattr(event, "stream_id", None) or 0)
            if isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
            elif out is None:
                continue
            elif isinstance(event, h2.events.ResponseReceived):
                out.headers = dict(event.headers)
                out.status = out.headers[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                out.body += event.data
                if event.stream_id not in self.held:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.StreamEnded):
                out.ended = True
            elif isinstance(event, h2.events.StreamReset) and out.reset is None:
                out.reset = event.error_code
        self.flush()

    def until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + BOUND
        while not done():
            assert not self.closed, f"the connection closed before {what}: {self.out}"
            assert time.monotonic() < deadline, f"never {what}: {self.out}"
            self.read()

    def close(self) -> None:
        self.sock.close()


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _registry(tmp_path: Path, tls_listen: str, timeout: str = "60s") -> Any:
    return h2_registry(tmp_path, tls_listen, {"http": {"timeout": timeout}})


def _ca(tmp_path: Path) -> ssl.SSLContext:
    """A client context trusting the registry, for `push` (over HTTP/1.1: no ALPN set)."""
    return ssl.create_default_context(cafile=str(tmp_path / "tls-ca.pem"))


def test_a_client_that_stops_reading_is_closed_by_the_idle_timeout(
    tls_listen: str, tmp_path: Path
) -> None:
    with _registry(tmp_path, tls_listen, "2s") as (child, port, context):
        assert push(port, _ca(tmp_path), BLOB) == DIGEST
        client = Client(port, context)
        try:
            stream = client.get(PULL, held=True)  # never acknowledged
            deadline = time.monotonic() + BOUND
            while not client.closed and time.monotonic() < deadline:
                client.read()
        finally:
            client.close()
        assert client.closed, "the connection stayed open with the client not reading"
        out = client.out[stream]
        assert out.status == b"200", out
        assert len(out.body) == DEFAULT_WINDOW, out  # what its window let through
    logged(child, r"Timing out client")


def test_a_slow_reader_gets_every_byte(tls_listen: str, tmp_path: Path) -> None:
    """The client opens the windows (the stream's, then the connection's, in separate
    writes, each in two halves) by what it read, once it read a third of a window."""
    with _registry(tmp_path, tls_listen) as (child, port, context):
        assert push(port, _ca(tmp_path), BLOB) == DIGEST
        client = Client(port, context)
        try:
            stream = client.get(PULL, held=True)
            out = client.out[stream]
            acknowledged = 0
            while not out.ended:
                then = acknowledged + DEFAULT_WINDOW // 3
                client.until(lambda then=then: out.ended or len(out.body) >= then, "bytes")
                if out.ended:
                    break
                pending, acknowledged = len(out.body) - acknowledged, len(out.body)
                for piece in (pending // 2, pending - pending // 2):
                    if piece:
                        client.conn.increment_flow_control_window(piece, stream)
                        client.flush()
                        client.conn.increment_flow_control_window(piece)
                        client.flush()
        finally:
            client.close()
        assert out.status == b"200", out
        assert _digest(out.body) == DIGEST
    logged(child, r"access method=GET path=/v2/h2/reset/blobs/\S+ status=200")


@pytest.mark.parametrize("on", ["stream", "connection"])
def test_a_window_update_and_a_reset_in_one_read_leave_the_connection_serving(
    tls_listen: str, tmp_path: Path, on: str
) -> None:
    """
    A download waiting on a shut window -- its own (``stream``) or the connection's
    (``connection``, the stream windows being large) -- and then, in one write, the
    WINDOW_UPDATE that opens it and the client's RST_STREAM for it: the connection goes on
    serving its next requests whole.
    """
    with _registry(tmp_path, tls_listen) as (child, port, context):
        assert push(port, _ca(tmp_path), BLOB) == DIGEST
        if on == "stream":
            client = Client(port, context, connection_window=64 * MiB)
        else:
            client = Client(port, context, {INITIAL_WINDOW: 16 * MiB})
        try:
            held = client.get(PULL, held=True)
            client.until(lambda: len(client.out[held].body) >= DEFAULT_WINDOW, "a window")
            time.sleep(0.3)  # the server is through with what it could send (not a measure)
            client.conn.increment_flow_control_window(MiB, held if on == "stream" else None)
            client.conn.reset_stream(held, h2.errors.ErrorCodes.CANCEL)
            client.flush()  # both frames in one write
            client.held.discard(held)
            base, blob = client.get("/v2/"), client.get(PULL)
            client.until(lambda: client.out[base].ended and client.out[blob].ended, "answered")
        finally:
            client.close()
        assert (client.out[base].status, client.out[base].body) == (b"200", b"{}")
        assert client.out[blob].status == b"200"
        assert _digest(client.out[blob].body) == DIGEST
    logged(child, r"access method=GET path=/v2/ status=200")


@pytest.mark.parametrize(("path", "status"), [("/v2/", b"200"), (UNKNOWN, b"404")])
def test_the_end_of_a_response_follows_its_last_bytes(
    tls_listen: str, tmp_path: Path, path: str, status: bytes
) -> None:
    """
    A client whose initial window is 0 opens a response's stream by exactly its length:
    the bytes go out, and then the response's end (END_STREAM needs no window), though
    the window is shut again.
    """
    with _registry(tmp_path, tls_listen) as (child, port, context):
        client = Client(port, context, {INITIAL_WINDOW: 0})
        try:
            stream = client.get(path, held=True)
            out = client.out[stream]
            client.until(lambda: out.status is not None, "a head")
            length = int(out.headers[b"content-length"])
            client.conn.increment_flow_control_window(length, stream)
            client.flush()
            client.until(lambda: out.ended, "the end of the response")
        finally:
            client.close()
        assert out.status == status, out
        assert len(out.body) == length, out
    logged(child, rf"access method=GET path={path} status={status.decode()}")


@pytest.mark.parametrize("path", ["/v2/", PULL])
def test_a_window_opened_by_settings_wakes_a_waiting_download(
    tls_listen: str, tmp_path: Path, path: str
) -> None:
    """
    A client whose initial window is 0 raises it with SETTINGS_INITIAL_WINDOW_SIZE (no
    WINDOW_UPDATE) once the answer's head is in: the whole body comes.
    """
    with _registry(tmp_path, tls_listen) as (child, port, context):
        assert push(port, _ca(tmp_path), BLOB) == DIGEST
        client = Client(port, context, {INITIAL_WINDOW: 0}, connection_window=64 * MiB)
        try:
            stream = client.get(path)
            out = client.out[stream]
            client.until(lambda: out.status is not None, "a head")
            time.sleep(0.3)  # the server is through with what it could send (not a measure)
            assert out.body == b"", out
            client.conn.update_settings({INITIAL_WINDOW: 16 * MiB})
            client.flush()
            client.until(lambda: out.ended, "the end of the response")
        finally:
            client.close()
        assert out.status == b"200", out
        if path == PULL:
            assert _digest(out.body) == DIGEST
        else:
            assert out.body == b"{}"
    logged(child, r"access method=GET path=/v2/\S* status=200")


def test_the_other_streams_are_served_while_one_waits(tls_listen: str, tmp_path: Path) -> None:
    """
    One download's client stops reading; another on the same connection is served whole
    meanwhile.  And once nothing moves, the waiting one keeps the connection no longer than
    the idle timeout.
    """
    with _registry(tmp_path, tls_listen, "2s") as (child, port, context):
        assert push(port, _ca(tmp_path), BLOB) == DIGEST
        client = Client(port, context, connection_window=64 * MiB)
        try:
            waiting = client.get(PULL, held=True)
            client.until(lambda: len(client.out[waiting].body) >= DEFAULT_WINDOW, "a window")
            served = client.get(PULL)
            client.until(lambda: client.out[served].ended, "the second download")
            deadline = time.monotonic() + BOUND
            while not client.closed and time.monotonic() < deadline:
                client.read()
        finally:
            client.close()
        assert _digest(client.out[served].body) == DIGEST
        assert len(client.out[waiting].body) == DEFAULT_WINDOW
        assert not client.out[waiting].ended
        assert client.closed, "the waiting download kept the connection open"
    logged(child, r"Timing out client")
