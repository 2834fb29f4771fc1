"""The access policy: pattern semantics, groups, deny by default, anonymous pulls, reloads."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from registry.auth.interfaces import ANONYMOUS, CATALOG, Principal, repository
from registry.auth.policy import Glob, Policy, PolicyError, PolicyFile
from tests.auth.conftest import LogCapture

EXAMPLE = """
anonymous_pull = ["public/**", "library/*"]

[groups]
admins = ["alice"]
team-a = ["bob", "carol"]

[[rule]]
groups = ["admins"]
repositories = ["**"]
actions = ["*"]

[[rule]]
groups = ["team-a"]
repositories = ["team-a/**"]
actions = ["pull", "push"]

[[rule]]
users = ["carol"]
repositories = ["team-a/*"]
actions = ["delete"]

[[rule]]
users = ["*"]
repositories = ["shared/?ools"]
actions = ["pull"]
"""


@pytest.fixture
def policy() -> Policy:
    return Policy.from_toml(EXAMPLE)


def bob() -> Principal:
    return Principal("bob")


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "app", True),
        ("*", "team/app", False),  # '*' never crosses '/'
        ("team-a/*", "team-a/app", True),
        ("team-a/*", "team-a/x/app", False),
        ("team-a/**", "team-a", True),
        ("team-a/**", "team-a/x/y/z", True),
        ("team-a/**", "team-ab/x", False),
        ("**", "a/b/c", True),
        ("**/cache", "cache", True),
        ("**/cache", "a/b/cache", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/x/y/c", False),
        ("app-?", "app-1", True),
        ("app-?", "app-12", False),
        ("*-dev", "svc-dev", True),
        ("a.b", "aXb", False),  # '.' is literal
    ],
)
def test_glob(pattern: str, name: str, expected: bool) -> None:
    assert Glob.parse(pattern).matches(name) is expected


@pytest.mark.parametrize("bad", ["", "/a", "a/", "a//b", "a**", "**b/c", "Team/*", "a/[ab]"])
def test_glob_refuses_ambiguous_patterns(bad: str) -> None:
    with pytest.raises(PolicyError):
        Glob.parse(bad)


def test_rules_and_groups(policy: Policy) -> None:
    alice, carol, eve = Principal("alice"), Principal("carol"), Principal("eve")
    assert policy.allows(alice, repository("any/thing", "pull", "push", "delete"))
    assert policy.allows(bob(), repository("team-a/app", "pull", "push"))
    assert policy.allows(bob(), repository("team-a/deep/app", "push"))
    assert not policy.allows(bob(), repository("team-a/app", "delete"))
    assert policy.allows(carol, repository("team-a/app", "delete"))
    assert not policy.allows(carol, repository("team-a/deep/app", "delete"))
    # Every action asked for must be granted: pull+push on another team's repo is refused.
    assert not policy.allows(bob(), repository("team-b/app", "pull", "push"))
    assert policy.allows(eve, repository("shared/tools", "pull"))
    assert not policy.allows(eve, repository("shared/tools", "push"))
    assert policy.principal("bob") == Principal("bob", ("team-a",))


def test_deny_by_default(policy: Policy) -> None:
    eve = Principal("eve")
    assert not policy.allows(eve, repository("team-a/app", "pull"))
    assert not policy.allows(eve, repository("private", "pull"))
    assert not policy.allows(eve, repository("x", "*"))
    assert not Policy().allows(Principal("root"), repository("x", "pull"))
    assert not policy.allows(Principal("bob"), repository("team-a/app", "mount"))


def test_anonymous_pull(policy: Policy) -> None:
    assert policy.allows(ANONYMOUS, repository("public/x/y", "pull"))
    assert policy.allows(ANONYMOUS, repository("library/alpine", "pull"))
    assert not policy.allows(ANONYMOUS, repository("library/a/b", "pull"))
    assert not policy.allows(ANONYMOUS, repository("public/x", "push"))
    assert not policy.allows(ANONYMOUS, repository("team-a/app", "pull"))
    # Users who may not pull a repo by rule still may when it is public.
    assert policy.allows(Principal("eve"), repository("public/x", "pull"))
    assert policy.with_anonymous_pull(["extra/*"]).allows(ANONYMOUS, repository("extra/a", "pull"))


def test_catalog_is_listed_then_filtered(policy: Policy) -> None:
    assert policy.allows(bob(), CATALOG)
    assert policy.allows(ANONYMOUS, CATALOG)  # anonymous pulls exist, so a filtered list
    assert not Policy().allows(ANONYMOUS, CATALOG)
    names = ["team-a/app", "team-b/app", "public/x", "shared/tools"]
    assert [n for n in names if policy.may_pull(bob(), n)] == [
        "team-a/app",
        "public/x",
        "shared/tools",
    ]
    assert [n for n in names if policy.may_pull(ANONYMOUS, n)] == ["public/x"]


def test_allow_authenticated_is_registry2_behaviour() -> None:
    p = Policy.allow_authenticated(["pub/*"])
    assert p.allows(Principal("anyone"), repository("x/y", "pull", "push", "delete"))
    assert p.allows(ANONYMOUS, repository("pub/a", "pull"))
    assert not p.allows(ANONYMOUS, repository("x", "pull"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]]\nusers=['a']\nrepositories=['x']\nactions=['pul']", "actions"),
        ("[[rule]]\nuser=['a']\nrepositories=['x']\nactions=['pull']", "unknown keys"),
        ("[[rule]]\nrepositories=['x']\nactions=['pull']", "no users or groups"),
        ("[[rule]]\ngroups=['nope']\nrepositories=['x']\nactions=['pull']", "unknown groups"),
        ("[[rule]]\nusers=['a']\nactions=['pull']", "no repositories"),
        ("anonymous_pul = ['x']", "unknown keys"),
        ("[groups]\na = 'bob'", "list of strings"),
        ("not toml", "policy"),
    ],
)
def test_invalid_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        Policy.from_toml(text)


def test_policy_file_reload_keeps_last_good(tmp_path: os.PathLike[str], logs: LogCapture) -> None:
    path = os.path.join(tmp_path, "policy.toml")
    with open(path, "w") as f:
        f.write(EXAMPLE)
    clock = Clock()
    source = PolicyFile(path, clock, anonymous_pull=["extra/*"])
    assert source.current().allows(ANONYMOUS, repository("extra/a", "pull"))
    assert not source.current().allows(Principal("eve"), repository("team-a/x", "pull"))

    def rewrite(text: str) -> None:
        with open(path, "w") as f:
            f.write(text)
        st_ = os.stat(path)
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 7_000_000_000))
        clock.advance(1.5)

    rewrite(
        EXAMPLE + '\n[[rule]]\nusers = ["eve"]\nrepositories = ["team-a/*"]\nactions = ["pull"]\n'
    )
    assert source.current().allows(Principal("eve"), repository("team-a/x", "pull"))
    rewrite("this is [not toml")
    assert source.current().allows(Principal("eve"), repository("team-a/x", "pull"))
    assert "keeping the previous access policy" in logs.text()
    os.unlink(path)
    clock.advance(1.5)
    assert not source.current().allows(Principal("alice"), repository("x", "pull"))


# Name components of the grammar's shape, under 12 characters by construction: a filter on an
# unbounded regex rejected most draws, which made each of these tests take ~10 s.
_comp = st.from_regex(r"[a-z0-9]{1,5}(?:[._-][a-z0-9]{1,2}){0,2}", fullmatch=True)
_name_parts = st.lists(_comp, min_size=1, max_size=5)


@given(_name_parts)
def test_literal_pattern_matches_only_itself(parts: list[str]) -> None:
    name = "/".join(parts)
    g = Glob.parse(name)
    assert g.matches(name)
    assert not g.matches(name + "/x")
    assert not g.matches("x/" + name)


@given(_name_parts, st.data())
def test_single_star_never_crosses_a_slash(parts: list[str], data: st.DataObject) -> None:
    # Replace some components (or parts of them) by '*': the match count of components is fixed.
    pattern_parts = [data.draw(st.sampled_from([p, "*", p[:1] + "*", "*" + p[-1:]])) for p in parts]
    g = Glob.parse("/".join(pattern_parts))
    assert g.matches("/".join(parts))
    assert not g.matches("/".join([*parts, "extra"]))
    if len(parts) > 1:
        assert not g.matches("/".join(parts[:-1]))


@given(_name_parts, st.integers(min_value=0, max_value=5))
def test_double_star_spans_any_number_of_components(parts: list[str], cut: int) -> None:
    cut = min(cut, len(parts))
    assert Glob.parse("**").matches("/".join(parts))
    prefix = parts[:cut]
    pattern = "/".join([*prefix, "**"]) if prefix else "**"
    assert Glob.parse(pattern).matches("/".join(parts))
    assert Glob.parse("/".join(["**", parts[-1]])).matches("/".join(parts))


_listed_comp = st.one_of(
    st.sampled_from(["team-a", "team-ab", "public", "library", "shared", "tools", "xools"]),
    _comp,
)


@given(st.lists(_listed_comp, min_size=1, max_size=4))
def test_may_pull_answers_as_allows_does(parts: list[str]) -> None:
    """`may_pull` (a listing's check, from each principal's patterns and their prefixes)
    says what `allows` says of a pull, for every kind of principal."""
    policy = Policy.from_toml(EXAMPLE)
    name = "/".join(parts)
    for who in (ANONYMOUS, Principal("alice"), bob(), Principal("carol"), Principal("dave")):
        assert policy.may_pull(who, name) == policy.allows(who, repository(name, "pull")), who
    everyone = Policy.allow_authenticated(["public/**"])
    assert everyone.may_pull(Principal("dave"), name)
    assert everyone.may_pull(ANONYMOUS, name) == everyone.allows(
        ANONYMOUS, repository(name, "pull")
    )
