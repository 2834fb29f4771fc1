"""
Who may do what to which repositories: the access policy file.

A TOML file (stdlib ``tomllib``) with groups of users, rules granting actions on repository
name patterns to users and groups, and ``anonymous_pull`` patterns.  Anything not granted is
denied.  The format is documented with an example in ``docs/auth.md``.

Patterns work on ``/``-separated name components: ``*`` matches any run of characters inside
one component and never crosses a ``/``; ``?`` matches one character; a component that is
exactly ``**`` matches any number of components, including none (so ``team-a/**`` covers
``team-a`` itself and everything below it, and ``**`` covers every repository).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from registry.auth._watch import FileWatcher
from registry.auth.interfaces import DELETE, PULL, PUSH, Access, Principal
from registry.config import file_problem

_log = Logger()

ACTIONS = frozenset({PULL, PUSH, DELETE, "*"})
_GLOB_CHARS = re.compile(r"[a-z0-9._\-*?]+")


# How many principals' pull patterns a policy keeps worked out (all forgotten when full).
_PULL_PATTERNS_KEPT = 1024


class PolicyError(ValueError):
    """The policy file is not valid; the message says where."""


@attrs.frozen
class Glob:
    """A repository name pattern (see the module docstring for the syntax)."""

    pattern: str
    _parts: tuple[re.Pattern[str] | None, ...] = attrs.field(repr=False, eq=False)
    # What every matching name starts with (the pattern up to its first wildcard, less the
    # "/" before a "**", which matches no component too): most names are refused by that
    # one comparison, which matters when a listing checks every name of a large registry.
    _prefix: str = attrs.field(repr=False, eq=False, default="")

    @classmethod
    def parse(cls, pattern: str) -> Glob:
        if not pattern:
            raise PolicyError("empty repository pattern")
        parts: list[re.Pattern[str] | None] = []
        for comp in pattern.split("/"):
            if comp == "**":
                if parts and parts[-1] is None:
                    continue  # "**/**" is "**"
                parts.append(None)
                continue
            if not comp:
                raise PolicyError(f"repository pattern {pattern!r} has an empty component")
            if "**" in comp:
                raise PolicyError(f"in {pattern!r}, '**' must be a whole component")
            if not _GLOB_CHARS.fullmatch(comp):
                raise PolicyError(
                    f"repository pattern {pattern!r} may only use a-z 0-9 . _ - / * ?"
                )
            regex = "".join(
                "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in comp
            )
            parts.append(re.compile(regex))
        literal = re.split(r"[*?]", pattern, maxsplit=1)
        prefix = literal[0]
        if len(literal) > 1 and pattern[len(prefix) :].startswith("**"):
            prefix = prefix.removesuffix("/")
        return cls(pattern, tuple(parts), prefix)

    @property
    def prefix(self) -> str:
        """What every name this pattern matches starts with."""
        return self._prefix

    def matches(self, name: str) -> bool:
        if not name.startswith(self._prefix):
            return False
        comps = name.split("/")
        n = len(comps)
        # Positions in `comps` reachable after matching the pattern parts so far.
        reachable = {0}
        for part in self._parts:
            if not reachable:
                return False
            if part is None:
                reachable = set(range(min(reachable), n + 1))
            else:
                reachable = {i + 1 for i in reachable if i < n and part.fullmatch(comps[i])}
        return n in reachable


# `Policy.may_pull`'s answer for a principal every name is open to.
_EVERY_NAME: tuple[Glob, ...] = (Glob.parse("**"),)


@attrs.frozen
class Rule:
    """Grants ``actions`` on names matching any of ``repositories`` to users and groups."""

    repositories: tuple[Glob, ...]
    actions: frozenset[str]
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def applies_to(self, principal: Principal) -> bool:
        if principal.name is None:
            return False
        return (
            principal.name in self.users
            or "*" in self.users
            or not self.groups.isdisjoint(principal.groups)
        )

    def grants(self, name: str, action: str) -> bool:
        if "*" not in self.actions and action not in self.actions:
            return False
        return any(g.matches(name) for g in self.repositories)


@attrs.frozen
class Policy:
    """
    An evaluated policy.  ``authenticated_full_access`` is the policy used when authentication is
    configured without a policy file: every authenticated user may do everything (registry:2's
    behaviour), anonymous callers only what ``anonymous_pull`` allows.
    """

    rules: tuple[Rule, ...] = ()
    groups: Mapping[str, frozenset[str]] = attrs.field(factory=dict)
    anonymous_pull: tuple[Glob, ...] = ()
    authenticated_full_access: bool = False
    # Principal -> the patterns that grant it pull (`may_pull`); a new Policy (a reloaded
    # file) starts empty.  Bounded: principals are authenticated users, but a token server
    # may name many.
    _pull_patterns: dict[Principal, tuple[tuple[str, ...], tuple[Glob, ...]]] = attrs.field(
        factory=dict, init=False, eq=False, repr=False
    )

    def current(self) -> Policy:
        return self

    def groups_of(self, user: str) -> tuple[str, ...]:
        return tuple(sorted(g for g, members in self.groups.items() if user in members))

    def principal(self, name: str | None, groups: Iterable[str] = ()) -> Principal:
        """The principal for ``name``, with its groups from this policy added."""
        if name is None:
            return Principal(None)
        return Principal(name, tuple(sorted({*groups, *self.groups_of(name)})))

    def _with_groups(self, principal: Principal) -> Principal:
        if principal.name is None:
            return principal
        return self.principal(principal.name, principal.groups)

    def allows(self, principal: Principal, access: Access) -> bool:
        """Whether every action of ``access`` is granted to ``principal``."""
        if access.type == "registry" and access.name == "catalog":
            # The catalog is filtered per repository with may_pull, so listing it is open to
            # anyone who may pull something.
            return principal.name is not None or bool(self.anonymous_pull)
        if access.type != "repository":
            return False
        principal = self._with_groups(principal)
        return all(self._grants(principal, access.name, a) for a in access.actions)

    def _grants(self, principal: Principal, name: str, action: str) -> bool:
        if action == PULL and any(g.matches(name) for g in self.anonymous_pull):
            return True
        if principal.name is None:
            return False
        if self.authenticated_full_access:
            return True
        return any(r.applies_to(principal) and r.grants(name, action) for r in self.rules)

    def may_pull(self, principal: Principal, name: str) -> bool:
        """As ``allows(principal, pull of name)``, from the patterns that can grant it to
        ``principal`` (worked out once per principal): a listing asks for every name."""
        found = self._pull_patterns.get(principal)
        if found is None:
            if len(self._pull_patterns) >= _PULL_PATTERNS_KEPT:
                self._pull_patterns.clear()
            patterns = self._patterns_pulling(principal)
            prefixes = tuple({g.prefix for g in patterns})
            found = self._pull_patterns[principal] = (prefixes, patterns)
        prefixes, patterns = found
        if patterns is _EVERY_NAME:
            return True
        # One comparison against every pattern's prefix refuses most names at once.
        if not name.startswith(prefixes):
            return False
        return any(g.matches(name) for g in patterns)

    def _patterns_pulling(self, principal: Principal) -> tuple[Glob, ...]:
        if principal.name is None:
            return self.anonymous_pull
        if self.authenticated_full_access:
            return _EVERY_NAME
        principal = self._with_groups(principal)
        granting = (
            glob
            for rule in self.rules
            if rule.applies_to(principal) and ("*" in rule.actions or PULL in rule.actions)
            for glob in rule.repositories
        )
        return (*self.anonymous_pull, *granting)

    def with_anonymous_pull(self, patterns: Iterable[str]) -> Policy:
        extra = tuple(Glob.parse(p) for p in patterns)
        return attrs.evolve(self, anonymous_pull=self.anonymous_pull + extra)

    @classmethod
    def allow_authenticated(cls, anonymous_pull: Iterable[str] = ()) -> Policy:
        return cls(authenticated_full_access=True).with_anonymous_pull(anonymous_pull)

    @classmethod
    def from_toml(cls, text: str, source: str = "policy") -> Policy:
        import tomllib  # here: only a registry with a policy file pays for the parser

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"{source}: {e}") from e
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "policy") -> Policy:
        _only_keys(data, {"groups", "rule", "anonymous_pull"}, source)
        groups_data = data.get("groups", {})
        if not isinstance(groups_data, dict):
            raise PolicyError(f"{source}: [groups] must be a table of lists of user names")
        groups = {
            str(g): frozenset(_strings(members, f"{source}: groups.{g}"))
            for g, members in groups_data.items()
        }
        rules_data = data.get("rule", [])
        if not isinstance(rules_data, list):
            raise PolicyError(f"{source}: rules are written as [[rule]] tables")
        rules = tuple(
            _rule(r, groups, f"{source}: rule #{i}") for i, r in enumerate(rules_data, start=1)
        )
        anonymous = tuple(
            Glob.parse(p) for p in _strings(data.get("anonymous_pull", []), "anonymous_pull")
        )
        return cls(rules, groups, anonymous)

    @classmethod
    def load(cls, path: str) -> Policy:
        with open(path, encoding="utf-8") as f:
            return cls.from_toml(f.read(), path)


def _only_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        # A misspelt key must not silently drop a grant (or, worse, a restriction).
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: expected a list of strings")
    return value


def _rule(data: Any, groups: Mapping[str, frozenset[str]], where: str) -> Rule:
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: expected a table")
    _only_keys(data, {"users", "groups", "repositories", "actions"}, where)
    users = frozenset(_strings(data.get("users", []), f"{where} users"))
    rule_groups = frozenset(_strings(data.get("groups", []), f"{where} groups"))
    if not users and not rule_groups:
        raise PolicyError(f"{where}: names no users or groups")
    missing = rule_groups - set(groups)
    if missing:
        raise PolicyError(f"{where}: unknown groups {sorted(missing)}")
    repos = _strings(data.get("repositories", []), f"{where} repositories")
    if not repos:
        raise PolicyError(f"{where}: names no repositories")
    actions = frozenset(_strings(data.get("actions", []), f"{where} actions"))
    if not actions or not actions <= ACTIONS:
        raise PolicyError(f"{where}: actions must be a non-empty subset of {sorted(ACTIONS)}")
    return Rule(tuple(Glob.parse(p) for p in repos), actions, users, rule_groups)


class PolicySource(Protocol):
    """Where a controller gets the policy for each request: a `Policy` or a `PolicyFile`."""

    def current(self) -> Policy: ...


class PolicyFile:
    """
    A policy file re-read when it changes.  A broken edit keeps the last good policy (and logs
    why), so a typo cannot open or close the registry by accident; a deleted file denies all.
    """

    def __init__(self, path: str, clock: IReactorTime, anonymous_pull: Sequence[str] = ()) -> None:
        self.path = path
        self._extra = tuple(anonymous_pull)
        self._watcher = FileWatcher(path, clock)
        self._watcher.changed()
        self._policy = Policy.load(path).with_anonymous_pull(self._extra)

    def current(self) -> Policy:
        if self._watcher.changed():
            try:
                self._policy = Policy.load(self.path).with_anonymous_pull(self._extra)
                _log.info("reloaded access policy {path}", path=self.path)
            except OSError as e:
                # Unreadable for any reason (deleted, now a directory, its folder replaced by
                # a file, no permission) is treated as deleted: deny all until it is back, so
                # an edit meant to revoke access can never leave the old grants in force.
                _log.error(
                    "access policy unusable, denying all: {problem}",
                    problem=file_problem(e, self.path),
                )
                self._policy = Policy()
            except (PolicyError, UnicodeDecodeError) as e:
                # A readable file with a broken edit: a typo must not open or close the registry.
                _log.error("keeping the previous access policy: {error}", error=str(e))
        return self._policy
