"""
TLS listeners over real loopback sockets: server certificates, client certificates (mTLS) as
principals, and ALPN offering h2 only when HTTP/2 is enabled.  All keys and certificates are
generated per run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.client import ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from registry.auth.controllers import ClientCertificateAccessController
from registry.auth.policy import Policy
from registry.http.tls import (
    TLSSettings,
    server_endpoint,
    split_description,
    warn_if_plain_public,
)
from tests.auth import pki
from tests.auth.conftest import LogCapture, reactor
from tests.auth.site import http_client, serving
from tests.e2e.tools import require, run


class PKI:
    def __init__(self, directory: str) -> None:
        self.ca_key = pki.new_key("ec")
        self.ca = pki.certificate("Test CA", self.ca_key, ca=True)
        server_key = pki.new_key("ec")
        server = pki.certificate("localhost", server_key, (self.ca_key, self.ca), server=True)
        self.key_path = pki.write(os.path.join(directory, "key.pem"), pki.pem_key(server_key))
        self.cert_path = pki.write(os.path.join(directory, "cert.pem"), pki.pem_cert(server))
        self.ca_path = pki.write(os.path.join(directory, "ca.pem"), pki.pem_cert(self.ca))
        client_key = pki.new_key("rsa")
        client = pki.certificate("alice", client_key, (self.ca_key, self.ca), client=True)
        self.client_pem = pki.pem_cert(client) + pki.pem_key(client_key)
        rogue_ca_key = pki.new_key("ec")
        rogue_ca = pki.certificate("Rogue CA", rogue_ca_key, ca=True)
        rogue_key = pki.new_key("ec")
        rogue = pki.certificate("alice", rogue_key, (rogue_ca_key, rogue_ca), client=True)
        self.rogue_pem = pki.pem_cert(rogue) + pki.pem_key(rogue_key)

    def description(self) -> str:
        return f"ssl:0:interface=127.0.0.1:privateKey={self.key_path}:certKey={self.cert_path}"

    def client_options(
        self, client_pem: bytes | None = None, protocols: list[bytes] | None = None
    ) -> Any:
        return pki.client_tls(self.ca, client_pem, protocols)


@pytest.fixture
def certs(tmp_path: os.PathLike[str]) -> PKI:
    return PKI(str(tmp_path))


@implementer(IPolicyForHTTPS)
class _Policy:
    def __init__(self, options: Any) -> None:
        self.options = options

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.options


async def fetch(certs: PKI, port: int, scope: str = "", client_pem: bytes | None = None) -> Any:
    client = http_client(_Policy(certs.client_options(client_pem)))
    url = f"https://127.0.0.1:{port}/v2/" + (f"?scope={scope}" if scope else "")
    response = await client.get(url)
    return response.code, json.loads(await response.content())


CONTROLLER = ClientCertificateAccessController(Policy.allow_authenticated(["public/*"]))


@pytest_twisted.ensureDeferred
async def test_server_certificate(certs: PKI) -> None:
    endpoint = server_endpoint(reactor(), certs.description(), None)
    async with serving(CONTROLLER, endpoint) as port:
        code, body = await fetch(certs, port, "repository:public/a:pull")
        assert (code, body["principal"]) == (200, None)


@pytest_twisted.ensureDeferred
async def test_a_certificate_file_holding_its_chain_serves_the_chain(
    certs: PKI, tmp_path: os.PathLike[str]
) -> None:
    """A "fullchain.pem" (leaf, then intermediate), what nginx and registry:2 serve whole:
    a client that trusts only the root verifies the server through the intermediate the file
    carries.  Served the leaf alone, the handshake failed ("unable to get local issuer")."""
    intermediate_key = pki.new_key("ec")
    intermediate = pki.certificate(
        "Test Intermediate", intermediate_key, (certs.ca_key, certs.ca), ca=True
    )
    leaf_key = pki.new_key("ec")
    leaf = pki.certificate("localhost", leaf_key, (intermediate_key, intermediate), server=True)
    key = pki.write(os.path.join(tmp_path, "leaf.key"), pki.pem_key(leaf_key))
    full = pki.write(os.path.join(tmp_path, "fullchain.pem"), pki.pem_cert(leaf, intermediate))
    endpoint = server_endpoint(
        reactor(), f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={full}", None
    )
    async with serving(CONTROLLER, endpoint) as port:
        code, body = await fetch(certs, port, "repository:public/a:pull")
        assert (code, body["principal"]) == (200, None)


@pytest_twisted.ensureDeferred
async def test_mtls_required(certs: PKI) -> None:
    tls = TLSSettings(clientcas=certs.ca_path, clientauth="required")
    endpoint = server_endpoint(reactor(), certs.description(), tls)
    async with serving(CONTROLLER, endpoint) as port:
        code, body = await fetch(certs, port, "repository:team/app:push", certs.client_pem)
        assert (code, body["principal"]) == (200, "alice")  # the certificate's CN
        # Without a certificate, or with one from a CA not in clientcas, TLS fails: no response.
        with pytest.raises(ResponseNeverReceived) as no_cert:
            await fetch(certs, port, "repository:public/a:pull")
        assert "SSL" in repr(no_cert.value.reasons[0].value)
        with pytest.raises(ResponseNeverReceived) as rogue:
            await fetch(certs, port, "repository:public/a:pull", certs.rogue_pem)
        assert "SSL" in repr(rogue.value.reasons[0].value)


@pytest_twisted.ensureDeferred
async def test_a_failed_handshake_is_one_line_naming_the_client_and_why(
    certs: PKI, logs: LogCapture
) -> None:
    """A refused client certificate leaves no request, so no access line: the failure is
    said, as registry:2 says "TLS handshake error from ...", once per connection."""
    tls = TLSSettings(clientcas=certs.ca_path, clientauth="required")
    endpoint = server_endpoint(reactor(), certs.description(), tls)
    async with serving(CONTROLLER, endpoint) as port:
        with pytest.raises(ResponseNeverReceived):
            await fetch(certs, port, "repository:public/a:pull", certs.rogue_pem)
        for _ in range(100):  # bounded: the server sees the connection end within a turn
            if any("TLS handshake" in m for m in logs.messages()):
                break
            await deferLater(reactor(), 0.01, lambda: None)
    lines = [m for m in logs.messages() if "TLS handshake" in m]
    assert lines == ["TLS handshake with 127.0.0.1 failed: certificate verify failed"], lines


def test_handshake_failures_are_said_a_bounded_number_of_times_a_minute(
    logs: LogCapture,
) -> None:
    from OpenSSL import SSL

    from registry.http._tls_layer import HANDSHAKE_LINES_PER_MINUTE, HandshakeFailures

    now = [0.0]
    failures = HandshakeFailures(clock=lambda: now[0])
    error = SSL.Error([("SSL routines", "", "no shared cipher")])

    class Peer:
        host = "192.0.2.1"

    for _ in range(HANDSHAKE_LINES_PER_MINUTE + 25):
        failures.failed(Peer(), error)
    now[0] = 61.0
    failures.failed(Peer(), error)
    lines = [m for m in logs.messages() if "TLS handshake" in m]
    assert lines == (
        ["TLS handshake with 192.0.2.1 failed: no shared cipher"] * HANDSHAKE_LINES_PER_MINUTE
        + ["25 more TLS handshake failures in the last minute"]
        + ["TLS handshake with 192.0.2.1 failed: no shared cipher"]
    )


@pytest_twisted.ensureDeferred
async def test_mtls_optional(certs: PKI) -> None:
    tls = TLSSettings(clientcas=certs.ca_path, clientauth="optional")
    endpoint = server_endpoint(reactor(), certs.description(), tls)
    async with serving(CONTROLLER, endpoint) as port:
        code, body = await fetch(certs, port, "repository:team/app:push", certs.client_pem)
        assert (code, body["principal"]) == (200, "alice")
        code, body = await fetch(certs, port, "repository:public/a:pull")
        assert (code, body["principal"]) == (200, None)
        code, body = await fetch(certs, port, "repository:team/app:pull")
        assert code == 403 and body["errors"][0]["code"] == "DENIED"


@implementer(IHandshakeListener)
class _ALPNProbe(Protocol):
    def __init__(self) -> None:
        self.negotiated: defer.Deferred[bytes | None] = defer.Deferred()

    def handshakeCompleted(self) -> None:
        self.negotiated.callback(self.transport.negotiatedProtocol)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


async def negotiated(certs: PKI, port: int, protocols: list[bytes]) -> bytes | None:
    endpoint = wrapClientTLS(
        certs.client_options(protocols=protocols),
        TCP4ClientEndpoint(reactor(), "127.0.0.1", port),
    )
    probe = await endpoint.connect(Factory.forProtocol(_ALPNProbe))
    return await probe.negotiated


@pytest.mark.parametrize(("http2", "expected"), [(False, b"http/1.1"), (True, b"h2")])
@pytest_twisted.ensureDeferred
async def test_alpn_offers_h2_only_when_enabled(certs: PKI, http2: bool, expected: bytes) -> None:
    endpoint = server_endpoint(reactor(), certs.description(), TLSSettings(http2=http2))
    async with serving(CONTROLLER, endpoint) as port:
        assert await negotiated(certs, port, [b"h2", b"http/1.1"]) == expected
        assert await negotiated(certs, port, [b"http/1.1"]) == b"http/1.1"


def tls12_handshake(port: int, cipher: str) -> str | None:
    """The TLS 1.2 suite a client offering only ``cipher`` gets; None when refused."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(cipher)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        try:
            with context.wrap_socket(raw) as sock:
                negotiated = sock.cipher()
                return negotiated[0] if negotiated else None
        except ssl.SSLError:
            return None


