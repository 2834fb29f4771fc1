"""
The TLS layer of ``ssl:`` listeners (see `registry.http.tls`, which imports this module only
for an ``ssl:`` description: pyOpenSSL and cryptography cost about 13 MiB in every process).
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from twisted.internet import interfaces
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from registry.http import misdirected
from registry.http.tls import TLSMaterialError, TLSSettings

# TLS 1.2 suites offered: forward secrecy (ECDHE) with AEAD encryption only (AES-GCM,
# ChaCha20-Poly1305), as registry:2 (Go's crypto/tls defaults); no CBC, no SHA-1 MAC, no
# RSA key exchange.  TLS 1.3's suites are all AEAD and stay as OpenSSL has them.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
AEAD_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS)

log = Logger()


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise TLSMaterialError(f"{option} {path}: {reason}") from None


def _load_key(option: str, path: str) -> PrivateKeyTypes:
    data = _read(option, path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise TLSMaterialError(
            f"{option} {path} is encrypted; the registry needs an unencrypted key "
            f"(openssl pkey -in {path} -out key.pem)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSMaterialError(f"{option} {path} holds no PEM private key") from None


def _load_certificates(option: str, path: str) -> list[x509.Certificate]:
    data = _read(option, path)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSMaterialError(f"{option} {path} holds no PEM certificate") from None


def _public(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _openssl_reason(exc: SSL.Error) -> str:
    reasons = (
        [str(entry[-1]) for entry in exc.args[0] if isinstance(entry, tuple)] if exc.args else []
    )
    return "; ".join(reasons) or str(exc)


@implementer(interfaces.IOpenSSLContextFactory)
class ServerContextFactory:
    """
    Twisted's `CertificateOptions` (protocol versions, ciphers, curves) given cryptography's
    key and certificates, plus client-certificate verification configured on the context.

    pyOpenSSL's ``Context`` takes cryptography objects directly and deprecates its own
    ``X509``/``PKey`` wrappers, so none are made here.  `CertificateOptions` can only verify
    clients through ``X509`` objects (``caCerts``), so the CA bundle is loaded into the context
    instead, with the same verification flags.
    """

    def __init__(
        self,
        options: CertificateOptions,
        tls: TLSSettings,
        cas: list[x509.Certificate],
        files: dict[str, str] | None = None,
    ) -> None:
        self._options = options
        # When the certificate served stops being valid (clients that verify it refuse it).
        self.expires: datetime.datetime | None = None
        self.certificate_file = ""
        self._tls = tls
        self._cas = cas
        self._files = dict(files or {})  # the ssl: options it was built from, for `reload`
        self._context: SSL.Context | None = None

    def reload(self) -> None:
        """
        Read the key and certificate files again and serve new connections with them (each
        connection asks `getContext`; those open keep theirs).  `TLSMaterialError` naming
        the option and file when they cannot serve; the material loaded before stays then.
        """
        fresh = certificate_options(self._files, self._tls)
        now = datetime.datetime.now(datetime.UTC)
        if expired(fresh, now) and not expired(self, now):
            # Every verifying client would refuse the new one: the one that works stays.
            assert fresh.expires is not None
            raise TLSMaterialError(
                f"{fresh.certificate_file}: the certificate expired on "
                f"{fresh.expires:%Y-%m-%d %H:%M} UTC"
            )
        self._options, self._cas, self._context = fresh._options, fresh._cas, fresh._context
        self.expires, self.certificate_file = fresh.expires, fresh.certificate_file

    def getContext(self) -> SSL.Context:
        if self._context is None:
            context = self._options.getContext()
            if self._tls.clientauth != "none":
                assert self._tls.clientcas
                context.load_verify_locations(self._tls.clientcas)
                for ca in self._cas:
                    context.add_client_ca(ca)  # the CAs a client certificate may come from
                flags = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
                if self._tls.clientauth == "required":
                    flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
                context.set_verify(flags)
            self._context = context
        return self._context


def certificate_options(kwargs: dict[str, str], tls: TLSSettings) -> ServerContextFactory:
    """
    The context factory of an ``ssl:`` listener, its OpenSSL context built here: a key that
    does not match its certificate, an encrypted or unreadable file, a chain OpenSSL refuses
    are a `TLSMaterialError` naming the option and file, at start-up rather than at every
    handshake.
    """
    key_path = kwargs.get("privateKey")
    if not key_path:
        raise ValueError("ssl: endpoints need privateKey=<PEM file>")
    key = _load_key("privateKey", key_path)
    cert_option, cert_path = (
        ("certKey", kwargs["certKey"]) if kwargs.get("certKey") else ("privateKey", key_path)
    )
    # A file holding the certificate and then its chain (a "fullchain.pem", what nginx and
    # registry:2 serve whole) gives the chain too; extraCertChain's come after.
    cert, *chain = _load_certificates(cert_option, cert_path)
    if _public(cert.public_key()) != _public(key.public_key()):
        raise TLSMaterialError(f"privateKey {key_path} does not match {cert_option} {cert_path}")
    if kwargs.get("extraCertChain"):
        chain += _load_certificates("extraCertChain", kwargs["extraCertChain"])
    cas = []
    if tls.clientauth != "none":
        assert tls.clientcas
        cas = _load_certificates("[http] clientcas", tls.clientcas)
    # Twisted's annotations name pyOpenSSL's types; its Context calls accept cryptography's.
    options = CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=cert,  # type: ignore[arg-type]
        extraCertChain=chain,  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AEAD_CIPHERS,
    )
    factory = ServerContextFactory(options, tls, cas, kwargs)
    factory.expires = cert.not_valid_after_utc
    factory.certificate_file = f"{cert_option} {cert_path}"
    try:
        factory.getContext()
    except SSL.Error as exc:
        files = " ".join(f"{k} {v}" for k, v in kwargs.items() if k in _FILE_OPTIONS)
        raise TLSMaterialError(f"{files}: {_openssl_reason(exc)}") from None
    return factory


_FILE_OPTIONS = ("privateKey", "certKey", "extraCertChain")


def expired(factory: ServerContextFactory, now: datetime.datetime) -> bool:
    """Whether the certificate ``factory`` serves is past its end of validity."""
    return factory.expires is not None and factory.expires < now


@implementer(
    interfaces.IProtocolFactory,
    interfaces.IProtocolNegotiationFactory,
    interfaces.ILoggingContext,
)
class _NegotiationFactory:
    """Stands in front of the Site so that ALPN offers our protocols, not the Site's."""

    def __init__(self, wrapped: interfaces.IProtocolFactory, protocols: list[bytes]) -> None:
        self._wrapped = wrapped
        self._protocols = protocols
        misdirected.pass_answers_on(self, wrapped)

    def answered_without_request(self, addr: object, status: int, sent: int) -> None:
        misdirected.IAnswersWithoutRequest(self._wrapped).answered_without_request(
            addr, status, sent
        )

    def acceptableProtocols(self) -> list[bytes]:
        return list(self._protocols)

    def buildProtocol(self, addr: interfaces.IAddress) -> interfaces.IProtocol | None:
        return self._wrapped.buildProtocol(addr)

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def logPrefix(self) -> str:
        wrapped = self._wrapped
        if interfaces.ILoggingContext.providedBy(wrapped):
            return str(wrapped.logPrefix())
        return type(wrapped).__name__


