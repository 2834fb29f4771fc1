"""
The nginx example of docs/reverse-proxy.md, run for real: the ``nginx`` block and the ``ini``
block are taken from the document (so it cannot drift from what is tested), nginx terminates
TLS in front of the registry, and a client on 127.0.0.2 pushes a blob (one request, and one in
a chunked PATCH) and a manifest and pulls them back through it.  Location headers must point at
nginx, with nginx's scheme, and the registry must see the client's address, not nginx's.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory
from zope.interface import implementer

from tests.auth import pki
from tests.e2e.client import PatternBody, header, sha256
from tests.e2e.conftest import Starter
from tests.e2e.harness import REPO_ROOT, free_port, wait_listening

DOC = REPO_ROOT / "docs" / "reverse-proxy.md"
# The client's own loopback address: not nginx's (127.0.0.1), so the registry can only know it
# from X-Forwarded-For.
CLIENT_ADDRESS = "127.0.0.2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def doc_block(language: str) -> str:
    """The one fenced block of ``language`` in the document."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"expected one ```{language} block in {DOC}"
    return str(blocks[0])


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace each placeholder of the document, which must be there exactly once."""
    for placeholder, value in replacements.items():
        assert text.count(placeholder) == 1, f"{placeholder!r} is not once in {DOC}"
        text = text.replace(placeholder, value)
    return text


def find_nginx() -> str:
    """nginx lives in /usr/sbin, which is not on every PATH."""
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI=true (make tools installs nginx-light)")
        pytest.skip("nginx is not installed (make tools installs nginx-light)")
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("runs nginx as root (its workers switch to root to read the test's files)")
    return path


@attrs.define
class Nginx:
    url: str
    error_log: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Any]:
    binary = find_nginx()
    started: list[Nginx] = []

    def start(server_block: str, port: int) -> Nginx:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(
            # What a packaged nginx.conf around the server block would say, with every path
            # in the test's folder.
            f"""
user root;
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{server_block}
}}
"""
        )
        log = open(prefix / "stderr.log", "wb")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=log,
            stderr=log,
        )
        log.close()
        nginx = Nginx(f"https://127.0.0.1:{port}", prefix / "error.log", process)
        started.append(nginx)
        try:
            wait_listening(port, process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {(prefix / 'stderr.log').read_text()}") from None
        return nginx

    yield start
    for nginx in started:
        nginx.process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
        try:
            nginx.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            nginx.process.kill()
            nginx.process.wait()


@implementer(IAgentEndpointFactory)
@attrs.define
class FromAddress:
    """TLS connections that leave from ``CLIENT_ADDRESS``, trusting the test CA."""

    options: Any

    def endpointForURI(self, uri: Any) -> Any:
        tcp = TCP4ClientEndpoint(
            reactor, uri.host.decode(), uri.port, bindAddress=(CLIENT_ADDRESS, 0)
        )
        return wrapClientTLS(self.options, tcp)


@pytest.fixture
def problems() -> Iterator[list[str]]:
    """Tracebacks and errors the registry logs (there must be none)."""
    found: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            found.append(repr(event)[:2000])

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def access_clients() -> Iterator[list[str]]:
    """The client address of each request in the registry's access log."""
    clients: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("access"):
            clients.append(event["client"])

    globalLogPublisher.addObserver(observe)
    yield clients
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_push_and_pull_through_the_documented_nginx(
    start_registry: Starter,
    nginx_factory: Any,
    tmp_path: Path,
    problems: list[str],
    access_clients: list[str],
) -> None:
    # The registry, configured as the document says (plus absolute URLs, to see them).
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(doc_block("ini"))
    sections = {name: dict(parser.items(name)) for name in parser.sections()}
    assert sections["http"]["trusted_proxies"] == "127.0.0.1"
    del sections["http"]["port"]  # the test picks a free one
    sections["http"]["relativeurls"] = "false"
    registry = await start_registry(sections)
    registry_port = int(registry.url.rsplit(":", 1)[1])

    # nginx, from the document's block, on a free port with a certificate for 127.0.0.1.
    ca_key, server_key = pki.new_key("ec"), pki.new_key("ec")
    ca = pki.certificate("test CA", ca_key, ca=True)
    server = pki.certificate("127.0.0.1", server_key, (ca_key, ca), server=True)
    cert = pki.write(tmp_path / "fullchain.pem", pki.pem_cert(server, ca))
    key = pki.write(tmp_path / "privkey.pem", pki.pem_key(server_key))
    nginx_port = free_port()  # nginx's listen directive needs a port up front
    block = substitute(
        doc_block("nginx"),
        {
            "server 127.0.0.1:5000;": f"server 127.0.0.1:{registry_port};",
            "listen 443 ssl;": f"listen 127.0.0.1:{nginx_port} ssl;",
            "/etc/ssl/registry.example.com/fullchain.pem": cert,
            "/etc/ssl/registry.example.com/privkey.pem": key,
        },
    )
    nginx = nginx_factory(block, nginx_port)
    base = nginx.url
    options = ssl.optionsForClientTLS("127.0.0.1", ssl.Certificate.loadPEM(pki.pem_cert(ca)))
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, FromAddress(options), pool))

    response = await client.get(f"{base}/v2/")
    assert response.code == 200, await response.text()
    assert header(response, "docker-distribution-api-version") == "registry/2.0"
    await response.content()

    # A blob in one request.
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    response = await client.post(
        f"{base}/v2/behind/nginx/blobs/uploads/?digest={sha256(config)}", data=config
    )
    assert response.code == 201, await response.text()
    assert header(response, "location") == f"{base}/v2/behind/nginx/blobs/{sha256(config)}"
    await response.content()

    # A layer in a chunked PATCH (no Content-Length), then the closing PUT.
    response = await client.post(f"{base}/v2/behind/nginx/blobs/uploads/")
    assert response.code == 202, await response.text()
    await response.content()
    location = header(response, "location")
    assert location is not None and location.startswith(f"{base}/v2/behind/nginx/blobs/uploads/")
    layer = PatternBody(count=6, block_size=1024 * 1024, seed=7)
    digest = layer.digest()
    layer.length = UNKNOWN_LENGTH  # type: ignore[assignment]
    response = await client.patch(location, data=layer)
    assert response.code == 202, await response.text()
    await response.content()
    assert header(response, "range") == f"0-{6 * 1024 * 1024 - 1}"
    location = header(response, "location")
    assert location is not None and location.startswith(f"{base}/v2/behind/nginx/blobs/uploads/")
    response = await client.put(f"{location}?digest={digest}")
    assert response.code == 201, await response.text()
    await response.content()
    assert header(response, "location") == f"{base}/v2/behind/nginx/blobs/{digest}"
    assert header(response, "docker-content-digest") == digest

    # A manifest naming both.
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest,
                    "size": 6 * 1024 * 1024,
                }
            ],
        }
    ).encode()
    response = await client.put(
        f"{base}/v2/behind/nginx/manifests/v1",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.code == 201, await response.text()
    await response.content()
    assert header(response, "location") == f"{base}/v2/behind/nginx/manifests/{sha256(manifest)}"

    # Pulled back through nginx, byte for byte.
    response = await client.get(
        f"{base}/v2/behind/nginx/manifests/v1", headers={"Accept": OCI_MANIFEST}
    )
    assert response.code == 200
    assert await response.content() == manifest
    assert header(response, "docker-content-digest") == sha256(manifest)
    response = await client.get(f"{base}/v2/behind/nginx/blobs/{digest}")
    assert response.code == 200
    assert sha256(await response.content()) == digest

    # The registry saw the client, never nginx; nobody logged an error.
    assert len(access_clients) == 8
    assert set(access_clients) == {CLIENT_ADDRESS}
    assert problems == []
    errors = [
        line
        for line in nginx.error_log.read_text().splitlines()
        if re.search(r"\[(error|crit|alert|emerg)\]", line)
    ]
    assert errors == []
