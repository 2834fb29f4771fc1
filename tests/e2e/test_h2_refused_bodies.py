"""
Over HTTP/2 as over HTTP/1.1, an upload body the registry refuses is answered as soon as the
refusal is known, and the rest of it is not read: the answer (its status and OCI error) ends
the stream, a ``RST_STREAM`` with ``NO_ERROR`` follows (RFC 9113, section 8.1: stop sending
the body), and the stream's flow-control window is not opened again, so the client cannot
send more than what the window let through.  The connection goes on: a request after it, on
the same connection, is answered whole (its body needs the connection's window back).

A real ``twistd -n registry`` on an ``ssl:`` port offering ``h2``; the client is the h2
library over a blocking TLS socket, so that the test sees each frame.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import bcrypt
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from tests.e2e.harness import write_config
from tests.e2e.test_full_disk import leave_free, mounted_tmpfs
from tests.server.proc import Child, start_registry

MiB = 1024 * 1024
# What the refused request announces, and the most its client sends (when the registry reads
# on, as it did over HTTP/2, the client goes on as long as it is let).
ANNOUNCED = 1024 * MiB
SEND_LIMIT = 16 * MiB
# The registry's receive window per stream (h2's default, which twisted.web keeps): what a
# client may send on a stream whose window the registry no longer opens.  A little more may
# have been taken before the refusal was known; on loopback the client sends one window.
STREAM_WINDOW = 65535
READ_BOUND = 4 * STREAM_WINDOW
# How long the client waits for a frame when it cannot send (its window used up).
STALL = 3.0
FRAME = 16384


@attrs.define
class Outcome:
    status: bytes | None = None
    headers: dict[bytes, bytes] = attrs.Factory(dict)
    body: bytes = b""
    ended: bool = False
    # The error code of the first RST_STREAM on the stream, None without one.
    reset: int | None = None
    # Body bytes the client managed to send.
    sent: int = 0
    # The statuses of informational answers (``100``) before the final one.
    informational: list[bytes] = attrs.Factory(list)


def _connect(
    port: int, context: ssl.SSLContext
) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _request_headers(
    method: str, path: str, length: int, *extra: tuple[str, str], length_first: bool = False
) -> list[Any]:
    """The headers of a request, ``Content-Length`` last, as curl and Go's client send it, or
    first, before ``extra``."""
    size = [("content-length", str(length))]
    return [
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        (":authority", "127.0.0.1"),
        *(size if length_first else []),
        ("content-type", "application/octet-stream"),
        *extra,
        *([] if length_first else size),
    ]


def _take(events: list[Any], conn: h2.connection.H2Connection, stream: int, out: Outcome) -> None:
    for event in events:
        if getattr(event, "stream_id", None) != stream:
            continue
        if isinstance(event, h2.events.InformationalResponseReceived):
            out.informational.append(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.ResponseReceived):
            out.headers = dict(event.headers)
            out.status = out.headers[b":status"]
        elif isinstance(event, h2.events.DataReceived):
            out.body += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, stream)
        elif isinstance(event, h2.events.StreamEnded):
            out.ended = True
        elif isinstance(event, h2.events.StreamReset) and out.reset is None:
            out.reset = event.error_code


def _receive(
    sock: ssl.SSLSocket, conn: h2.connection.H2Connection, stream: int, out: Outcome, wait: float
) -> bool:
    """Take what the server sent within ``wait`` seconds (one read); False when nothing."""
    sock.settimeout(wait)
    try:
        data = sock.recv(1024 * 1024)
    except (TimeoutError, ssl.SSLWantReadError):
        return False
    finally:
        sock.settimeout(30)
    assert data, "the server closed the connection"
    _take(conn.receive_data(data), conn, stream, out)
    sock.sendall(conn.data_to_send())
    return True


def send_refused(
    sock: ssl.SSLSocket,
    conn: h2.connection.H2Connection,
    stream: int,
    headers: list[Any],
) -> Outcome:
    """
    Send ``headers`` and then a body as fast as flow control lets, reading between frames,
    until the stream is reset or ended, ``SEND_LIMIT`` went out, or the window stays shut for
    ``STALL`` seconds; then read on until the answer is whole (or nothing comes for
    ``STALL`` seconds).
    """
    out = Outcome()
    conn.send_headers(stream, headers)
    sock.sendall(conn.data_to_send())
    chunk = bytes(FRAME)
    while out.reset is None and not out.ended and out.sent < SEND_LIMIT:
        window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
        if window <= 0:
            if not _receive(sock, conn, stream, out, STALL):
                break  # shut for good
            continue
        piece = chunk[:window]
        conn.send_data(stream, piece)
        out.sent += len(piece)
        sock.sendall(conn.data_to_send())
        _receive(sock, conn, stream, out, 0.0001)
    while not (out.ended and out.reset is not None):
        if not _receive(sock, conn, stream, out, STALL):
            break
    return out


def exchange(
    sock: ssl.SSLSocket,
    conn: h2.connection.H2Connection,
    stream: int,
    headers: list[Any] | None,
    body: bytes,
) -> Outcome:
    """A whole request on ``stream`` of the same connection (its headers sent already when
    None), its body sent as the window lets; the answer once it ended."""
    out = Outcome()
    if headers is not None:
        conn.send_headers(stream, headers, end_stream=not body)
        sock.sendall(conn.data_to_send())
    deadline = time.monotonic() + 60
    while body:
        window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
        if window <= 0:
            assert _receive(sock, conn, stream, out, STALL), "the window never opened again"
            continue
        piece, body = body[:window], body[window:]
        conn.send_data(stream, piece, end_stream=not body)
        out.sent += len(piece)
        sock.sendall(conn.data_to_send())
    while not out.ended and out.reset is None:
        assert time.monotonic() < deadline, out
        _receive(sock, conn, stream, out, STALL)
    return out


def basic(user: str, password: str) -> tuple[str, str]:
    return ("authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


@attrs.frozen
class Case:
    sections: dict[str, dict[str, str]]
    method: str
    path: str
    status: bytes
    code: str
    # The request after it, on the same connection: a monolithic push, with these headers.
    then: tuple[tuple[str, str], ...] = ()


def _cases(tmp_path: Path) -> dict[str, Case]:
    secret = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"ci:{secret}\n")
    auth = {"auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "h2-realm"}}
    digest = "sha256:" + "0" * 64
    return {
        "unknown-upload": Case(
            {}, "PATCH", "/v2/h2/refused/blobs/uploads/no-such-upload", b"404",
            "BLOB_UPLOAD_UNKNOWN",
        ),
        "no-credentials": Case(
            auth, "POST", f"/v2/h2/refused/blobs/uploads/?digest={digest}", b"401",
            "UNAUTHORIZED", (basic("ci", "s3cret"),),
        ),
        "too-large": Case(
            {}, "PUT", "/v2/h2/refused/manifests/v1", b"413", "MANIFEST_INVALID",
        ),
        "read-only": Case(
            {"maintenance": {"readonly": "true"}}, "PATCH",
            "/v2/h2/refused/blobs/uploads/some-upload", b"405", "UNSUPPORTED",
        ),
    }  # fmt: skip


@contextlib.contextmanager
def h2_registry(
    tmp_path: Path,
    tls_listen: str,
    sections: dict[str, dict[str, str]],
    storage: Path | None = None,
) -> Iterator[tuple[Child, int, ssl.SSLContext]]:
    """A ``twistd -n registry`` on an ``ssl:`` port offering ``h2``, with these other
    sections: (the child, its port, a client context trusting it)."""
    config = write_config(
        tmp_path / "r.cfg",
        {**sections, "http": {"workers": "1", "http2": "true", **sections.get("http", {})}},
    )
    child = start_registry(
        tmp_path, "--config", str(config), "--port", tls_listen.format(port=0),
        "--storage", str(storage or tmp_path / "data"),
    )  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "tls-ca.pem"))
        yield child, child.wait_listening(), context
    finally:
        child.stop()


def logged(child: Child, *patterns: str) -> str:
    """The registry's log once it has a line for each of ``patterns`` (in any order), checked
    for tracebacks and 500s."""
    for pattern in patterns:
        if not re.search(pattern, "".join(child.output)):
            child.wait_for(re.compile(pattern))
    log = "".join(child.output)
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    assert "status=500" not in log, log[-3000:]
    return log


@pytest.mark.parametrize("case", ["unknown-upload", "no-credentials", "too-large", "read-only"])
def test_a_refused_body_is_answered_then_its_stream_reset(
    tls_listen: str, tmp_path: Path, case: str
) -> None:
    refused = _cases(tmp_path)[case]
    data = bytes(range(256)) * 4096  # 1 MiB: more than the connection's first window
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    push = f"/v2/h2/after/blobs/uploads/?digest={digest}"
    read_only = "maintenance" in refused.sections
    with h2_registry(tmp_path, tls_listen, refused.sections) as (child, port, context):
        sock, conn = _connect(port, context)
        with sock:
            headers = _request_headers(refused.method, refused.path, ANNOUNCED)
            first = send_refused(sock, conn, 1, headers)
            if read_only:
                after = exchange(sock, conn, 3, _request_headers("GET", "/v2/", 0)[:4], b"")
            else:
                headers = _request_headers("POST", push, len(data), *refused.then)
                after = exchange(sock, conn, 3, headers, data)
        # The refusal, whole: its status and OCI error, and the end of the stream.
        assert first.status == refused.status, first
        assert first.headers[b"content-type"] == b"application/json", first
        (error,) = json.loads(first.body)["errors"]
        assert error["code"] == refused.code, first
        assert first.ended, first
        # Then the stream is reset, asking the client to stop sending (not an error).
        assert first.reset == h2.errors.ErrorCodes.NO_ERROR, first
        # The registry read no more than flow control let through: the body was not read on.
        assert first.sent <= READ_BOUND, first.sent
        # The same connection answers the next request, whose body needs the connection's
        # window back (the refused stream's dropped bytes count in it).
        if read_only:
            assert (after.status, after.body, after.reset) == (b"200", b"{}", None), after
        else:
            assert (after.status, after.reset) == (b"201", None), after
            assert after.headers[b"docker-content-digest"] == digest.encode(), after
        then = "GET path=/v2/ status=200" if read_only else "POST path=/v2/h2/after/.* status=201"
        logged(
            child,
            rf"access method={refused.method} path=/v2/h2/refused/\S* status={int(refused.status)}",
            rf"access method={then}",
        )


def test_expect_continue_over_http2(tls_listen: str, tmp_path: Path) -> None:
    """
    ``Expect: 100-continue`` over HTTP/2 as over HTTP/1.1: a refused body gets its final
    answer without ``100`` (and is never sent), a welcome one gets ``100`` once its upload is
    open (twisted.web answered ``100`` to every request as its headers came).  The stream of
    a refusal is reset as the others: the client that never sent its body need not either.
    """
    data = bytes(range(256)) * 1024
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    expect = ("expect", "100-continue")
    with h2_registry(tmp_path, tls_listen, {}) as (child, port, context):
        sock, conn = _connect(port, context)
        with sock:
            refusals = [
                ("PATCH", "/v2/h2/refused/blobs/uploads/no-such-upload", b"404"),
                ("PUT", "/v2/h2/refused/manifests/v1", b"413"),
            ]
            for number, (method, path, status) in enumerate(refusals):
                stream = 1 + 2 * number
                conn.send_headers(stream, _request_headers(method, path, ANNOUNCED, expect))
                sock.sendall(conn.data_to_send())
                out = Outcome()
                while not (out.ended and out.reset is not None):  # not a byte of the body
                    assert _receive(sock, conn, stream, out, STALL), out
                assert (out.informational, out.status, out.reset) == ([], status, 0), out
            stream = 1 + 2 * len(refusals)
            path = f"/v2/h2/after/blobs/uploads/?digest={digest}"
            conn.send_headers(stream, _request_headers("POST", path, len(data), expect))
            sock.sendall(conn.data_to_send())
            out = Outcome()
            while not out.informational:
                assert _receive(sock, conn, stream, out, STALL), out
            assert out.informational == [b"100"], out
            conn.send_data(stream, data[:FRAME])
            sock.sendall(conn.data_to_send())
            after = exchange(sock, conn, stream, None, data[FRAME:])
        assert (after.status, after.reset) == (b"201", None), after
        logged(child, r"access method=POST path=/v2/h2/after/.* status=201")


def test_headers_after_the_content_length_count_over_http2(tls_listen: str, tmp_path: Path) -> None:
    """
    twisted.web's HTTP/2 stream takes the body's length as it meets ``content-length`` among
    the headers: the upload was set up then, without the headers after it.  A push whose
    ``authorization`` came after ``content-length`` was refused (401), and an ``expect`` there
    was answered ``100`` by twisted.web whatever the upload's fate.  Now both count.
    """
    secret = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"ci:{secret}\n")
    auth = {"auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "h2-realm"}}
    data = bytes(range(256)) * 1024
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = f"/v2/h2/after/blobs/uploads/?digest={digest}"
    expect = ("expect", "100-continue")
    with h2_registry(tmp_path, tls_listen, auth) as (child, port, context):
        sock, conn = _connect(port, context)
        with sock:
            headers = _request_headers(
                "POST", path, len(data), basic("ci", "s3cret"), length_first=True
            )
            pushed = exchange(sock, conn, 1, headers, data)
            refused = _request_headers("POST", path, ANNOUNCED, expect, length_first=True)
            conn.send_headers(3, refused)
            sock.sendall(conn.data_to_send())
            out = Outcome()
            while not (out.ended and out.reset is not None):  # not a byte of the body
                assert _receive(sock, conn, 3, out, STALL), out
        assert (pushed.status, pushed.reset) == (b"201", None), pushed
        assert pushed.headers[b"docker-content-digest"] == digest.encode(), pushed
        assert (out.informational, out.status, out.reset) == ([], b"401", 0), out
        logged(
            child,
            r"access method=POST path=/v2/h2/after/.* status=201",
            r"access method=POST path=/v2/h2/after/.* status=401",
        )


def test_a_refusal_in_the_read_that_resets_its_stream_leaves_the_others_alone(
    tls_listen: str, tmp_path: Path
) -> None:
    """
    An upload refused (its write failing on a full disk) in the very read that also carries
    the client's RST_STREAM for it: the answer was queued on a stream h2 had closed, and the
    connection's sending loop stopped on it (a critical "Unhandled error"), so the next
    request on the connection got its headers and never its body.  Now the refusal is taken
    as the client's reset, and the connection goes on.
    """
    with mounted_tmpfs(tmp_path, 4 * MiB) as disk:
        with h2_registry(tmp_path, tls_listen, {}, disk / "data") as (child, port, context):
            sock, conn = _connect(port, context)
            with sock:
                path = "/v2/h2/full/blobs/uploads/?digest=sha256:" + "5" * 64
                headers = _request_headers("POST", path, 0)[:-1]  # no content-length
                conn.send_headers(1, headers)
                conn.send_data(1, bytes(FRAME))
                sock.sendall(conn.data_to_send())
                time.sleep(0.5)  # the upload is open and took the first bytes
                filler = leave_free(disk, 0)
                conn.send_data(1, bytes(FRAME))
                conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
                sock.sendall(conn.data_to_send())  # the data and the reset in one write
                after = exchange(sock, conn, 3, _request_headers("GET", "/v2/", 0)[:4], b"")
            filler.unlink()
        assert (after.status, after.body, after.ended) == (b"200", b"{}", True), after
        log = logged(child, r"access method=GET path=/v2/ status=200")
        assert "StreamClosedError" not in log, log[-3000:]
