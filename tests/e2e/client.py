"""Small registry-client helpers over treq, for readable end-to-end tests."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import treq
from treq.response import _Response
from twisted.internet.threads import deferToThread
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def error_codes(response: _Response) -> list[str]:
    """The OCI error codes of an error response (asserting it is the OCI envelope)."""
    assert header(response, "content-type") == "application/json"
    body = json.loads(await response.content())
    assert set(body) == {"errors"}, body
    for entry in body["errors"]:
        assert {"code", "message"} <= set(entry), entry
    return [entry["code"] for entry in body["errors"]]


def header(response: _Response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode())
    return values[0].decode() if values else None


async def push_blob(url: str, name: str, data: bytes) -> str:
    digest = sha256(data)
    response = await treq.post(f"{url}/v2/{name}/blobs/uploads/?digest={digest}", data=data)
    assert response.code == 201, await response.text()
    assert header(response, "docker-content-digest") == digest
    return digest


async def start_upload(url: str, name: str) -> str:
    response = await treq.post(f"{url}/v2/{name}/blobs/uploads/")
    await response.content()
    assert response.code == 202
    location = header(response, "location")
    assert location is not None
    return location if location.startswith("http") else url + location


async def raw_headers(method: str, url: str, *extra: str) -> tuple[int, dict[str, str]]:
    """
    Status and headers as curl sees them.  twisted's client hides ``Content-Length`` in
    ``response.length`` (and drops it for HEAD), so HEAD answers are checked with curl.
    """
    command = ["curl", "-s", "-o", "/dev/null", "-D", "-", "-X", method, *extra, url]
    if method == "HEAD":
        command[command.index("-X") : command.index("-X") + 2] = ["-I"]
    result = await deferToThread(subprocess.run, command, capture_output=True, check=True)
    lines = result.stdout.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def get(url: str, **kwargs: Any) -> tuple[_Response, bytes]:
    response = await treq.get(url, **kwargs)
    return response, await response.content()


async def pages(
    base: str, first: str, key: str, next_base: str | None = None, limit: int = 20
) -> list[list[str]]:
    """
    The ``key`` list of every page from ``base + first`` on, following each ``Link`` (asked
    of ``next_base`` instead when given: a cursor one server handed out, used on another).
    """
    found: list[list[str]] = []
    url = base + first
    for _ in range(limit):
        response, body = await get(url)
        assert response.code == 200, body
        found.append(json.loads(body)[key])
        link = header(response, "link")
        if link is None:
            return found
        url = (next_base or base) + link.split(">")[0].lstrip("<")
    raise AssertionError(f"more than {limit} pages: {found}")


@implementer(IBodyProducer)
class PatternBody:
    """
    A large request body generated on the fly (never held whole): ``count`` chunks of a random
    block, each stamped with its index so no two chunks are equal.  Knows its own digest.
    """

    def __init__(self, count: int, block_size: int = 4 * 1024 * 1024, seed: int = 1) -> None:
        import random

        self.block = bytearray(random.Random(seed).randbytes(block_size))
        self.count = count
        self.length = count * block_size
        self._paused = False
        self._index = 0
        self._finished: Any = None
        self._consumer: Any = None

    def chunk(self, index: int) -> bytes:
        self.block[:8] = index.to_bytes(8, "big")
        return bytes(self.block)

    def digest(self) -> str:
        hasher = hashlib.sha256()
        for index in range(self.count):
            hasher.update(self.chunk(index))
        return "sha256:" + hasher.hexdigest()

    def startProducing(self, consumer: Any) -> Any:
        from twisted.internet.defer import Deferred

        self._consumer = consumer
        self._finished = Deferred()
        self._produce()
        return self._finished

    def _produce(self) -> None:
        while not self._paused and self._index < self.count:
            chunk = self.chunk(self._index)
            self._index += 1
            self._consumer.write(chunk)
        if self._index >= self.count and self._finished is not None and not self._finished.called:
            self._finished.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        self._index = self.count


async def raw_request(url: str, request: bytes) -> bytes:
    """
    Send ``request`` as is to the server of ``url`` and return every byte of the answer, read
    until the server closes (so send ``Connection: close``): for assertions on the exact wire.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    where = (parts.hostname, parts.port)

    def exchange() -> bytes:
        import socket

        with socket.create_connection(where, timeout=30) as sock:
            sock.sendall(request)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    answer: bytes = await deferToThread(exchange)
    return answer


def split_response(answer: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """``(status line, headers lower-cased, body)`` of one raw HTTP/1.x response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
