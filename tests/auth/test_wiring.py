"""From settings to a controller: the combinations that work and the ones refused."""

from __future__ import annotations

import os
from typing import Any

import attrs
import bcrypt
import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from registry.auth.controllers import (
    ClientCertificateAccessController,
    HtpasswdAccessController,
    TokenAccessController,
)
from registry.auth.interfaces import ANONYMOUS, AllowAll, IAccessController, Principal
from registry.auth.wiring import AuthSettings, anonymous_pull_from, make_access_controller
from tests.auth import pki
from tests.auth.conftest import reactor


@pytest.fixture
def files(tmp_path: os.PathLike[str]) -> dict[str, str]:
    d = str(tmp_path)
    key = pki.new_key("ec")
    return {
        "htpasswd": pki.write(
            os.path.join(d, "htpasswd"),
            b"alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)) + b"\n",
        ),
        "bundle": pki.write(
            os.path.join(d, "bundle.pem"), pki.pem_cert(pki.certificate("t", key, ca=True))
        ),
        "policy": pki.write(
            os.path.join(d, "policy.toml"),
            b'[[rule]]\nusers = ["alice"]\nrepositories = ["a/*"]\nactions = ["pull"]\n',
        ),
    }


def build(settings: AuthSettings, threadpool: Any) -> IAccessController:
    controller = make_access_controller(settings, reactor(), Clock(), threadpool)
    assert verifyObject(IAccessController, controller)
    return controller


def test_nothing_configured_is_allow_all(threadpool: Any) -> None:
    assert isinstance(build(AuthSettings(), threadpool), AllowAll)


def test_htpasswd_without_policy_lets_users_do_everything(
    files: dict[str, str], threadpool: Any
) -> None:
    c = build(AuthSettings(htpasswd_path=files["htpasswd"], anonymous_pull=("pub/*",)), threadpool)
    assert isinstance(c, HtpasswdAccessController)
    assert c.may_pull(Principal("alice"), "any/thing")
    assert c.may_pull(ANONYMOUS, "pub/x") and not c.may_pull(ANONYMOUS, "x")


def test_htpasswd_with_policy_denies_by_default(files: dict[str, str], threadpool: Any) -> None:
    c = build(AuthSettings(htpasswd_path=files["htpasswd"], policy=files["policy"]), threadpool)
    assert c.may_pull(Principal("alice"), "a/b")
    assert not c.may_pull(Principal("alice"), "b/c")


def test_token(files: dict[str, str], threadpool: Any) -> None:
    settings = AuthSettings(
        token_realm="https://auth/token",
        token_service="reg",
        token_issuer="iss",
        token_rootcertbundle=files["bundle"],
    )
    c = build(settings, threadpool)
    assert isinstance(c, TokenAccessController) and c.policy is None
    assert c.may_pull(Principal("x"), "anything")
    c2 = build(
        attrs.evolve(settings, client_certificate_users=True, policy=files["policy"]),
        threadpool,
    )
    assert isinstance(c2, ClientCertificateAccessController)
    assert isinstance(c2.fallback, TokenAccessController)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"htpasswd_path": "x", "token_realm": "r"}, "not both"),
        ({"token_realm": "r", "token_issuer": "i"}, "service"),
        ({"token_realm": "r", "token_issuer": "i", "token_service": "s"}, "rootcertbundle or jwks"),
        ({"anonymous_pull": ("a/*",)}, "needs an authentication method"),
        (
            {
                "token_realm": "r",
                "token_issuer": "i",
                "token_service": "s",
                "token_rootcertbundle": "BUNDLE",
                "client_certificate_users": True,
            },
            "needs an [auth] policy",
        ),
        ({"policy": "POLICY"}, "no htpasswd, token or client certificates"),
    ],
)
def test_refused_combinations(
    files: dict[str, str], threadpool: Any, settings: dict[str, Any], message: str
) -> None:
    resolved = {
        k: files["bundle"] if v == "BUNDLE" else files["policy"] if v == "POLICY" else v
        for k, v in settings.items()
    }
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_access_controller(AuthSettings(**resolved), reactor(), Clock(), threadpool)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"htpasswd_path": "{d}/missing"},
            "[auth.htpasswd] path: cannot read {d}/missing: no such file or directory",
        ),
        ({"htpasswd_path": "{d}"}, "[auth.htpasswd] path: cannot read {d}: is a directory"),
        (
            {"htpasswd_path": "HTPASSWD", "policy": "{d}/missing"},
            "[auth] policy: cannot read {d}/missing: no such file or directory",
        ),
        (
            {"htpasswd_path": "HTPASSWD", "policy": "{d}/garbage"},
            "[auth] policy: {d}/garbage: ",
        ),
        (
            {"token_rootcertbundle": "{d}/missing"},
            "[auth.token] rootcertbundle: cannot read {d}/missing: no such file or directory",
        ),
        ({"token_rootcertbundle": "{d}/garbage"}, "[auth.token] rootcertbundle: {d}/garbage: "),
        ({"token_jwks": "{d}/not-a-set.json"}, "[auth.token] jwks: {d}/not-a-set.json: not a "),
        ({"token_jwks": "{d}/garbage"}, "[auth.token] jwks: {d}/garbage: "),
    ],
)
def test_unreadable_files_are_named_by_their_key(
    tmp_path: Any, files: dict[str, str], threadpool: Any, settings: dict[str, str], message: str
) -> None:
    """A file an auth key names that cannot be read at start-up: the error names the key and
    the file, on one line (start-up prints it as the reason it stops)."""
    (tmp_path / "garbage").write_bytes(b"not = [valid\n\xff")
    (tmp_path / "not-a-set.json").write_text('{"keys": 5}')
    token = {"token_realm": "r", "token_issuer": "i", "token_service": "s"}
    resolved = {
        k: files["htpasswd"] if v == "HTPASSWD" else v.format(d=tmp_path)
        for k, v in settings.items()
    }
    if any(k.startswith("token_") for k in resolved):
        resolved = {**token, **resolved}
    with pytest.raises(ValueError) as caught:
        make_access_controller(AuthSettings(**resolved), reactor(), Clock(), threadpool)
    text = str(caught.value)
    assert text.startswith(message.format(d=tmp_path)), text
    assert "\n" not in text


def test_anonymous_pull_from() -> None:
    assert anonymous_pull_from("a/*, b/** ,") == ("a/*", "b/**")
    assert anonymous_pull_from(["x"]) == ("x",)
