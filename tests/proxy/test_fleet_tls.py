"""
TLS on the fleet's peer stream: real twistd instances whose ``[fleet] listen`` is an ``ssl:``
endpoint, checking each other's certificates against ``[fleet] tls_cafile`` and presenting
client certificates (mutual TLS).  Keys and certificates are made per run (tests/auth/pki.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.client import Agent

from registry.api.digests import Digest
from registry.client._tls import TLSOptions
from registry.config import FleetConfig
from registry.proxy.fleet.peer import PeerClient, PeerTLSFailure
from registry.proxy.fleet.wiring import check_tls, peer_tls
from registry.server.exit import StartupError
from tests.auth import pki
from tests.e2e.harness import free_port
from tests.fakes.upstream import FakeUpstream
from tests.proxy.helpers import reactor, wait_until
from tests.proxy.redisserver import RedisServer, redis_server  # noqa: F401 - fixture
from tests.proxy.test_fleet import (  # noqa: F401 - fixture
    HELD_AFTER,
    LAYER,
    SECRET,
    Fleet,
    blob_url,
    fake,
    run_twistd,
    start_pull,
)
from tests.storage.s3server import S3Server

NO_DIGEST = "sha256:" + "0" * 64


class FleetPKI:
    """The fleet's CA, one server certificate for 127.0.0.1 and one client certificate,
    both signed by it; and a CA that signed nothing of this fleet."""

    def __init__(self, directory: Path) -> None:
        ca_key, key, client_key = pki.new_key("ec"), pki.new_key("ec"), pki.new_key("ec")
        ca = pki.certificate("fleet CA", ca_key, ca=True)
        server = pki.certificate("127.0.0.1", key, (ca_key, ca), server=True)
        client = pki.certificate("instance", client_key, (ca_key, ca), client=True)
        self.ca = pki.write(directory / "fleet-ca.pem", pki.pem_cert(ca))
        self.cert = pki.write(directory / "peer.pem", pki.pem_cert(server))
        self.key = pki.write(directory / "peer.key", pki.pem_key(key))
        self.client_cert = pki.write(directory / "client.pem", pki.pem_cert(client))
        self.client_key = pki.write(directory / "client.key", pki.pem_key(client_key))
        rogue = pki.certificate("another CA", pki.new_key("ec"), ca=True)
        self.rogue_ca = pki.write(directory / "rogue-ca.pem", pki.pem_cert(rogue))

    def fleet_keys(self, rogue: tuple[int, ...] = ()) -> Callable[[int], dict[str, str]]:
        """``[fleet]`` keys of instance ``index``: TLS listener, mutual TLS; the instances in
        ``rogue`` trust the other CA."""

        def keys(index: int) -> dict[str, str]:
            return {
                "listen": f"ssl:{free_port()}:interface=127.0.0.1"
                f":privateKey={self.key}:certKey={self.cert}",
                "tls_cafile": self.rogue_ca if index in rogue else self.ca,
                "tls_certfile": self.client_cert,
                "tls_keyfile": self.client_key,
            }

        return keys

    def client(self, *, ca: str | None = None, client_cert: bool = True) -> HTTPClient:
        options = TLSOptions(
            ca_file=ca or self.ca,
            cert_file=self.client_cert if client_cert else None,
            key_file=self.client_key if client_cert else None,
        )
        return HTTPClient(Agent(reactor, contextFactory=options.policy()))


@pytest_twisted.ensureDeferred
async def test_tls_peer_stream_and_a_peer_with_the_wrong_ca(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Instance i0 holds the fill (the upstream held after its first MiB); i1 trusts the
    fleet's CA and streams the fill from i0 over TLS as it arrives; i2 trusts another CA, so
    its peer stream is refused (one warning line) and its client gets the bytes once i0 has
    stored them.  One upstream GET, correct bytes everywhere."""
    certs = FleetPKI(tmp_path)
    running = Fleet(
        tmp_path,
        s3_server,
        redis_server,
        fake.url,
        fleet_keys=certs.fleet_keys(rogue=(2,)),
    )
    running.start()
    try:
        image = fake.content.add_image("library/alpine", "latest", [LAYER])
        digest = image.layers[0].digest
        hold = fake.hold_body(digest, HELD_AFTER)
        holder, trusting, stranger = running.instances
        first = await start_pull(blob_url(holder, digest))
        await wait_until(lambda: hold.arrived == 1, within=60)
        lease = redis_server.command("GET", f"txregistry:fill:hub:{digest}")
        assert running.peer_url(0).encode() in lease  # https://127.0.0.1:<port>
        streamed = await start_pull(blob_url(trusting, digest))
        waiting = Deferred.fromCoroutine(start_pull(blob_url(stranger, digest)))
        refused = f"peer stream of {digest} from instance i0 refused: "

        def stranger_refused() -> bool:
            return refused in stranger.log_path.read_text()

        await wait_until(lambda: streamed.received > 0 and stranger_refused(), within=60)
        assert not hold.released and hold.arrived == 1
        assert not waiting.called  # nothing for i2's client over the peer link
        assert "certificate verify failed" in stranger.log_path.read_text()
        hold.release()
        pulls = [first, streamed, await waiting]
        await gatherResults([p.done for p in pulls])
        assert [p.digest for p in pulls] == [digest] * 3
        assert [p.received for p in pulls] == [LAYER] * 3
        assert fake.count("GET", "cdn", ref=digest) == 1
    finally:
        running.stop()


