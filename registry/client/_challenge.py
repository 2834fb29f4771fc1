"""
``WWW-Authenticate`` challenges (RFC 7235) as registries send them.

Only what a registry client needs: the scheme and its auth-params (``realm``, ``service``,
``scope``, ``error``).  Parsing is pure so it can be tested on its own; malformed input yields
no challenge rather than an exception, because a confused upstream must not crash the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*({_QUOTED}|{_TOKEN})\s*")
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


@attrs.define
class Challenge:
    """One challenge; ``scheme`` is lower-cased, param names are lower-cased."""

    scheme: str
    params: dict[str, str] = attrs.field(factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_challenges(header_values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given header values, in order.

    A header may hold several challenges separated by commas; a comma also separates
    auth-params, so a new challenge starts wherever a bare token is not followed by ``=``.
    """
    found: list[Challenge] = []
    for value in header_values:
        pos = 0
        current: Challenge | None = None
        while pos < len(value):
            if value[pos] in ", \t":
                pos += 1
                continue
            param = _PARAM_RE.match(value, pos)
            if param is not None and current is not None:
                current.params[param.group(1).lower()] = _unquote(param.group(2))
                pos = param.end()
                continue
            scheme = _SCHEME_RE.match(value, pos)
            if scheme is None:
                break  # garbage: keep what was parsed so far
            current = Challenge(scheme.group(1).lower())
            found.append(current)
            pos = scheme.end()
    return found


def pick_challenge(header_values: Iterable[str]) -> Challenge | None:
    """The challenge we will answer: Bearer when offered, else Basic, else None."""
    challenges = parse_challenges(header_values)
    for wanted in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == wanted:
                return challenge
    return None
