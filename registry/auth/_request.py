"""
What access control reads from a twisted.web request: credentials, source, client certificate.

Kept apart from the controllers so the parsing rules (and their refusal of anything odd) are
written once, and so the controllers stay about decisions.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import TYPE_CHECKING

from twisted.internet.interfaces import ISSLTransport
from twisted.web.iweb import IRequest

from registry.http import twisted_internals
from registry.http.forwarded import origin
from registry.http.headers import header_values

if TYPE_CHECKING:
    # Imported where used: only a TLS connection has a certificate, and a registry without
    # TLS never loads pyOpenSSL or cryptography (registry.lean_imports).
    from cryptography import x509


class MalformedCredentials(ValueError):
    """An Authorization header that is present but unusable (counts as a failed login)."""


def authorization(request: IRequest) -> tuple[str, str] | None:
    """``(scheme lower-cased, credentials)`` from the Authorization header, or None.

    Of several Authorization headers, the first counts, as for registry:2 (Go's
    ``Header.Get``) and nginx (``$http_authorization``, what a reverse proxy in front logs or
    filters on): the caller is who they all say it is."""
    values = header_values(request.requestHeaders, "authorization")
    value = values[0] if values else None
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), rest.strip()


def is_empty_basic(credentials: str) -> bool:
    """
    ``Basic Og==``: an empty user and password.  skopeo and podman send it after a Basic
    challenge when they have no credentials, so it means "anonymous", not a failed login.
    """
    try:
        return base64.b64decode(credentials, validate=True) == b":"
    except ValueError:  # binascii.Error, or characters beyond ASCII
        return False


def basic_credentials(credentials: str) -> tuple[str, str]:
    """Decode Basic credentials strictly; a user name cannot contain ``:`` (RFC 7617)."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except ValueError as e:  # binascii.Error, characters beyond ASCII, UnicodeDecodeError
        raise MalformedCredentials("undecodable Basic credentials") from e
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise MalformedCredentials("Basic credentials without user:password")
    return user, password


def source_address(request: IRequest) -> str:
    """
    The address failures are counted against: the client as `registry.http.forwarded` names
    it (behind a trusted reverse proxy, the address the proxy reports).  IPv6 clients are
    grouped by /64, because one host usually owns a whole /64 and could otherwise rotate
    through it.
    """
    ip = origin(request).client_ip
    if ip is None:
        return "local"  # UNIX sockets: one local source
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def peer_certificate(request: IRequest) -> x509.Certificate | None:
    """
    The client certificate of a TLS connection, if it sent one.  The TLS layer (see
    `registry.http.tls`) only accepts certificates that verify against ``clientcas``, so one
    that is present here has been verified.
    """
    channel = getattr(request, "channel", None)
    candidates = [getattr(request, "transport", None), getattr(channel, "transport", None)]
    conn = twisted_internals.h2_connection(channel)  # an HTTP/2 stream -> its connection
    if conn is not None:
        candidates.append(getattr(conn, "transport", None))
    for transport in candidates:
        if transport is not None and ISSLTransport.providedBy(transport):
            from OpenSSL.crypto import X509

            cert = transport.getPeerCertificate()
            if isinstance(cert, X509):
                return cert.to_cryptography()
    return None


def certificate_user(cert: x509.Certificate) -> str | None:
    """The subject CN, the user name for client-certificate logins."""
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    name = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return name or None
