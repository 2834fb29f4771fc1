"""
A registry reached at an IPv6 address (``http://[::1]:PORT``): the client pings, pushes and
pulls, and ``txregistry copy docker://[::1]:PORT/...`` copies, over a real txregistry
listening on ``::1`` only.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted

from registry.client import TLSOptions, Unavailable, UntrustedCertificate
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.test_copy_command import txregistry
from tests.client.test_layout import push_multi
from tests.e2e.conftest import Starter, tls_listen  # noqa: F401 - fixture
from tests.e2e.harness import free_port


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this machine")

V6_ONLY = r"tcp6:{port}:interface=\:\:1"


async def _v6_registry(start_registry: Starter) -> str:
    """``http://[::1]:PORT`` of a registry listening on ::1 only."""
    registry = await start_registry(listen=V6_ONLY)
    port = registry.url.rpartition(":")[2]
    return f"http://[::1]:{port}"


@pytest_twisted.ensureDeferred
async def test_the_client_talks_to_an_ipv6_address(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    url = await _v6_registry(start_registry)
    client = make_client(url)
    assert await client.ping() == 200
    body, blobs = images.image("amd64", [b"layer"])
    for data in blobs.values():
        await client.upload_blob("demo/app", data)
    await client.put_manifest("demo/app", "v1", body)
    assert (await client.get_manifest("demo/app", "v1")).body == body
    assert [tag async for tag in client.all_tags("demo/app")] == ["v1"]


@pytest_twisted.ensureDeferred
async def test_an_ipv6_address_nothing_listens_on_is_named_as_a_url_writes_it(
    make_client: ClientFactory,
) -> None:
    port = free_port()
    with pytest.raises(Unavailable) as info:
        await make_client(f"http://[::1]:{port}", retries=0).ping()
    assert str(info.value).startswith(f"no answer from http://[::1]:{port}: ConnectionRefused")


@pytest_twisted.ensureDeferred
async def test_txregistry_copy_from_and_to_an_ipv6_address(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    url = await _v6_registry(start_registry)
    index, _ = await push_multi(make_client(url), "demo/app", "v1")
    host = url.removeprefix("http://")
    # --timeout: the https probe of a plain http registry waits that long for an answer.
    options = ["--tls-verify=false", "--timeout=2", "-q"]
    code, out, err = await txregistry(
        "copy", *options, f"docker://{host}/demo/app:v1", f"oci:{tmp_path / 'out'}:v1"
    )
    assert (code, err) == (0, ""), err
    assert out.startswith(f"copied {images.digest(index)}: 3 manifests, 4 blobs")
    code, out, err = await txregistry(
        "copy", *options, f"oci:{tmp_path / 'out'}:v1", f"docker://{host}/demo/back:v2"
    )
    assert (code, err) == (0, ""), err
    assert (await make_client(url).get_manifest("demo/back", "v2")).body == index


@pytest_twisted.ensureDeferred
async def test_tls_to_an_ipv6_address_checks_the_certificate_for_that_address(
    start_registry: Starter,
    make_client: ClientFactory,
    tls_listen: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The registry's certificate names 127.0.0.1 and localhost, not ::1: refused for ::1,
    as the address (not its bracketed form) is what is checked; taken without verification."""
    listen = tls_listen.replace("interface=127.0.0.1", r"interface=\:\:1")
    registry = await start_registry(listen=listen)
    url = f"https://[::1]:{registry.url.rpartition(':')[2]}"
    trusting = TLSOptions(ca_file=tmp_path / "tls-ca.pem")
    with pytest.raises(UntrustedCertificate) as info:
        await make_client(url, tls=trusting).ping()
    assert info.value.failure == "the certificate is not valid for ::1"
    assert await make_client(url, tls=TLSOptions(verify=False)).ping() == 200
