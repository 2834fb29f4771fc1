"""
Forwarding headers over real sockets: a registry with ``[http] trusted_proxies`` believes
X-Forwarded-For/-Proto/-Host from 127.0.0.1 for its Location headers, its access log and its
failed-login limiter; without it, the same headers change nothing.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import pytest_twisted
import treq

from tests.e2e.client import error_codes, header, sha256
from tests.e2e.conftest import Starter

FORWARDED = {
    "X-Forwarded-For": "198.51.100.1, 203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "registry.example.com:8443",
}


def location_of(response: Any) -> str:
    value = header(response, "location")
    assert value is not None
    return value


def clients_of(events: list[dict[str, Any]], path_part: str) -> set[str]:
    return {event["client"] for event in events if path_part in event["path"]}


@pytest_twisted.ensureDeferred
async def test_trusted_proxy_headers_shape_locations_and_the_access_events(
    start_registry: Starter, access_events: list[dict[str, Any]]
) -> None:
    registry = await start_registry(
        {"http": {"trusted_proxies": "127.0.0.1", "relativeurls": "false"}}
    )
    response = await treq.post(f"{registry.url}/v2/fwd/app/blobs/uploads/", headers=FORWARDED)
    await response.content()
    assert response.code == 202
    upload_url = location_of(response)
    assert upload_url.startswith("https://registry.example.com:8443/v2/fwd/app/blobs/uploads/")

    data = b"layer behind a proxy"
    upload = upload_url.removeprefix("https://registry.example.com:8443")
    response = await treq.put(
        f"{registry.url}{upload}?digest={sha256(data)}", data=data, headers=FORWARDED
    )
    await response.content()
    assert response.code == 201
    assert header(response, "location") == (
        f"https://registry.example.com:8443/v2/fwd/app/blobs/{sha256(data)}"
    )
    assert clients_of(access_events, "/v2/fwd/app/") == {"203.0.113.7"}

    # The standard header, from a proxy that sends only it.
    forwarded = {"Forwarded": 'for="[2001:db8::9]:4711";proto=https;host=r.example'}
    response = await treq.post(f"{registry.url}/v2/fwd/rfc/blobs/uploads/", headers=forwarded)
    await response.content()
    assert location_of(response).startswith("https://r.example/v2/fwd/rfc/blobs/uploads/")
    assert clients_of(access_events, "/v2/fwd/rfc/") == {"2001:db8::9"}

    # The same registry, asked directly: its own scheme and the Host the client sent.
    response = await treq.post(f"{registry.url}/v2/fwd/direct/blobs/uploads/")
    await response.content()
    assert location_of(response).startswith(f"{registry.url}/v2/fwd/direct/")
    assert clients_of(access_events, "/v2/fwd/direct/") == {"127.0.0.1"}


@pytest_twisted.ensureDeferred
async def test_headers_are_ignored_without_trusted_proxies(
    start_registry: Starter, access_events: list[dict[str, Any]]
) -> None:
    # 127.0.0.2 is trusted, but the requests come from 127.0.0.1.
    registry = await start_registry(
        {"http": {"trusted_proxies": "127.0.0.2 10.0.0.0/8", "relativeurls": "false"}}
    )
    response = await treq.post(f"{registry.url}/v2/fwd/app/blobs/uploads/", headers=FORWARDED)
    await response.content()
    assert response.code == 202
    assert location_of(response).startswith(f"{registry.url}/v2/fwd/app/")
    assert clients_of(access_events, "/v2/fwd/app/") == {"127.0.0.1"}


@pytest.fixture
def htpasswd(tmp_path: Path) -> dict[str, dict[str, str]]:
    hashed = bcrypt.hashpw(b"right-password", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"alice:{hashed}\n")
    return {
        "auth": {"max_failures": "3", "cooldown": "600s"},
        "auth.htpasswd": {"path": str(tmp_path / "htpasswd")},
    }


def login(password: str, client: str | None) -> dict[str, str]:
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    if client is not None:
        headers["X-Forwarded-For"] = client
    return headers


async def status(url: str, password: str, client: str | None) -> int:
    response = await treq.get(f"{url}/v2/", headers=login(password, client))
    await response.content()
    return int(response.code)


@pytest_twisted.ensureDeferred
async def test_failed_logins_count_against_the_forwarded_client(
    start_registry: Starter, htpasswd: dict[str, dict[str, str]]
) -> None:
    registry = await start_registry({**htpasswd, "http": {"trusted_proxies": "127.0.0.1"}})
    guesser, neighbour = "203.0.113.7", "203.0.113.8"
    codes = [await status(registry.url, f"guess-{n}", guesser) for n in range(4)]
    assert codes == [401, 401, 401, 429]
    # Blocked even with the right password; the neighbour and the proxy itself are not.
    response = await treq.get(f"{registry.url}/v2/", headers=login("right-password", guesser))
    assert response.code == 429
    assert header(response, "retry-after") is not None
    assert await error_codes(response) == ["TOOMANYREQUESTS"]
    assert await status(registry.url, "right-password", neighbour) == 200
    assert await status(registry.url, "right-password", None) == 200
    # A guesser cannot escape by writing another address in front of the proxy's entry.
    assert await status(registry.url, "right-password", f"{neighbour}, {guesser}") == 429


@pytest_twisted.ensureDeferred
async def test_without_trusted_proxies_failures_count_against_the_peer(
    start_registry: Starter, htpasswd: dict[str, dict[str, str]]
) -> None:
    registry = await start_registry(htpasswd)
    codes = [await status(registry.url, f"guess-{n}", f"203.0.113.{n}") for n in range(1, 5)]
    assert codes == [401, 401, 401, 429]
    assert await status(registry.url, "right-password", "203.0.113.99") == 429