@pytest_twisted.ensureDeferred
async def test_tls_peer_listener_refuses_plain_http_and_unknown_clients(
    tmp_path: Path,
    s3_server: S3Server,
    redis_server: RedisServer,  # noqa: F811
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Plain HTTP to the ``ssl:`` peer listener gets an HTTP 400 saying so; a TLS client
    without a client certificate, or that does not trust the fleet's CA, gets no answer;
    with both, the listener answers (404: no such fill in flight)."""
    certs = FleetPKI(tmp_path)
    running = Fleet(
        tmp_path, s3_server, redis_server, fake.url, size=1, fleet_keys=certs.fleet_keys()
    )
    running.start()
    try:
        url = f"{running.peer_url(0)}/fills/hub/{NO_DIGEST}"
        auth = {"Authorization": f"Bearer {SECRET}"}
        plain = await treq.get(url.replace("https://", "http://"), headers=auth)
        assert plain.code == 400
        assert await plain.content() == b"Client sent an HTTP request to an HTTPS server.\n"
        answer = await certs.client().get(url, headers=auth)
        assert answer.code == 404
        assert await answer.content() == b"no such fill in flight\n"
        for stranger in (certs.client(client_cert=False), certs.client(ca=certs.rogue_ca)):
            failure: Any = None
            try:
                await stranger.get(url, headers=auth)
            except Exception as exc:
                failure = exc
            assert failure is not None
    finally:
        running.stop()


@pytest_twisted.ensureDeferred
async def test_a_fleet_with_tls_never_opens_a_plain_http_peer(
    fake: FakeUpstream,  # noqa: F811
) -> None:
    """Deny by default: once this instance's fleet uses TLS (here an https advertise), a peer
    URL in plain http (a lease written by a misconfigured instance) is refused before any
    connection, so the secret never crosses the network in clear."""
    fleet = FleetConfig(advertise="https://10.0.0.5:5002", secret=SECRET)
    client = PeerClient(reactor, SECRET, idle=5.0, tls=peer_tls(fleet))
    try:
        with pytest.raises(PeerTLSFailure, match="plain http refused"):
            await client.open(fake.url, "hub", Digest.parse(NO_DIGEST), 0, -1)
    finally:
        await client.close()
    assert fake.log == []


def test_an_ssl_listen_advertised_in_plain_http_stops_start_up_with_one_line(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """An ``ssl:`` listen advertised as ``http://``: the others would only get a 400."""
    certs = FleetPKI(tmp_path)
    fleet = {**certs.fleet_keys()(0), "secret": SECRET, "advertise": "http://127.0.0.1:5002"}
    sections = {
        "proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"},
        "redis": {"addr": redis_server.addr},
        "fleet": fleet,
    }
    result = run_twistd(tmp_path, sections, "--storage", str(tmp_path / "data"))
    assert result.returncode == 1, result.stdout[-2000:]
    [line] = result.stderr.splitlines()
    expected = "txregistry: configuration error: [fleet] advertise: listen is an ssl: endpoint"
    assert line.startswith(expected), line
    assert "Traceback" not in result.stdout


def test_peer_tls_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    """A client certificate without the CA that checks the others' (mutual TLS needs it), a
    key without its certificate, an unreadable file: refused with one line each."""
    certs = FleetPKI(tmp_path)
    cases = [
        (FleetConfig(tls_certfile=certs.client_cert), "tls_certfile: needs tls_cafile"),
        (FleetConfig(tls_keyfile=certs.client_key), "tls_keyfile: needs tls_certfile"),
        (FleetConfig(tls_cafile=str(tmp_path / "missing.pem")), "tls_cafile: cannot read"),
        (FleetConfig(tls_cafile=certs.key), "[fleet] TLS files: no PEM certificate"),
    ]
    for fleet, expected in cases:
        with pytest.raises(StartupError, match=re.escape(expected)):
            check_tls(fleet)
    check_tls(
        FleetConfig(
            tls_cafile=certs.ca, tls_certfile=certs.client_cert, tls_keyfile=certs.client_key
        )
    )


def test_an_unreadable_redis_ca_file_is_refused_naming_its_key(tmp_path: Path) -> None:
    """It failed as "cannot reach Redis at ...: Error 2 connecting ... No such file or
    directory", naming neither the key nor the file."""
    missing = tmp_path / "missing-ca.pem"
    sections = {
        "proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"},
        "redis": {"addr": "127.0.0.1:9", "tls": "true", "tls_cafile": str(missing)},
    }
    result = run_twistd(tmp_path, sections, "--storage", str(tmp_path / "data"))
    assert result.returncode == 1, result.stdout[-2000:]
    assert result.stderr.splitlines() == [
        f"txregistry: configuration error: [redis] tls_cafile: cannot read {missing}"
    ], result.stderr
    assert "Traceback" not in result.stdout
