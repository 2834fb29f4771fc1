"""
TLS settings for one registry: which authorities to trust, a client certificate, or none of it.

``ca_file`` (one PEM bundle, or a tuple of them) replaces the platform's trust store (a
private registry's CA is the one that should vouch for it); ``cert_file``/``key_file``
present a client certificate (mutual TLS); ``verify=False`` accepts any certificate
(skopeo's ``--tls-verify=false``; for test setups).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from registry.config import file_problem

_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


CAFiles = str | Path | tuple[str | Path, ...]


def load_trust_root(ca_bundle: CAFiles) -> Any:
    """Every certificate of a PEM bundle (or of several) as the only trusted roots."""
    files = ca_bundle if isinstance(ca_bundle, tuple) else (ca_bundle,)
    pems = [pem for path in files for pem in _CERT_RE.findall(Path(path).read_bytes())]
    if not pems:
        raise ValueError(f"no PEM certificate in {ca_bundle}")
    certificates = [ssl.Certificate.loadPEM(pem) for pem in pems]
    return ssl.trustRootFromCertificates(certificates)


@attrs.frozen
class TLSOptions:
    """How to talk TLS to a registry (unused for ``http://`` URLs)."""

    ca_file: CAFiles | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    verify: bool = True

    def problem(self) -> tuple[str, str] | None:
        """
        Which file cannot be used and why, as (``"ca_file"``, ``"cert_file"`` or
        ``"key_file"``, a one-line reason); None when `policy` can load them all.  For
        configuration checks: a mistake is then named before the first connection.
        """
        if self.ca_file is not None:
            try:
                load_trust_root(self.ca_file)
            except (OSError, ValueError) as exc:
                return "ca_file", file_problem(exc, self.ca_file)
        if self.cert_file is None:
            return ("key_file", "needs a certificate file") if self.key_file else None
        try:
            cert_pem = Path(self.cert_file).read_bytes()
            x509.load_pem_x509_certificate(cert_pem)
        except (OSError, ValueError) as exc:
            return "cert_file", file_problem(exc, self.cert_file)
        try:
            key_pem = Path(self.key_file).read_bytes() if self.key_file else cert_pem
            serialization.load_pem_private_key(key_pem, password=None)
        except (OSError, ValueError, TypeError) as exc:
            which = "key_file" if self.key_file else "cert_file"
            return which, file_problem(exc, self.key_file or self.cert_file)
        return None

    def policy(self) -> IPolicyForHTTPS:
        """The `IPolicyForHTTPS` an `Agent` takes."""
        client_cert = None
        if self.cert_file is not None:
            # cryptography's objects: pyOpenSSL deprecates its own X509/PKey wrappers.
            cert_pem = Path(self.cert_file).read_bytes()
            key_pem = Path(self.key_file).read_bytes() if self.key_file else cert_pem
            client_cert = {
                "privateKey": serialization.load_pem_private_key(key_pem, password=None),
                "certificate": x509.load_pem_x509_certificate(cert_pem),
            }
        trust_root = load_trust_root(self.ca_file) if self.ca_file is not None else None
        if self.verify and client_cert is None:
            return BrowserLikePolicyForHTTPS(trustRoot=trust_root)
        return _Policy(trust_root, client_cert, self.verify)


@implementer(IPolicyForHTTPS)
class _Policy:
    def __init__(self, trust_root: Any, client_cert: dict[str, Any] | None, verify: bool) -> None:
        self._trust_root = trust_root
        self._client_cert = client_cert
        self._verify = verify

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        # Twisted's annotations name pyOpenSSL's types; its Context calls accept cryptography's.
        if not self._verify:
            return ssl.CertificateOptions(verify=False, **(self._client_cert or {}))
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self._trust_root,
            extraCertificateOptions=self._client_cert,
        )
