"""
Header values that are not UTF-8 (a client's stray byte) get the answer any other bad value
gets: never a 500 and a traceback.  Raw sockets, since HTTP client libraries refuse to send
such bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest_twisted

from tests.e2e.client import push_blob, raw_request, split_response, start_upload
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry
from tests.e2e.test_auth_edges import htpasswd_registry

# Latin-1 bytes that are not valid UTF-8.
STRAY = b"\xff\xfe"


async def send(registry: InProcessRegistry, head: bytes, body: bytes = b"") -> Any:
    request = head + b"\r\nHost: x\r\nConnection: close\r\n"
    request += f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    return split_response(await raw_request(registry.url, request))


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["errors"][0]["code"]
    return code


@pytest_twisted.ensureDeferred
async def test_registry_api_headers(
    registry: InProcessRegistry, access_events: list[dict[str, Any]]
) -> None:
    digest = await push_blob(registry.url, "team/app", b"0123456789")
    upload = (await start_upload(registry.url, "team/app")).removeprefix(registry.url)

    status, _, body = await send(
        registry, b"PUT /v2/team/app/manifests/v1 HTTP/1.1\r\nContent-Type: " + STRAY, b"{}"
    )
    assert (status, error_code(body)) == (b"HTTP/1.1 400 Bad Request", "MANIFEST_INVALID")

    # An unreadable range is ignored, as RFC 9110 asks: the whole blob.
    status, headers, body = await send(
        registry,
        f"GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nRange: bytes=".encode() + STRAY,
    )
    assert (status, body, headers["content-length"]) == (b"HTTP/1.1 200 OK", b"0123456789", "10")

    status, headers, body = await send(
        registry, f"PATCH {upload} HTTP/1.1\r\nContent-Range: ".encode() + STRAY, b"abc"
    )
    assert (status, error_code(body)) == (b"HTTP/1.1 400 Bad Request", "BLOB_UPLOAD_INVALID")
    assert json.loads(body)["errors"][0]["detail"] == {"content_range": "\xff\xfe"}

    status, _, _ = await send(registry, b"GET /v2/ HTTP/1.1\r\nUser-Agent: agent/" + STRAY)
    assert status == b"HTTP/1.1 200 OK"
    agents = [e["agent"] for e in access_events if e["path"] == "/v2/"]
    assert agents == ["agent/\xff\xfe"]


@pytest_twisted.ensureDeferred
async def test_credentials(start_registry: Starter, tmp_path: Path) -> None:
    registry = await htpasswd_registry(start_registry, tmp_path, max_failures=5)

    status, headers, body = await send(
        registry, b"GET /v2/team/app/tags/list HTTP/1.1\r\nAuthorization: Basic " + STRAY
    )

    assert (status, error_code(body)) == (b"HTTP/1.1 401 Unauthorized", "UNAUTHORIZED")
    assert headers["www-authenticate"] == 'Basic realm="edges"'


@pytest_twisted.ensureDeferred
async def test_web_ui_origin(registry: InProcessRegistry) -> None:
    """A form post whose Origin or Referer is unreadable is refused as a foreign one."""
    for sent in (b"Origin: http://" + STRAY, b"Referer: http://" + STRAY + b"/ui/"):
        status, _, body = await send(
            registry,
            b"POST /ui/r/team/app/-/delete HTTP/1.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n" + sent,
            b"reference=v1&csrf=x",
        )
        assert status == b"HTTP/1.1 403 Forbidden", body


@pytest_twisted.ensureDeferred
async def test_host(registry: InProcessRegistry) -> None:
    """The API does not read Host; the pages routed by Klein, which decodes it, get a plain
    400 (and nothing in the log: the log watch fails the test on Klein's traceback)."""

    async def answer(method: bytes, path: bytes) -> tuple[bytes, bytes]:
        request = method + b" " + path + b" HTTP/1.1\r\nHost: \xc3\r\nConnection: close\r\n\r\n"
        status, _, body = split_response(await raw_request(registry.url, request))
        return status, body

    assert (await answer(b"GET", b"/v2/"))[0] == b"HTTP/1.1 200 OK"
    for path in (b"/ui/", b"/health"):
        assert await answer(b"GET", path) == (
            b"HTTP/1.1 400 Bad Request",
            b"Non-UTF-8 encoding in URL or Host.",
        )
        assert await answer(b"HEAD", path) == (b"HTTP/1.1 400 Bad Request", b"")


@pytest_twisted.ensureDeferred
async def test_an_access_line_cannot_be_given_fields_or_lines_by_a_client(
    start_registry: Starter, tmp_path: Path, access_events: list[dict[str, Any]]
) -> None:
    """A user name with a space or a line end (htpasswd takes them; so does a certificate's
    CN) and an agent with a tab are percent-encoded in the line's text, so that they read as
    one field's value, not as fields (``user=admin``) or lines of their own; so are the line
    ends only some readers split on (U+2028 in the name, NEL in the agent: Python's
    ``splitlines`` splits on both).  The event's fields keep them as they are, for
    structured logs."""
    import base64

    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    name = "bob user=admin\u2028status=200"
    (tmp_path / "htpasswd").write_text(f"{name}:{hashed}\n")
    registry = await start_registry(
        {"auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "edges"}}
    )
    token = base64.b64encode(f"{name}:pw".encode()).decode()
    status, _, _ = await send(
        registry,
        f"GET /v2/ HTTP/1.1\r\nAuthorization: Basic {token}\r\nUser-Agent: a\tb c".encode()
        + b"\x85d",
    )
    assert status == b"HTTP/1.1 200 OK"
    [event] = [e for e in access_events if e["path"] == "/v2/" and e["status"] == 200]
    assert (event["user"], event["agent"]) == (name, "a\tb c\x85d")
    line = event["line"]
    assert line.endswith(" user=bob%20user=admin%E2%80%A8status=200 agent=a%09b c%C2%85d")
    assert unquote(line.split(" user=")[1].split(" ")[0]) == name  # decodes back to it
    assert len(event["line"].splitlines()) == 1
