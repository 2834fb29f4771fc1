"""
Outgoing TLS: a server's certificate must name the host asked for, whatever it holds.

Twisted checks the host name in a verify callback it sets on each client connection, with
service_identity, and fails the handshake when the certificate names other hosts
(``VerificationError``).  A certificate with no subjectAltName at all makes service_identity
raise ``CertificateError`` instead, which that callback only logs, letting the handshake go
on: such a certificate from a trusted CA (a company's own CA issues them) was accepted for any
host, by every HTTPS client here (upstreams, token realms, S3, webhooks, fleet peers, the
client library).

`HostChecked` wraps the connection creator of a policy (`IPolicyForHTTPS.creatorForNetloc`)
and sets its own callback on each connection it makes: OpenSSL's verdict on the chain as it
is, then the host name check, where any error refuses the certificate.  A connection made
without verification (``TLSOptions(verify=False)``) is left alone.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.exceptions import DNSMismatch, IPAddressMismatch
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer


def _service_id(host: str) -> DNS_ID | IPAddress_ID:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return DNS_ID(host)
    return IPAddress_ID(host)


@implementer(IOpenSSLClientConnectionCreator)
class HostChecked:
    """``creator``'s connections, with the host name check made strict (module docstring)."""

    def __init__(self, creator: Any, host: str) -> None:
        self._creator = creator
        self._host = host

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._creator.clientConnectionForTLS(tlsProtocol)
        mode = connection.get_verify_mode()
        if not mode & SSL.VERIFY_PEER:
            return connection  # verification turned off by the caller: nothing to check
        wanted = _service_id(self._host)

        def verify(conn: Any, certificate: Any, error: int, depth: int, ok: int) -> bool:
            if not ok:
                return False  # the chain: OpenSSL's verdict ("certificate verify failed")
            if depth != 0:
                return True
            try:
                verify_service_identity(extract_patterns(certificate), [wanted], [])
            except VerificationError as exc:
                tlsProtocol.failVerification(Failure(exc))
                return False
            except CertificateError:
                # No subjectAltName: valid for no host, said as a mismatch of this one.
                mismatch: Any = (
                    IPAddressMismatch(mismatched_id=wanted)
                    if isinstance(wanted, IPAddress_ID)
                    else DNSMismatch(mismatched_id=wanted)
                )
                tlsProtocol.failVerification(Failure(VerificationError(errors=[mismatch])))
                return False
            return True

        connection.set_verify(mode, verify)
        return connection
