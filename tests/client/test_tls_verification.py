"""
A server whose TLS certificate does not verify is a configuration error, not an outage: the
call fails at once with `UntrustedCertificate` naming the origin and what failed, after one
connection (no retries), and no request reaches the server.  A TLS handshake the server
refuses (it wants a client certificate) stays `Unavailable`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet import ssl

from registry.client import TLSOptions, Unavailable, UntrustedCertificate
from tests.auth import pki
from tests.client.conftest import ClientFactory, reactor
from tests.fakes.upstream import FakeUpstream, start_fake_upstream


def connections(fake: FakeUpstream) -> int:
    """TCP connections the fake's registry listener accepted."""
    stats: Any = fake.stats()["registry_connections"]
    return int(stats["opened"])


@pytest_twisted.ensureDeferred
async def test_a_certificate_from_an_unknown_ca_fails_at_once(
    tls_fake: FakeUpstream, make_client: ClientFactory
) -> None:
    """The fake's CA is not trusted (the platform's store is): one connection, no request,
    `UntrustedCertificate` with the origin and OpenSSL's verdict; never `Unavailable`."""
    tls_fake.content.add_image("library/alpine", "3", [100])
    client = make_client(tls_fake.url, retries=3, backoff=0.5)
    with pytest.raises(UntrustedCertificate) as info:
        await client.manifest("library/alpine", "3")
    error = info.value
    assert not isinstance(error, Unavailable)
    assert error.host == tls_fake.url
    assert "certificate verify failed" in error.failure
    assert str(error).startswith(f"the TLS certificate of {tls_fake.url} did not verify: ")
    assert connections(tls_fake) == 1
    assert tls_fake.log == []


def _certificate_for(name: str, tmp_path: Path, san: bool = True) -> tuple[Any, str]:
    """Server options for a certificate valid for ``name`` only, from a CA written to a
    file (returned: a bundle that trusts it).  ``san=False``: the name only as the subject's
    CN, no subjectAltName (valid for no host: browsers and Go refuse it)."""
    ca_key, key = pki.new_key("ec"), pki.new_key("ec")
    ca = pki.certificate("test CA", ca_key, ca=True)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    certificate = builder.sign(ca_key, hashes.SHA256())
    bundle = pki.write(tmp_path / "ca.pem", pki.pem_cert(ca))
    return ssl.CertificateOptions(privateKey=key, certificate=certificate), bundle


@pytest_twisted.async_yield_fixture
async def other_host(tmp_path: Path) -> AsyncIterator[tuple[FakeUpstream, str]]:
    """The fake over TLS with a certificate of a trusted CA, but for ``other.example``."""
    options, bundle = _certificate_for("other.example", tmp_path)
    fake = await start_fake_upstream(reactor, tls=options)
    yield fake, bundle
    await fake.stop()


@pytest_twisted.ensureDeferred
async def test_a_certificate_for_another_host_fails_at_once(
    other_host: tuple[FakeUpstream, str], make_client: ClientFactory
) -> None:
    """Trusted CA, wrong name: the host name check's verdict, at once, after one connection."""
    fake, bundle = other_host
    client = make_client(fake.url, tls=TLSOptions(ca_file=bundle), retries=3, backoff=0.5)
    with pytest.raises(UntrustedCertificate) as info:
        await client.ping()
    assert info.value.host == fake.url
    assert info.value.failure == "the certificate is not valid for 127.0.0.1"
    assert connections(fake) == 1
    assert fake.log == []


@pytest_twisted.async_yield_fixture
async def no_san(tmp_path: Path) -> AsyncIterator[tuple[FakeUpstream, str]]:
    """The fake over TLS with a certificate of a trusted CA that has no subjectAltName (its
    CN names the address asked for)."""
    options, bundle = _certificate_for("127.0.0.1", tmp_path, san=False)
    fake = await start_fake_upstream(reactor, tls=options)
    yield fake, bundle
    await fake.stop()


@pytest_twisted.ensureDeferred
async def test_a_certificate_without_subject_alt_names_is_valid_for_no_host(
    no_san: tuple[FakeUpstream, str], make_client: ClientFactory
) -> None:
    """Trusted CA, no subjectAltName: refused like a wrong name.  Twisted's own host check
    only logged service_identity's error for such a certificate and let the handshake go on,
    so it was taken for any host (registry.http.host_check)."""
    fake, bundle = no_san
    client = make_client(fake.url, tls=TLSOptions(ca_file=bundle), retries=3, backoff=0.5)
    with pytest.raises(UntrustedCertificate) as info:
        await client.ping()
    assert info.value.failure == "the certificate is not valid for 127.0.0.1"
    assert connections(fake) == 1
    assert fake.log == []


@pytest_twisted.ensureDeferred
async def test_a_verified_certificate_still_works(
    tls_fake: FakeUpstream, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The same fake, its CA trusted: answers."""
    image = tls_fake.content.add_image("library/alpine", "3", [100])
    client = make_client(tls_fake.url, ca_bundle=tmp_path / "ca.pem")
    assert str((await client.manifest("library/alpine", "3")).digest) == image.digest
