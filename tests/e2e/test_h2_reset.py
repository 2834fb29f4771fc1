"""
An HTTP/2 client that cancels a download (RST_STREAM mid-body, as ``curl --http2`` killed
mid-transfer does): the registry treats it as a client leaving, as it does an HTTP/1.1
connection cut mid-body: no traceback, one access line with what was sent, and the
connection goes on serving its other streams.  A real ``twistd -n registry`` over TLS.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from tests.auth import pki
from tests.server.proc import Child, start_tls_registry

BLOB_SIZE = 8 * 1024 * 1024
# Bound on reads while waiting for a response (each returns at least one frame or fails).
MAX_READS = 10_000


def push(port: int, context: ssl.SSLContext, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        connection.request("POST", "/v2/h2/reset/blobs/uploads/")
        response = connection.getresponse()
        response.read()
        assert response.status == 202, response.status
        location = response.getheader("Location")
        assert location
        separator = "&" if "?" in location else "?"
        connection.request("PUT", f"{location}{separator}digest={digest}", body=data)
        response = connection.getresponse()
        response.read()
        assert response.status == 201, response.status
    finally:
        connection.close()
    return digest


def headers(path: str) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", "localhost")]


@contextlib.contextmanager
def h2_registry(tmp_path: Path) -> Iterator[tuple[Child, int, ssl.SSLContext]]:
    """A ``twistd -n registry`` over TLS offering ``h2``: (the child, its port, a client
    context trusting it, ALPN not set yet)."""
    key = pki.new_key("ec")
    cert = pki.certificate("127.0.0.1", key, server=True)
    child, _, cert_path, _ = start_tls_registry(
        tmp_path, {"workers": "1", "http2": "true"}, pki.pem_cert(cert), pki.pem_key(key)
    )
    try:
        yield child, child.wait_listening(), ssl.create_default_context(cafile=cert_path)
    finally:
        child.stop()


def test_a_reset_stream_is_a_client_leaving(tmp_path: Path) -> None:
    with h2_registry(tmp_path) as (child, port, context):
        digest = push(port, context, b"\x5a" * BLOB_SIZE)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(1, headers(f"/v2/h2/reset/blobs/{digest}"), end_stream=True)
            sock.sendall(conn.data_to_send())
            received = 0
            for _ in range(MAX_READS):  # a little of the body, then cancel
                if received >= 100_000:
                    break
                data = sock.recv(65536)
                assert data, "connection closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        received += len(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, 1)
                sock.sendall(conn.data_to_send())
            assert received >= 100_000
            conn.reset_stream(1)
            conn.send_headers(3, headers("/v2/"), end_stream=True)
            sock.sendall(conn.data_to_send())
            status = None
            for _ in range(MAX_READS):  # the same connection answers the next stream
                data = sock.recv(65536)
                assert data, "connection closed"
                events = conn.receive_data(data)
                sock.sendall(conn.data_to_send())
                for event in events:
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 3:
                        status = dict(event.headers)[b":status"]
                if any(
                    isinstance(event, h2.events.StreamEnded) and event.stream_id == 3
                    for event in events
                ):
                    break
            assert status == b"200"
        for pattern in (  # in either order
            rf"access method=GET path=/v2/h2/reset/blobs/{digest} status=200 bytes=\d+",
            r"access method=GET path=/v2/ status=200",
        ):
            if not re.search(pattern, "".join(child.output)):
                child.wait_for(re.compile(pattern))
        log = "".join(child.output)
        assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
        assert log.count(f"path=/v2/h2/reset/blobs/{digest}") == 1


def _answers(sock: ssl.SSLSocket, conn: h2.connection.H2Connection, stream: int) -> bytes:
    """The status and body of ``stream``, once it ended (bounded reads)."""
    status, body = b"", b""
    for _ in range(MAX_READS):
        data = sock.recv(65536)
        assert data, "connection closed"
        events = conn.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                status = dict(event.headers)[b":status"]
            if isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
        sock.sendall(conn.data_to_send())
        if any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in events):
            return status + b" " + body
    raise AssertionError(f"stream {stream} never ended")


def test_a_request_reset_as_it_is_sent_leaves_the_connection_serving(tmp_path: Path) -> None:
    """
    A request and its reset in one read (a client cancelling at once): the answer twisted.web
    would write before it hands over the reset is not written to the dead stream, and the
    next streams on the connection get whole answers.  (Writing it stopped the connection's
    sending loop: later streams got their headers and never a body.)
    """
    with h2_registry(tmp_path) as (child, port, context):
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            # Answered as it arrives (no storage read): /v2/, and an unknown name's 404.
            for stream, path in ((1, "/v2/"), (3, "/v2/nobody/here/tags/list")):
                conn.send_headers(stream, headers(path), end_stream=True)
                conn.reset_stream(stream)
                sock.sendall(conn.data_to_send())
            for stream, path in ((5, "/v2/"), (7, "/v2/")):
                conn.send_headers(stream, headers(path), end_stream=True)
                sock.sendall(conn.data_to_send())
                assert _answers(sock, conn, stream) == b"200 {}"
        child.wait_for(re.compile(r"access method=GET path=/v2/ status=200 bytes=2 "))
        log = "".join(child.output)
        assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
        assert "critical" not in log, log[-3000:]


def _bytes_read(pid: int) -> int:
    """What the process has read so far (``rchar``: files and sockets alike)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def _settled_bytes_read(pid: int) -> int:
    """``_bytes_read`` once it stopped growing for a second (bounded wait)."""
    last = _bytes_read(pid)
    still = 0
    for _ in range(120):
        time.sleep(0.25)
        now = _bytes_read(pid)
        still = still + 1 if now == last else 0
        last = now
        if still >= 4:
            break
    return last


def test_streams_a_client_never_reads_hold_little(tmp_path: Path) -> None:
    """
    A client opens many downloads on one connection and never opens its flow-control
    window: each stream's response waits on the server, which must not have read much of
    the blob for it (an HTTP/2 stream queues whole writes; 2 MiB reads held 4 MiB a stream).
    """
    streams = 20
    with h2_registry(tmp_path) as (child, port, context):
        digest = push(port, context, b"\x5b" * BLOB_SIZE)
        context.set_alpn_protocols(["h2"])
        pid = child.process.pid
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            before = _settled_bytes_read(pid)
            for number in range(streams):
                path = f"/v2/h2/reset/blobs/{digest}"
                conn.send_headers(1 + 2 * number, headers(path), end_stream=True)
            sock.sendall(conn.data_to_send())
            read = _settled_bytes_read(pid) - before
        # About two 256 KiB reads a stream; 2 MiB reads came to about 80 MiB here.
        assert read < streams * 1024 * 1024, read
        log = "".join(child.output)
        assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
