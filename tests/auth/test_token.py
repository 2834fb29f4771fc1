"""
Bearer token verification against tokens from a test token service.

Keys and certificates are generated per run: an RSA root CA with an intermediate and a leaf
(x5c chains), a self-signed EC signing certificate named by ``kid`` (thumbprint and libtrust
key ID, as registry:2 accepts), an Ed25519 one, and a JWKS file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import Clock

from registry.auth.interfaces import CATALOG, repository
from registry.auth.token import InvalidToken, TokenVerifier, libtrust_key_id
from tests.auth import pki

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


class Keys:
    def __init__(self) -> None:
        self.root_key = pki.new_key("rsa")
        self.root = pki.certificate("token root", self.root_key, ca=True)
        self.inter_key = pki.new_key("ec")
        self.inter = pki.certificate(
            "token intermediate", self.inter_key, (self.root_key, self.root), ca=True
        )
        self.leaf_key = pki.new_key("rsa")
        self.leaf = pki.certificate("token signer", self.leaf_key, (self.inter_key, self.inter))
        self.ec_key = pki.new_key("ec")
        self.ec_cert = pki.certificate("ec signer", self.ec_key, ca=True)
        self.ed_key = pki.new_key("ed25519")
        self.ed_cert = pki.certificate("ed signer", self.ed_key)
        self.jwks_key = pki.new_key("ec")
        self.stranger_key = pki.new_key("rsa")
        self.stranger_ca = pki.certificate("other root", self.stranger_key, ca=True)
        self.stranger_leaf_key = pki.new_key("rsa")
        self.stranger_leaf = pki.certificate(
            "other signer", self.stranger_leaf_key, (self.stranger_key, self.stranger_ca)
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(time.time())
    return c


@pytest.fixture
def verifier(keys: Keys, clock: Clock, tmp_path: os.PathLike[str]) -> TokenVerifier:
    bundle = pki.write(
        os.path.join(tmp_path, "bundle.pem"), pki.pem_cert(keys.root, keys.ec_cert, keys.ed_cert)
    )
    jwks = pki.write(os.path.join(tmp_path, "jwks.json"), pki.jwks(("jwks-1", keys.jwks_key)))
    return TokenVerifier.from_files("test-issuer", "test-registry", clock, bundle, jwks)


def pull_push(name: str = "team/app") -> list[dict[str, Any]]:
    return [pki.repo_access(name, "pull", "push")]


def test_x5c_chain_to_bundle_root(keys: Keys, verifier: TokenVerifier, clock: Clock) -> None:
    token = pki.sign_token(
        keys.leaf_key,
        {"x5c": pki.x5c(keys.leaf, keys.inter)},
        pki.claims(clock.seconds(), pull_push()),
    )
    claims = verifier.verify(token)
    assert claims.subject == "alice"
    assert claims.grants(repository("team/app", "pull"))
    assert claims.grants(repository("team/app", "pull", "push"))
    assert not claims.grants(repository("team/app", "delete"))
    assert not claims.grants(repository("team/other", "pull"))
    assert not claims.grants(CATALOG)


def test_x5c_self_signed_bundle_entry(keys: Keys, verifier: TokenVerifier, clock: Clock) -> None:
    # The common docker_auth setup: the bundle holds the signing certificate itself.
    token = pki.sign_token(
        keys.ec_key, {"x5c": pki.x5c(keys.ec_cert)}, pki.claims(clock.seconds(), pull_push())
    )
    assert verifier.verify(token).grants(repository("team/app", "push"))


@pytest.mark.parametrize("form", ["thumbprint", "libtrust"])
@pytest.mark.parametrize("which", ["ec", "ed25519"])
def test_kid_naming_a_bundle_key(
    keys: Keys, verifier: TokenVerifier, clock: Clock, form: str, which: str
) -> None:
    key = keys.ec_key if which == "ec" else keys.ed_key
    if form == "thumbprint":
        kid = pki.jose_key(key).thumbprint()
    else:
        kid = libtrust_key_id(key.public_key())  # type: ignore[arg-type]
        assert len(kid) == 59 and kid.count(":") == 11  # ABCD:EFGH:... 12 groups
    token = pki.sign_token(key, {"kid": kid}, pki.claims(clock.seconds(), pull_push()))
    assert verifier.verify(token).subject == "alice"


def test_kid_from_jwks_and_jwk_header(keys: Keys, verifier: TokenVerifier, clock: Clock) -> None:
    now = clock.seconds()
    assert verifier.verify(pki.sign_token(keys.jwks_key, {"kid": "jwks-1"}, pki.claims(now)))
    public_jwk = pki.jose_key(keys.jwks_key).as_dict(private=False)
    public_jwk["kid"] = "jwks-1"
    assert verifier.verify(pki.sign_token(keys.jwks_key, {"jwk": public_jwk}, pki.claims(now)))


def test_catalog_and_wildcard_actions(keys: Keys, verifier: TokenVerifier, clock: Clock) -> None:
    access = [
        {"type": "registry", "name": "catalog", "actions": ["*"]},
        pki.repo_access("admin/app", "*"),
    ]
    token = pki.sign_token(
        keys.ec_key, {"x5c": pki.x5c(keys.ec_cert)}, pki.claims(clock.seconds(), access)
    )
    claims = verifier.verify(token)
    assert claims.grants(CATALOG)
    assert claims.grants(repository("admin/app", "pull", "push", "delete"))


def test_audience_list_and_leeway(keys: Keys, verifier: TokenVerifier, clock: Clock) -> None:
    now = clock.seconds()
    sign = lambda c: pki.sign_token(keys.ec_key, {"x5c": pki.x5c(keys.ec_cert)}, c)  # noqa: E731
    assert verifier.verify(sign(pki.claims(now, aud=["other", "test-registry"])))
    # Expired 30 s ago and valid from 30 s in the future: both inside the 60 s leeway.
    assert verifier.verify(sign(pki.claims(now, lifetime=-30)))
    assert verifier.verify(sign({**pki.claims(now), "nbf": int(now + 30)}))


def _refused(verifier: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        verifier.verify(token)


def test_refusals(keys: Keys, verifier: TokenVerifier, clock: Clock) -> None:
    now = clock.seconds()
    ec_header = {"x5c": pki.x5c(keys.ec_cert)}
    sign = lambda c, h=ec_header, k=keys.ec_key: pki.sign_token(k, h, c)  # noqa: E731

    good = sign(pki.claims(now, pull_push()))
    head, payload, sig = good.split(".")
    forged_claims = pki.claims(now, [pki.repo_access("team/app", "*")])
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=")
    _refused(verifier, f"{head}.{forged_payload.decode()}.{sig}", "bad signature|signature")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    _refused(verifier, f"{head}.{payload}.{flipped}", "signature")

    _refused(verifier, sign(pki.claims(now, lifetime=-120)), "expired")
    _refused(verifier, sign({**pki.claims(now), "nbf": int(now + 120)}), "not valid before")
    _refused(verifier, sign(pki.claims(now, aud="another-registry")), "audience")
    _refused(verifier, sign(pki.claims(now, iss="evil-issuer")), "issuer")
    no_exp = pki.claims(now)
    del no_exp["exp"]
    _refused(verifier, sign(no_exp), "no expiry")
    _refused(verifier, sign({**pki.claims(now), "access": "all"}), "access claim")

    # Untrusted keys: another CA's chain, an unknown kid, a bare jwk not in the trusted set.
    _refused(
        verifier,
        sign(
            pki.claims(now),
            {"x5c": pki.x5c(keys.stranger_leaf, keys.stranger_ca)},
            keys.stranger_leaf_key,
        ),
        "does not verify",
    )
    _refused(verifier, sign(pki.claims(now), {"kid": "nope"}, keys.stranger_key), "untrusted key")
    stranger_jwk = pki.jose_key(keys.stranger_key).as_dict(private=False)
    _refused(verifier, sign(pki.claims(now), {"jwk": stranger_jwk}, keys.stranger_key), "JWK")
    _refused(verifier, sign(pki.claims(now), {}, keys.ec_key), "names no key")
    # A trusted kid, but signed by someone else: the trusted key is what checks the signature.
    ec_kid = pki.jose_key(keys.ec_key).thumbprint()
    _refused(verifier, sign(pki.claims(now), {"kid": ec_kid}, keys.jwks_key), "signature")
    # The leaf certificate of a valid chain, but not the key that signed.
    _refused(
        verifier,
        sign(pki.claims(now), {"x5c": pki.x5c(keys.leaf, keys.inter)}, keys.stranger_key),
        "signature",
    )
    _refused(verifier, "not.a.token", "malformed")
    _refused(verifier, "", "malformed")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_algorithm_confusion_and_none_are_refused(
    keys: Keys, verifier: TokenVerifier, clock: Clock
) -> None:
    now = clock.seconds()
    kid = pki.jose_key(keys.ec_key).thumbprint()
    # HS256 keyed with the (public) PEM of a trusted key: the classic confusion attack.
    pem = keys.ec_cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        + "."
        + _b64(json.dumps(pki.claims(now)).encode())
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    hs = signing_input + "." + _b64(mac)
    _refused(verifier, hs, "signature not acceptable")
    header = base64.urlsafe_b64encode(
        json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode()
    ).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(pki.claims(now)).encode()).rstrip(b"=")
    _refused(verifier, f"{header.decode()}.{body.decode()}.", "signature not acceptable")


def test_chain_is_checked_at_the_clock_time(keys: Keys, tmp_path: os.PathLike[str]) -> None:
    clock = Clock()
    clock.advance(time.time() + 3 * 86400)  # after the certificates expired
    bundle = pki.write(os.path.join(tmp_path, "b.pem"), pki.pem_cert(keys.root))
    v = TokenVerifier.from_files("test-issuer", "test-registry", clock, bundle)
    token = pki.sign_token(
        keys.leaf_key,
        {"x5c": pki.x5c(keys.leaf, keys.inter)},
        pki.claims(clock.seconds()),
    )
    _refused(v, token, "does not verify")


def test_needs_some_key(clock: Clock) -> None:
    with pytest.raises(ValueError):
        TokenVerifier("i", "s", clock)


def test_a_refusals_message_cannot_write_lines_of_its_own() -> None:
    """What a token quotes (header values, a JOSE library's error text) reaches the log in
    the refusal's message: every unprintable character is escaped, line ends that only some
    readers split on (NEL, U+2028) included."""
    message = str(InvalidToken("kid 'a\nb\r\x1b[31mc\x85d\u2028e'"))
    assert message == "kid 'a\\nb\\r\\x1b[31mc\\x85d\\u2028e'"
    assert len(message.splitlines()) == 1