# Handshake failures said at most this many times a minute (each an info line naming the
# client and OpenSSL's reason, as registry:2's "TLS handshake error from ..."); beyond, the
# first failure of a later minute says how many were left unsaid: a client failing
# handshakes in a loop cannot fill the log.
HANDSHAKE_LINES_PER_MINUTE = 10


class HandshakeFailures:
    """Says the TLS handshakes that failed, a bounded number of lines a minute."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._window = -1
        self._said = 0
        self._unsaid = 0

    def failed(self, addr: object, error: SSL.Error) -> None:
        """One line for this failure, unless this minute's lines were said."""
        window = int(self._clock() // 60)
        if window != self._window:
            if self._unsaid:
                log.info(
                    "{count} more TLS handshake failures in the last minute",
                    count=self._unsaid,
                )
            self._window, self._said, self._unsaid = window, 0, 0
        if self._said >= HANDSHAKE_LINES_PER_MINUTE:
            self._unsaid += 1
            return
        self._said += 1
        log.info(
            "TLS handshake with {client} failed: {reason}",
            client=getattr(addr, "host", "-"),
            reason=_openssl_reason(error),
        )


_HANDSHAKE_FAILURES = HandshakeFailures()


class _TLSOrRefusal(TLSMemoryBIOFactory):
    """TLS over TCP, answering plain HTTP sent to the port with Go's 400 (`misdirected`), and
    saying the handshakes that fail (a client certificate refused, no protocol or cipher in
    common), which leave no request and so no access line."""

    def buildProtocol(self, addr: interfaces.IAddress | None) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            misdirected.refuse_plain_http(
                protocol, misdirected.answered_for(self.wrappedFactory, addr)
            )
            _say_handshake_failure(protocol, addr)
        return protocol


def _say_handshake_failure(protocol: Any, addr: object) -> None:
    """Wrap the connection's own protocol's ``connectionLost``: the TLS layer ends it with
    OpenSSL's error when the handshake (or a record after it) fails."""
    inner = getattr(protocol, "wrappedProtocol", None)
    if inner is None:
        return
    lost = inner.connectionLost

    def connection_lost(reason: Any) -> None:
        error = getattr(reason, "value", None)
        if isinstance(error, SSL.Error):
            _HANDSHAKE_FAILURES.failed(addr, error)
        lost(reason)

    inner.connectionLost = connection_lost


@implementer(interfaces.IStreamServerEndpoint)
@attrs.frozen
class TLSServerEndpoint:
    """
    What Twisted's ``SSL4ServerEndpoint`` does (TLS in memory over a TCP port), with the TLS
    layer built here so that it can look at a connection's first bytes before OpenSSL does.
    """

    inner: TCP4ServerEndpoint
    options: interfaces.IOpenSSLContextFactory
    protocols: list[bytes]

    def listen(self, protocolFactory: interfaces.IProtocolFactory) -> Any:
        return self.inner.listen(self.wrap(protocolFactory))

    def wrap(self, protocolFactory: interfaces.IProtocolFactory) -> interfaces.IProtocolFactory:
        """The factory a TCP port of this endpoint runs: TLS in front of ``protocolFactory``."""
        negotiation = _NegotiationFactory(protocolFactory, self.protocols)
        return _TLSOrRefusal(self.options, False, negotiation)
