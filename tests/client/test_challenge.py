"""WWW-Authenticate parsing: the shapes registries send, and garbage that must not raise."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from registry.client._challenge import parse_challenges, pick_challenge
from registry.client._tokens import clamp_expires_in


def test_docker_hub_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull",error="insufficient_scope"'
    )
    challenge = pick_challenge([header])
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.params["scope"] == "repository:library/alpine:pull"


def test_several_challenges_prefer_bearer() -> None:
    found = parse_challenges(['Basic realm="a, b", Bearer realm=x , service="s\\"q"', "Negotiate"])
    assert [c.scheme for c in found] == ["basic", "bearer", "negotiate"]
    assert found[0].realm == "a, b"
    assert found[1].params == {"realm": "x", "service": 's"q'}
    chosen = pick_challenge(['Basic realm="r"', 'Bearer realm="t"'])
    assert chosen is not None and chosen.scheme == "bearer"
    assert pick_challenge(["Negotiate"]) is None


@given(st.text())
def test_garbage_never_raises(text: str) -> None:
    parse_challenges([text])


def test_expires_in_clamping() -> None:
    assert clamp_expires_in(None) == 60
    assert clamp_expires_in(10) == 60
    assert clamp_expires_in(300) == 300
    assert clamp_expires_in("300") == 60
    assert clamp_expires_in(True) == 60
