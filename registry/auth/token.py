"""
Bearer tokens as Docker's token specification defines them (what registry:2's ``token`` auth
accepts): a JWS-signed JWT from a token server, naming the access it grants.

Which key signed a token is decided as registry:2 decides it:

* an ``x5c`` header: the chain must verify (at the current time) up to a certificate of the
  root bundle, and the leaf's key checks the signature;
* otherwise a ``jwk`` header: with its own ``x5c``, the same chain check; without, its ``kid``
  (or RFC 7638 thumbprint) must name a trusted key, and the *trusted* key checks the signature;
* otherwise a ``kid`` header naming a trusted key.

Trusted keys are the JWKS file's keys under their ``kid`` and every root-bundle certificate's
key under its RFC 7638 thumbprint and under its libtrust key ID (the ``ABCD:EFGH:...`` form
registry:2 v2 and docker_auth put in ``kid``).  Only asymmetric algorithms are accepted, and
the library checks that the algorithm fits the key type, so a public key can never be used as
an HMAC secret.  Then ``iss`` must be the configured issuer, ``aud`` must include the service,
and ``exp``/``nbf`` must hold within a 60 s leeway; ``exp`` is required, and ``exp``, ``nbf``
and ``iat`` must be finite times between 1970 and year 9999.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey, import_key
from joserfc.jws import JWSRegistry
from twisted.internet.interfaces import IReactorTime

from registry.auth.interfaces import Access
from registry.logtext import one_line

# Token servers in the registry:2 world sign with "EdDSA"; RFC 9864 renamed it, and joserfc
# warns on every use.  The algorithm is fine; the warning would only fill the logs.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
)  # fmt: skip
LEEWAY = 60.0
_MAX_TOKEN = 64 * 1024

_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class _TokenRegistry(JWSRegistry):
    # joserfc caps the protected header at 512 bytes, but an x5c chain of two RSA
    # certificates alone is several kilobytes.
    max_header_length = 32 * 1024


class InvalidToken(Exception):
    """A token that is malformed, untrusted, expired or not for us; the message is for logs.

    The message may quote the token's own header values (JOSE errors do): unprintable
    characters (controls, and the line ends only some readers split on: NEL, U+2028) are
    escaped, so that a token cannot write lines of its own into the log."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


@attrs.frozen
class TokenClaims:
    """The verified content of a token."""

    subject: str
    issuer: str
    audience: tuple[str, ...]
    expires: float
    access: tuple[Access, ...]

    def grants(self, wanted: Access) -> bool:
        """Whether the token's ``access`` claim covers every action of ``wanted``."""
        granted: set[str] = set()
        for a in self.access:
            if a.type == wanted.type and a.name == wanted.name:
                granted.update(a.actions)
        return "*" in granted or all(action in granted for action in wanted.actions)


