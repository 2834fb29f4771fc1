"""
What an HTTP/2 download holds queued does not depend on its client's flow-control window.
twisted.web pauses a stream's producer only when the client's window runs out; a client that
announces a huge window and stops reading filled the connection's queue of each stream with
its whole blob.  The registry bounds each stream's queue (`responses.HTTP2_STREAM_QUEUE`).

An in-process registry on an ``ssl:`` port with ``[http] http2 = true``, so the test can look
at the queues through `twisted_internals`; the client is a blocking socket in a thread.
"""

from __future__ import annotations

import gc
import hashlib
import re
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.web._http2 import H2Connection

from registry.http import twisted_internals
from tests.auth import pki
from tests.e2e.harness import InProcessRegistry, sleep, start_in_process
from tests.e2e.test_h2_reset import MAX_READS, headers, push

BLOB_SIZE = 8 * 1024 * 1024
STREAMS = 8
HUGE_WINDOW = 2**31 - 1
# What docs/tls.md says one stream holds queued at most (`responses.HTTP2_STREAM_QUEUE`).
STREAM_QUEUE = 1024 * 1024


@pytest_twisted.async_yield_fixture
async def registry(tmp_path: Path) -> AsyncIterator[tuple[InProcessRegistry, ssl.SSLContext]]:
    key = pki.new_key("ec")
    cert = pki.certificate("127.0.0.1", key, server=True)
    cert_path = pki.write(tmp_path / "server.pem", pki.pem_cert(cert))
    key_path = pki.write(tmp_path / "server.key", pki.pem_key(key))
    listen = f"ssl:{{port}}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    running = await start_in_process(tmp_path, {"http": {"http2": "true"}}, listen=listen)
    try:
        yield running, ssl.create_default_context(cafile=cert_path)
    finally:
        await running.stop()


def _open_streams(
    port: int, context: ssl.SSLContext, path: str
) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    """A connection announcing the largest window, ``STREAMS`` GETs of ``path`` on it, and a
    small receive buffer so that the server's socket fills soon; nothing is read after."""
    context.set_alpn_protocols(["h2"])
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(60)
    raw.connect(("127.0.0.1", port))
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: HUGE_WINDOW})
    conn.increment_flow_control_window(HUGE_WINDOW - 65535)
    for number in range(STREAMS):
        conn.send_headers(1 + 2 * number, headers(path), end_stream=True)
    sock.sendall(conn.data_to_send())
    return sock, conn


def _read_all(sock: ssl.SSLSocket, conn: h2.connection.H2Connection) -> dict[int, bytes]:
    """Every stream's body, once all ended (bounded reads)."""
    bodies = {1 + 2 * number: bytearray() for number in range(STREAMS)}
    statuses: dict[int, bytes] = {}
    ended: set[int] = set()
    for _ in range(MAX_READS * 10):
        if len(ended) == STREAMS:
            break
        data = sock.recv(1024 * 1024)
        assert data, "connection closed"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                raise AssertionError(f"stream {event.stream_id} reset")
        sock.sendall(conn.data_to_send())
    assert len(ended) == STREAMS, (sorted(ended), {k: len(v) for k, v in bodies.items()})
    assert set(statuses.values()) == {b"200"}, statuses
    return {stream: bytes(body) for stream, body in bodies.items()}


def _queued() -> dict[int, int]:
    """What each HTTP/2 stream of the registry has queued, by stream id."""
    found: dict[int, int] = {}
    for connection in gc.get_objects():
        if isinstance(connection, H2Connection):
            streams: Any = connection.streams
            for stream_id, stream in list(streams.items()):
                queued = twisted_internals.h2_queued(stream)
                if queued is not None:
                    found[stream_id] = queued
    return found


async def _settled_queues() -> dict[int, int]:
    """`_queued` once every stream has something queued and the total stopped changing for
    a second (bounded wait)."""
    last: dict[int, int] = {}
    still = 0
    for _ in range(120):
        await sleep(0.25)
        now = _queued()
        still = still + 1 if now == last and len(now) == STREAMS else 0
        last = now
        if still >= 4:
            break
    return last


async def _access_lines(events: list[dict[str, Any]], path: str) -> list[str]:
    """The access lines of the streams' downloads, once there is one per stream (they follow
    the last bytes, or the resets; bounded: 10 s)."""
    for _ in range(40):
        if sum(path in str(e.get("line")) for e in events) >= STREAMS:
            break
        await sleep(0.25)
    return [str(e.get("line")) for e in events]


@pytest_twisted.ensureDeferred
async def test_a_huge_window_does_not_queue_whole_blobs(
    registry: tuple[InProcessRegistry, ssl.SSLContext], access_events: list[dict[str, Any]]
) -> None:
    running, context = registry
    port = int(running.url.rsplit(":", 1)[1])
    data = bytes(range(256)) * (BLOB_SIZE // 256)
    digest = await deferToThread(push, port, context, data)
    path = f"/v2/h2/reset/blobs/{digest}"
    sock, conn = await deferToThread(_open_streams, port, context, path)
    with sock:
        queued = await _settled_queues()
        assert len(queued) == STREAMS, queued
        # The client's window would take every blob whole: the registry queued no more
        # than its bound for any stream.
        assert max(queued.values()) <= STREAM_QUEUE, queued
        assert sum(queued.values()) > 0, queued
        bodies = await deferToThread(_read_all, sock, conn)
    for stream, body in bodies.items():
        assert len(body) == BLOB_SIZE, (stream, len(body))
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest, stream
    lines = await _access_lines(access_events, path)
    downloads = [line for line in lines if path in line]
    assert len(downloads) == STREAMS, lines
    for line in downloads:
        assert re.search(rf"status=200 bytes={BLOB_SIZE} duration_ms=", line), line


@pytest_twisted.ensureDeferred
async def test_a_stream_reset_with_bytes_queued_is_not_complete(
    registry: tuple[InProcessRegistry, ssl.SSLContext], access_events: list[dict[str, Any]]
) -> None:
    """
    Streams reset while their last bytes wait in the queue: the access line says
    ``complete=false`` and counts only what went out (it claimed the whole blob when the
    blob was queued whole, and the request was finished as soon as it was queued).
    """
    running, context = registry
    port = int(running.url.rsplit(":", 1)[1])
    digest = await deferToThread(push, port, context, b"\x3c" * BLOB_SIZE)
    path = f"/v2/h2/reset/blobs/{digest}"
    sock, conn = await deferToThread(_open_streams, port, context, path)
    with sock:
        assert len(await _settled_queues()) == STREAMS
        for number in range(STREAMS):
            conn.reset_stream(1 + 2 * number)
        await deferToThread(sock.sendall, conn.data_to_send())
        lines = await _access_lines(access_events, path)
    downloads = [line for line in lines if path in line]
    assert len(downloads) == STREAMS, lines
    for line in downloads:
        found = re.search(r"status=200 bytes=(\d+) complete=false duration_ms=", line)
        assert found, line
        assert int(found.group(1)) < BLOB_SIZE, line