@pytest.mark.parametrize(
    ("cipher", "accepted"),
    [
        ("ECDHE-ECDSA-AES128-SHA", False),  # CBC, SHA-1 MAC
        ("ECDHE-ECDSA-AES256-SHA384", False),  # CBC
        ("ECDHE-ECDSA-AES128-GCM-SHA256", True),
        ("ECDHE-ECDSA-AES256-GCM-SHA384", True),
        ("ECDHE-ECDSA-CHACHA20-POLY1305", True),
    ],
)
@pytest_twisted.ensureDeferred
async def test_tls12_offers_only_aead_suites(certs: PKI, cipher: str, accepted: bool) -> None:
    """docs/tls.md: ECDHE with AES-GCM or ChaCha20-Poly1305 only, as registry:2; Twisted's
    defaults also took CBC suites with SHA-1 MACs."""
    from twisted.internet.threads import deferToThread

    endpoint = server_endpoint(reactor(), certs.description(), None)
    async with serving(CONTROLLER, endpoint) as port:
        got = await deferToThread(tls12_handshake, port, cipher)
        assert got == (cipher if accepted else None)


@pytest_twisted.ensureDeferred
async def test_plain_descriptions_go_to_twisted() -> None:
    endpoint = server_endpoint(reactor(), "tcp:0:interface=127.0.0.1", None)
    async with serving(CONTROLLER, endpoint) as port:
        response = await http_client().get(
            f"http://127.0.0.1:{port}/v2/?scope=repository:public/a:pull"
        )
        assert response.code == 200
        await response.content()


