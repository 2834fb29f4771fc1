"""
Token scopes and ``WWW-Authenticate`` challenges, in Docker's dialect.

A client learns what to ask a token server for from the challenge, so the scope must name
exactly the access the request needs (``repository:team/app:pull,push``) and nothing else;
``error="insufficient_scope"`` tells it that fetching a token again will not help.  The parser
exists for the tests and for the pull-through proxy, which reads upstream challenges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from registry.auth.interfaces import Access

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_scope(text: str) -> Access:
    """
    Parse ``type[(class)]:name:actions``.  The name is everything between the first and the last
    colon, because a name may carry a registry host with a port (``localhost:5000/app``).
    """
    rtype, sep1, rest = text.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep1 or not sep2 or not rtype or not name:
        raise ValueError(f"not a scope: {text!r}")
    if "(" in rtype:  # "repository(plugin)": the class does not change what is checked
        rtype = rtype.split("(", 1)[0]
    return Access(rtype, name, tuple(a for a in actions.split(",") if a))


def parse_scopes(text: str) -> list[Access]:
    """A space-separated scope parameter (several ``scope`` values are also joined by spaces)."""
    return [parse_scope(s) for s in text.split(" ") if s]


def merge(wanted: Iterable[Access]) -> list[Access]:
    """One entry per resource, actions in first-seen order (as registry:2 groups them)."""
    merged: dict[tuple[str, str], list[str]] = {}
    for access in wanted:
        actions = merged.setdefault((access.type, access.name), [])
        actions.extend(a for a in access.actions if a not in actions)
    return [Access(t, n, tuple(acts)) for (t, n), acts in merged.items()]


def quote(value: str) -> str:
    """An RFC 9110 quoted-string; control characters other than a tab cannot be carried, so
    they are refused."""
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise ValueError(f"control character in challenge parameter {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def basic_challenge(realm: str) -> str:
    return f"Basic realm={quote(realm)}"


def bearer_challenge(
    realm: str, service: str, wanted: Sequence[Access], error: str | None = None
) -> str:
    parts = [f"Bearer realm={quote(realm)}", f"service={quote(service)}"]
    scopes = " ".join(a.scope() for a in merge(wanted))
    if scopes:
        parts.append(f"scope={quote(scopes)}")
    if error:
        parts.append(f"error={quote(error)}")
    return ",".join(parts)


@attrs.frozen
class Challenge:
    """One challenge from a ``WWW-Authenticate`` value; parameter names are lower-cased."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return default


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TCHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        assert self.peek() == '"'
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif c == '"':
                return "".join(out)
            else:
                out.append(c)
        raise ValueError("unterminated quoted-string")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 7235 ``#challenge``, auth-params only)."""
    r = _Reader(header)
    challenges: list[Challenge] = []
    while True:
        r.skip(" \t,")
        if r.at_end():
            return challenges
        scheme = r.token()
        if not scheme:
            raise ValueError(f"expected an auth scheme at {r.pos} in {header!r}")
        params: list[tuple[str, str]] = []
        while True:
            mark = r.pos
            r.skip(" \t,")
            if r.at_end():
                break
            name = r.token()
            r.skip(" \t")
            if not name or r.peek() != "=":
                r.pos = mark  # the next challenge starts here
                break
            r.pos += 1
            r.skip(" \t")
            value = r.quoted() if r.peek() == '"' else r.token()
            params.append((name.lower(), value))
        challenges.append(Challenge(scheme, tuple(params)))
