"""Test-time PKI and a test token service: every key and certificate is generated per run."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey
from twisted.internet.ssl import Certificate, optionsForClientTLS

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(
    cn: str,
    key: PrivateKey,
    issuer: tuple[PrivateKey, x509.Certificate] | None = None,
    *,
    ca: bool = False,
    server: bool = False,
    client: bool = False,
    days: float = 1,
    start: dt.datetime | None = None,
) -> x509.Certificate:
    now = start or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    issuer_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, _name(cn))
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), False
        )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(issuer_key, algorithm)


def pem_cert(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def client_tls(
    ca: x509.Certificate,
    client_pem: bytes | None = None,
    protocols: list[bytes] | None = None,
    hostname: str = "127.0.0.1",
) -> Any:
    """
    Client TLS options trusting ``ca``, presenting the certificate and key in ``client_pem``
    if given.  The key and certificate are cryptography's objects: pyOpenSSL deprecates its
    own ``X509``/``PKey``, which Twisted's ``PrivateCertificate`` would make.
    """
    extra: dict[str, Any] = {}
    if client_pem:
        extra = {
            "privateKey": serialization.load_pem_private_key(client_pem, password=None),
            "certificate": x509.load_pem_x509_certificate(client_pem),
        }
    return optionsForClientTLS(
        hostname,
        trustRoot=Certificate.loadPEM(pem_cert(ca)),
        extraCertificateOptions=extra,
        acceptableProtocols=protocols,
    )


def write(path: str | os.PathLike[str], data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def x5c(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def jose_key(key: PrivateKey) -> Any:
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(key)
    return OKPKey.import_key(key)


def alg_for(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    return "EdDSA"


def sign_token(key: PrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """What a token server (docker_auth, registry:2's test harness) hands out."""
    alg = header.get("alg") or alg_for(key)
    return jwt.encode({"alg": alg, **header}, claims, jose_key(key), algorithms=[alg])


def claims(
    now: float,
    access: list[dict[str, Any]] | None = None,
    *,
    iss: str = "test-issuer",
    aud: str | list[str] = "test-registry",
    sub: str = "alice",
    lifetime: float = 300,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "exp": int(now + lifetime),
        "nbf": int(now - 1),
        "iat": int(now - 1),
        "jti": "test",
        "access": access if access is not None else [],
        **extra,
    }


def repo_access(name: str, *actions: str) -> dict[str, Any]:
    return {"type": "repository", "name": name, "actions": list(actions)}


def jwks(*keys: tuple[str, PrivateKey]) -> bytes:
    out = []
    for kid, key in keys:
        d = jose_key(key).as_dict(private=False)
        d["kid"] = kid
        out.append(d)
    return json.dumps({"keys": out}).encode()