def test_description_parsing_and_refusals(certs: PKI) -> None:
    assert split_description(r"ssl:5443:privateKey=C\:\\k.pem:interface=\:\:1") == (
        "ssl",
        ["5443"],
        {"privateKey": "C:\\k.pem", "interface": "::1"},
    )
    assert split_description("8080") == ("tcp", ["8080"], {})
    with pytest.raises(ValueError, match="privateKey"):
        server_endpoint(reactor(), "ssl:5443", None)
    with pytest.raises(ValueError, match="unknown ssl"):
        server_endpoint(reactor(), certs.description() + ":sslmethod=TLSv1", None)
    with pytest.raises(ValueError, match="port"):
        server_endpoint(reactor(), f"ssl:privateKey={certs.key_path}", None)
    with pytest.raises(ValueError, match="clientcas"):
        TLSSettings(clientauth="required")
    with pytest.raises(ValueError):
        TLSSettings(clientcas=certs.ca_path, clientauth="sometimes")


@pytest.mark.parametrize(
    ("description", "auth", "warns"),
    [
        ("tcp:5000", True, True),
        ("5000", True, True),
        ("tcp:5000:interface=0.0.0.0", True, True),
        ("tcp:5000:interface=192.168.1.10", True, True),
        ("tcp6:5000:interface=\\:\\:", True, True),
        ("tcp:5000:interface=127.0.0.1", True, False),
        ("tcp:5000:interface=localhost", True, False),
        ("tcp6:5000:interface=\\:\\:1", True, False),
        ("tcp:5000", False, False),
        ("ssl:5443:privateKey=k.pem", True, False),
        ("unix:/run/registry.sock", True, False),
    ],
)
def test_warn_if_plain_public(description: str, auth: bool, warns: bool) -> None:
    warning = warn_if_plain_public(description, auth)
    assert (warning is not None) is warns
    if warning:
        assert "clear text" in warning and description in warning


