"""
A client that stops reading an HTTP/2 response (its flow-control window for the stream spent,
no WINDOW_UPDATE): twisted.web's sending loop went on picking that stream, sending nothing,
on every reactor turn (a core busy) and resetting the connection's idle timeout each time,
so the connection never closed.  Now the stream waits in the loop's priority tree until the
window opens again: the idle timeout closes the connection, and a client that reads slowly
still gets every byte (a window update wakes the loop).

A real ``twistd -n registry`` over TLS offering ``h2``; the client is the h2 library over a
blocking socket (tests/e2e/test_h2_refused_bodies.py's helpers).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import h2.events

from tests.e2e.test_h2_refused_bodies import (
    Outcome,
    _connect,
    _request_headers,
    exchange,
    h2_registry,
    logged,
)

BLOB = bytes(range(256)) * 4096  # 1 MiB: sixteen of the client's 64 KiB windows
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PUSH = f"/v2/h2/flow/blobs/uploads/?digest={DIGEST}"
PULL = f"/v2/h2/flow/blobs/{DIGEST}"


def test_a_client_that_stops_reading_is_closed_by_the_idle_timeout(
    tls_listen: str, tmp_path: Path
) -> None:
    with h2_registry(tmp_path, tls_listen, {"http": {"timeout": "1s"}}) as (child, port, ctx):
        sock, conn = _connect(port, ctx)
        with sock:
            pushed = exchange(sock, conn, 1, _request_headers("POST", PUSH, len(BLOB)), BLOB)
            assert pushed.status == b"201", pushed
            conn.send_headers(3, _request_headers("GET", PULL, 0)[:4], end_stream=True)
            sock.sendall(conn.data_to_send())
            received, closed = 0, False
            deadline = time.monotonic() + 30  # the bound, not a measure
            sock.settimeout(1)
            while time.monotonic() < deadline and not closed:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    closed = True
                    break
                for event in conn.receive_data(data):  # never acknowledged
                    if isinstance(event, h2.events.DataReceived):
                        received += len(event.data)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        closed = True
        assert closed, "the connection stayed open with the client not reading"
        assert 0 < received < len(BLOB), received
    logged(child, r"access method=POST path=/v2/h2/flow/")


def test_a_slow_reader_gets_every_byte(tls_listen: str, tmp_path: Path) -> None:
    with h2_registry(tmp_path, tls_listen, {}) as (child, port, ctx):
        sock, conn = _connect(port, ctx)
        with sock:
            pushed = exchange(sock, conn, 1, _request_headers("POST", PUSH, len(BLOB)), BLOB)
            assert pushed.status == b"201", pushed
            conn.send_headers(3, _request_headers("GET", PULL, 0)[:4], end_stream=True)
            sock.sendall(conn.data_to_send())
            out = Outcome()
            deadline = time.monotonic() + 60
            sock.settimeout(5)
            while not out.ended:
                assert time.monotonic() < deadline, (len(out.body), out.status)
                data = sock.recv(65536)
                assert data, "the server closed the connection"
                pending = 0
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        out.status = dict(event.headers)[b":status"]
                    elif isinstance(event, h2.events.DataReceived):
                        out.body += event.data
                        pending += event.flow_controlled_length
                    elif isinstance(event, h2.events.StreamEnded):
                        out.ended = True
                if pending:
                    time.sleep(0.05)  # the window stays spent a moment: the stream waits
                    conn.acknowledge_received_data(pending, 3)
                sock.sendall(conn.data_to_send())
        assert out.status == b"200"
        assert hashlib.sha256(out.body).hexdigest() == DIGEST.split(":", 1)[1]
    logged(child, r"access method=GET path=/v2/h2/flow/blobs/\S+ status=200")