def _joserfc_key(public_key: Any) -> Key:
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSAKey.import_key(public_key)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(public_key)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return OKPKey.import_key(public_key)
    raise InvalidToken(f"unsupported key type {type(public_key).__name__}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key: _PublicKey) -> str:
    """Docker libtrust's key ID: SHA-256 of the DER public key, 240 bits, base32, in 4s."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def _go_unpadded_thumbprint(public_key: _PublicKey) -> str | None:
    """
    registry:2 computes EC thumbprints from big-endian coordinates without their leading zero
    bytes (Go's ``big.Int.Bytes``), which differs from RFC 7638 for about 1 key in 128.
    """
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return None
    nums = public_key.public_numbers()
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(
        public_key.curve.name
    )
    if crv is None:
        return None
    x = _b64url(nums.x.to_bytes((nums.x.bit_length() + 7) // 8 or 1, "big"))
    y = _b64url(nums.y.to_bytes((nums.y.bit_length() + 7) // 8 or 1, "big"))
    canonical = f'{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}'
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _require_ca(policy: Any, cert: x509.Certificate, ext: x509.BasicConstraints | None) -> None:
    if ext is None or not ext.ca:
        raise ValueError("an issuing certificate must be a CA")


# Token-signing certificates are rarely Web PKI shaped (no EKU, no key usage, often a single
# self-signed certificate that is itself the bundle entry), and registry:2 accepts any key usage.
# So: signatures, validity periods, names and issuer CA-ness are checked; other extensions not.
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, _require_ca
)
_EE_POLICY = ExtensionPolicy.permit_all()


def load_certificates(path: str) -> list[x509.Certificate]:
    """The PEM certificates in ``path``; `ValueError` when it holds none, or none whose key
    can verify a token (DSA keys cannot: neither as a token's key nor as a chain's root), which
    would start a registry where no token is ever accepted.  Unusable ones beside usable ones
    are ignored, as ``oct`` keys in a JWKS are."""
    with open(path, "rb") as f:
        certificates = x509.load_pem_x509_certificates(f.read())
    kinds = {type(cert.public_key()).__name__ for cert in certificates}
    if not any(isinstance(cert.public_key(), _PublicKey) for cert in certificates):
        raise ValueError(
            "holds no certificate with an RSA, EC or Ed25519 key (only "
            + ", ".join(sorted(k.removesuffix("PublicKey").removeprefix("_") for k in kinds))
            + "); tokens can be verified with none of them"
        )
    return certificates


# Key types that can verify a token: HMAC ("oct") secrets never can, since only asymmetric
# algorithms are accepted (a public key must never double as an HMAC secret).
_VERIFYING_KTY = frozenset({"RSA", "EC", "OKP"})


def load_key_set(path: str) -> KeySet:
    """
    The token-verifying keys of the JSON Web Key Set in ``path``.  `ValueError` when it is
    not one, or holds no key that could verify a token: a file of only HMAC ("oct") keys
    would start a registry where no token is ever accepted.  ``oct`` keys are dropped before
    joserfc sees them, so its warnings about short secrets never reach stderr.
    """
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
            keys = data["keys"]
            usable = [k for k in keys if k["kty"] in _VERIFYING_KTY]
            if keys and not usable:
                kinds = sorted({str(k["kty"]) for k in keys})
                raise ValueError(
                    f"holds no RSA, EC or OKP key (only {', '.join(kinds)}); tokens are verified "
                    "with public keys, so HMAC (oct) keys can never verify one"
                )
            return KeySet.import_key_set({**data, "keys": usable})
        except (JoseError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a JSON Web Key Set ({type(exc).__name__}: {exc})") from None


class TokenVerifier:
    """Verifies raw bearer tokens for one service; construct once, reuse per request."""

    def __init__(
        self,
        issuer: str,
        service: str,
        clock: IReactorTime,
        roots: Sequence[x509.Certificate] = (),
        jwks: KeySet | None = None,
        leeway: float = LEEWAY,
        algorithms: Sequence[str] = ALGORITHMS,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self._clock = clock
        self._roots = list(roots)
        self._leeway = leeway
        # Unknown header parameters are ignored (only "crit" ones refused), as go-jose does.
        self._registry = _TokenRegistry(algorithms=list(algorithms), strict_check_header=False)
        self._trusted: dict[str, Key] = {}
        for cert in self._roots:
            public_key = cert.public_key()
            if not isinstance(public_key, _PublicKey):
                continue
            key = _joserfc_key(public_key)
            self._trusted[key.thumbprint()] = key
            self._trusted[libtrust_key_id(public_key)] = key
            go_kid = _go_unpadded_thumbprint(public_key)
            if go_kid:
                self._trusted[go_kid] = key
        for key in jwks.keys if jwks is not None else ():
            if key.kid:
                self._trusted[key.kid] = key
        if not self._trusted and not self._roots:
            raise ValueError("token auth needs a root certificate bundle or a JWKS with keys")

    @classmethod
    def from_files(
        cls,
        issuer: str,
        service: str,
        clock: IReactorTime,
        rootcertbundle: str | None = None,
        jwks: str | None = None,
        leeway: float = LEEWAY,
    ) -> TokenVerifier:
        roots = load_certificates(rootcertbundle) if rootcertbundle else []
        keyset = load_key_set(jwks) if jwks else None
        return cls(issuer, service, clock, roots, keyset, leeway)

    def _now(self) -> float:
        return self._clock.seconds()

    def _verify_chain(self, chain_b64: Any) -> Key:
        if not self._roots:
            raise InvalidToken("x5c chain present but no root certificate bundle to check it")
        if not isinstance(chain_b64, list) or not chain_b64:
            raise InvalidToken("x5c is not a list of certificates")
        try:
            certs = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain_b64]
        except (ValueError, TypeError) as e:
            raise InvalidToken(f"undecodable x5c certificate: {e}") from e
        now = datetime.datetime.fromtimestamp(self._now(), datetime.UTC)
        verifier = (
            PolicyBuilder()
            .store(Store(self._roots))
            .time(now)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_client_verifier()
        )
        try:
            verifier.verify(certs[0], certs[1:])
        except VerificationError as e:
            raise InvalidToken(f"x5c chain does not verify to a trusted root: {e}") from e
        return _joserfc_key(certs[0].public_key())

    def _signing_key(self, header: Mapping[str, Any]) -> Key:
        if "x5c" in header:
            return self._verify_chain(header["x5c"])
        jwk = header.get("jwk")
        if isinstance(jwk, dict):
            if "x5c" in jwk:
                return self._verify_chain(jwk["x5c"])
            kid = jwk.get("kid")
            if isinstance(kid, str) and kid in self._trusted:
                return self._trusted[kid]
            try:
                thumbprint = import_key(jwk).thumbprint()
            except (JoseError, ValueError, TypeError, KeyError) as e:
                raise InvalidToken(f"unusable jwk header: {e}") from e
            if thumbprint in self._trusted:
                return self._trusted[thumbprint]
            raise InvalidToken("token signed by an untrusted JWK")
        kid = header.get("kid")
        if isinstance(kid, str):
            if kid in self._trusted:
                return self._trusted[kid]
            raise InvalidToken(f"token signed by untrusted key with ID {kid!r}")
        raise InvalidToken("token names no key (no x5c, jwk or kid header)")

    def verify(self, raw: str) -> TokenClaims:
        """The token's claims, or `InvalidToken` saying why not."""
        if len(raw) > _MAX_TOKEN:
            raise InvalidToken("token too large")
        try:
            obj = jws.extract_compact(raw.encode("ascii"), registry=self._registry)
            header = obj.headers()
        except (JoseError, ValueError, TypeError, KeyError, RecursionError) as e:
            # RecursionError: JSON nested deeper than the parser goes (a few KB of "[").
            raise InvalidToken(f"malformed token: {type(e).__name__}: {e}"[:500]) from e
        key = self._signing_key(header)
        try:
            valid = jws.validate_compact(obj, key, registry=self._registry)
        except (JoseError, ValueError, TypeError, RecursionError) as e:
            raise InvalidToken(f"signature not acceptable: {e}"[:500]) from e
        if not valid:
            raise InvalidToken("bad signature")
        try:
            claims = json.loads(obj.payload)
        except (ValueError, RecursionError) as e:
            raise InvalidToken("claims are not JSON") from e
        if not isinstance(claims, dict):
            raise InvalidToken("claims are not a JSON object")
        return self._check_claims(claims)

    def _check_claims(self, claims: dict[str, Any]) -> TokenClaims:
        issuer = claims.get("iss")
        if issuer != self.issuer:
            raise InvalidToken(f"token from untrusted issuer {issuer!r}")
        aud = claims.get("aud")
        if isinstance(aud, str):
            audience: tuple[str, ...] = (aud,)
        elif isinstance(aud, list):
            audience = tuple(a for a in aud if isinstance(a, str))
        else:
            audience = ()
        if self.service not in audience:
            raise InvalidToken(f"token intended for another audience {audience!r}")
        now = self._now()
        exp = _timestamp(claims, "exp")
        if exp is None:
            raise InvalidToken("token has no expiry")
        if now > exp + self._leeway:
            raise InvalidToken(f"token expired at {exp}, now {now:.0f}")
        nbf = _timestamp(claims, "nbf") or 0.0
        _timestamp(claims, "iat")  # not compared (registry:2 does not), but must be a time
        if now < nbf - self._leeway:
            raise InvalidToken(f"token not valid before {nbf}, now {now:.0f}")
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise InvalidToken("token has a malformed sub")
        return TokenClaims(subject, issuer, audience, float(exp), _access(claims.get("access")))


# NumericDate claims must be times a token could mean: 1970 to the end of year 9999.  Python's
# json accepts NaN and Infinity (a token that never expires) and integers of any size (which
# overflow when compared with the clock's float), so both are refused before any arithmetic.
_LATEST = 253402300799.0


def _timestamp(claims: dict[str, Any], name: str) -> float | None:
    """The NumericDate claim ``name`` as a float, None when absent; `InvalidToken` otherwise."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"token has a malformed {name}")
    if isinstance(value, int) and not 0 <= value <= _LATEST:
        raise InvalidToken(f"token has an out-of-range {name}")
    stamp = float(value)
    if not (math.isfinite(stamp) and 0.0 <= stamp <= _LATEST):
        raise InvalidToken(f"token has an out-of-range {name}")
    return stamp


def _access(value: Any) -> tuple[Access, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidToken("access claim is not a list")
    out: list[Access] = []
    for entry in value:
        if not isinstance(entry, dict):
            raise InvalidToken("access claim entry is not an object")
        rtype, name, actions = entry.get("type"), entry.get("name"), entry.get("actions", [])
        if not isinstance(rtype, str) or not isinstance(name, str):
            raise InvalidToken("access claim entry without type and name")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise InvalidToken("access claim actions are not a list of strings")
        out.append(Access(rtype, name, tuple(actions)))
    return tuple(out)