@pytest_twisted.ensureDeferred
async def test_certificate_users_with_password_fallback(
    certs: PKI, tmp_path: os.PathLike[str], threadpool: Any
) -> None:
    from twisted.internet.task import Clock

    from tests.auth.test_controllers_http import basic_controller

    basic = basic_controller(tmp_path, threadpool, Clock())
    controller = ClientCertificateAccessController(basic.policy, basic)
    tls = TLSSettings(clientcas=certs.ca_path, clientauth="optional")
    endpoint = server_endpoint(reactor(), certs.description(), tls)
    async with serving(controller, endpoint) as port:
        # The certificate names alice, whose group may push to team/*.
        code, body = await fetch(certs, port, "repository:team/app:push", certs.client_pem)
        assert (code, body["principal"], body["groups"]) == (200, "alice", ["devs"])
        # No certificate: the htpasswd controller answers, with its Basic challenge.
        client = http_client(_Policy(certs.client_options()))
        url = f"https://127.0.0.1:{port}/v2/?scope=repository:team/app:push"
        response = await client.get(url)
        await response.content()
        assert response.code == 401
        assert response.headers.getRawHeaders("www-authenticate") == ['Basic realm="test realm"']
        response = await client.get(url, auth=("alice", "wonderland"))
        assert response.code == 200
        assert json.loads(await response.content())["principal"] == "alice"


@pytest_twisted.ensureDeferred
async def test_client_certificate_over_http2(certs: PKI, tmp_path: Path) -> None:
    """
    An HTTP/2 request's certificate is found through its stream's connection
    (`twisted_internals.h2_connection`): the stream's own transport is not the TLS one.
    """
    client_pem = pki.write(str(tmp_path / "client.pem"), certs.client_pem)
    tls = TLSSettings(clientcas=certs.ca_path, clientauth="optional", http2=True)
    endpoint = server_endpoint(reactor(), certs.description(), tls)
    async with serving(CONTROLLER, endpoint) as port:
        url = f"https://127.0.0.1:{port}/v2/?scope=repository:public/a:pull"
        output = await run(
            require("curl"), "-sS", "--http2", "--cacert", certs.ca_path, "--cert", client_pem,
            "-w", "\n%{http_version}", url,
        )  # fmt: skip
    body, version = output.rsplit("\n", 1)
    assert version == "2"
    assert json.loads(body)["principal"] == "alice"
