"""Scopes and challenges: the exact strings Docker clients parse, and a round-trip property."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.api.names import NAME_RE
from registry.auth.interfaces import CATALOG, Access, repository
from registry.auth.scopes import (
    Challenge,
    basic_challenge,
    bearer_challenge,
    merge,
    parse_challenges,
    parse_scope,
    parse_scopes,
)


def test_basic_challenge() -> None:
    assert basic_challenge("Registry Realm") == 'Basic realm="Registry Realm"'
    assert basic_challenge('a "b" \\c') == 'Basic realm="a \\"b\\" \\\\c"'
    with pytest.raises(ValueError):
        basic_challenge("bad\r\nSet-Cookie: x")
    # A tab is a quoted-string's own character (RFC 9110 section 5.6.4).
    assert basic_challenge("Ops\tRegistry") == 'Basic realm="Ops\tRegistry"'


def test_bearer_challenge_names_exactly_the_scope() -> None:
    assert (
        bearer_challenge("https://auth.example/token", "registry.example", [])
        == 'Bearer realm="https://auth.example/token",service="registry.example"'
    )
    assert bearer_challenge("https://auth/t", "reg", [repository("team/app", "pull", "push")]) == (
        'Bearer realm="https://auth/t",service="reg",scope="repository:team/app:pull,push"'
    )
    # A blob mount needs push on the target and pull on the source, in one scope parameter.
    assert bearer_challenge(
        "https://auth/t",
        "reg",
        [repository("a", "pull"), repository("a", "push"), repository("b", "pull")],
        "insufficient_scope",
    ) == (
        'Bearer realm="https://auth/t",service="reg",'
        'scope="repository:a:pull,push repository:b:pull",error="insufficient_scope"'
    )
    assert 'scope="registry:catalog:*"' in bearer_challenge("r", "s", [CATALOG])


def test_parse_scope_forms() -> None:
    assert parse_scope("repository:library/alpine:pull") == repository("library/alpine", "pull")
    assert parse_scope("repository(plugin):a/b:pull,push") == repository("a/b", "pull", "push")
    assert parse_scope("repository:localhost:5000/app:pull") == repository(
        "localhost:5000/app", "pull"
    )
    assert parse_scope("registry:catalog:*") == CATALOG
    for bad in ("", "repository", "repository:name", ":a:pull"):
        with pytest.raises(ValueError):
            parse_scope(bad)


def test_parse_challenges_docker_hub_and_lists() -> None:
    hub = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    [c] = parse_challenges(hub)
    assert c.scheme == "Bearer"
    assert c.get("realm") == "https://auth.docker.io/token"
    assert c.get("service") == "registry.docker.io"
    assert c.get("scope") == "repository:library/alpine:pull"
    assert parse_challenges('Basic realm="x", Bearer realm=y, service="s"') == [
        Challenge("Basic", (("realm", "x"),)),
        Challenge("Bearer", (("realm", "y"), ("service", "s"))),
    ]
    assert parse_challenges("Negotiate") == [Challenge("Negotiate")]
    with pytest.raises(ValueError):
        parse_challenges('Basic realm="unterminated')


# Name components of the grammar's shape, under 30 characters by construction (a filter on
# an unbounded regex rejected many draws and slowed these tests down).
_component = st.from_regex(r"[a-z0-9]{1,10}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_names = st.lists(_component, min_size=1, max_size=4).map("/".join)
_actions = st.lists(st.sampled_from(["pull", "push", "delete", "*"]), min_size=1, unique=True)
_accesses = st.builds(
    lambda name, acts: Access("repository", name, tuple(acts)), _names, _actions
) | st.just(CATALOG)
_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=40
)


@given(_text, _text, st.lists(_accesses, max_size=5), st.sampled_from([None, "invalid_token"]))
def test_bearer_challenge_round_trips(
    realm: str, service: str, wanted: list[Access], error: str | None
) -> None:
    [c] = parse_challenges(bearer_challenge(realm, service, wanted, error))
    assert c.scheme == "Bearer"
    assert c.get("realm") == realm
    assert c.get("service") == service
    assert c.get("error") == error
    assert parse_scopes(c.get("scope") or "") == merge(wanted)


@given(_text)
def test_basic_challenge_round_trips(realm: str) -> None:
    assert parse_challenges(basic_challenge(realm)) == [Challenge("Basic", (("realm", realm),))]


@given(_names, _actions)
def test_scope_round_trips(name: str, actions: list[str]) -> None:
    assert NAME_RE.fullmatch(name)
    access = Access("repository", name, tuple(actions))
    assert parse_scope(access.scope()) == access


@given(st.text(max_size=60))
def test_challenge_parser_never_crashes_unexpectedly(header: str) -> None:
    with contextlib.suppress(ValueError):
        parse_challenges(header)
