"""
``[notifications:NAME]`` sections: one webhook endpoint each, parsed from `Config.extra`.

The keys are registry:2's ``notifications.endpoints`` keys (``url``, ``headers``, ``timeout``,
``threshold``, ``backoff``, ``ignoredmediatypes``, ``ignore.mediatypes``/``ignore.actions``
written ``ignore_mediatypes``/``ignore_actions``), with registry:2's defaults, plus the ones the
durable queue needs (``maxevents``, ``maxbackoff``, ``maxbatch``, ``batchwait``).  Errors name
the section and key, so a typo stops start-up.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

from registry.config import (
    Config,
    ConfigError,
    parse_bool,
    parse_duration,
    parse_http_url,
    parse_list,
    parse_positive_duration,
    parse_section_values,
)

SECTION_PREFIX = "notifications:"
ACTIONS = ("push", "pull", "mount", "delete")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


# What frames the POST itself: a second one would make the receiver read the body wrong (or
# the rest of it as another request).
_FRAMING_HEADERS = frozenset(["content-length", "transfer-encoding", "host", "trailer"])
# Headers the registry writes for each POST: configured ones are left out (said at start-up).
# registry:2 sends a configured Content-Type beside its own; a receiver reads either.
REGISTRY_HEADERS = frozenset(["content-type", "connection", "te"])


def parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    """``Name: value`` pairs, one per line; a name may repeat (registry:2: a list per name)."""
    headers = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or _HEADER_NAME.fullmatch(name) is None:
            raise ValueError(f"{line!r} is not a 'Name: value' header line")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} has a line break in its value")
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(f"header {name} is set by the registry for each POST")
        headers.append((name, value.strip()))
    return tuple(headers)


def _positive_int(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a number of 1 or more")
    return int(text)


def _actions(text: str) -> tuple[str, ...]:
    actions = parse_list(text)
    for action in actions:
        if action not in ACTIONS:
            raise ValueError(f"{action!r} is not one of {', '.join(ACTIONS)}")
    return actions


# A query parameter whose name says it holds a secret: its value is not logged.
_SECRET_QUERY = re.compile(
    r"([?&][^=&#]*(?:token|key|secret|password|passwd|signature|sig|auth)[^=&#]*=)[^&#]*",
    re.IGNORECASE,
)


@attrs.frozen
class EndpointConfig:
    """One webhook endpoint; durations are seconds."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    # One POST's bound, from connect to the answer's status (registry:2 default: 1s); the
    # body is then read for at most as long again (`delivery._discard_body`).
    timeout: float = 1.0
    # A failed POST is retried at once until this many failures in a row (registry:2's breaker).
    threshold: int = 10
    # The first pause after `threshold` failures; each further failure doubles it, up to
    # `maxbackoff` (registry:2 waits `backoff` every time).
    backoff: float = 1.0
    maxbackoff: float = 30.0
    # Events whose target has one of these media types, or with one of these actions, are
    # not sent to this endpoint.
    ignoredmediatypes: tuple[str, ...] = ()
    ignore_actions: tuple[str, ...] = ()
    # Events kept for the endpoint while it is unreachable; beyond, the oldest are dropped.
    maxevents: int = 100_000
    # Events per POST (one envelope): a backlog drains in few requests.
    maxbatch: int = 100
    # How long a POST waits for more events unless `maxbatch` are waiting (0: no wait).
    batchwait: float = 0.1
    disabled: bool = False

    @property
    def shown_url(self) -> str:
        """`url` as logged: a secret in its query (``?token=...``, a common way to
        authenticate a webhook) is replaced by ``***`` (the password is gone already)."""
        return _SECRET_QUERY.sub(r"\1***", self.url)

    def wants(self, action: str, media_type: str | None) -> bool:
        if action in self.ignore_actions:
            return False
        return media_type is None or media_type not in self.ignoredmediatypes


_KEYS: dict[str, Callable[[str], Any]] = {
    "url": lambda text: parse_http_url(text, credentials=True),
    "headers": parse_headers,
    "timeout": parse_positive_duration,
    "threshold": _positive_int,
    "backoff": parse_positive_duration,
    "maxbackoff": parse_positive_duration,
    "ignoredmediatypes": parse_list,
    "ignore_mediatypes": parse_list,
    "ignore_actions": _actions,
    "maxevents": _positive_int,
    "maxbatch": _positive_int,
    "batchwait": parse_duration,
    "disabled": parse_bool,
}


def _without_credentials(
    url: str, headers: tuple[tuple[str, str], ...]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """
    A ``user:password@`` in the URL becomes a Basic ``Authorization`` header (as registry:2's
    Go client sends it), unless one is configured; the URL kept, logged and shown in
    metrics has no password in it.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, headers
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    bare = parts._replace(netloc=host).geturl()
    if any(header.lower() == "authorization" for header, _ in headers):
        return bare, headers
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return bare, (*headers, ("Authorization", f"Basic {token}"))


def parse_endpoint(name: str, values: Mapping[str, str]) -> EndpointConfig:
    section = f"[{SECTION_PREFIX}{name}]"
    kwargs = parse_section_values(section, values, _KEYS, required=("url",))
    kwargs["url"], kwargs["headers"] = _without_credentials(
        kwargs["url"], kwargs.get("headers", ())
    )
    # registry:2 merges ignoredmediatypes and ignore.mediatypes the same way.
    ignored = kwargs.pop("ignoredmediatypes", ()) + kwargs.pop("ignore_mediatypes", ())
    config = EndpointConfig(name=name, ignoredmediatypes=ignored, **kwargs)
    if config.maxbackoff < config.backoff:
        raise ConfigError(f"{section} maxbackoff: must not be less than backoff")
    return config


def parse_endpoints(config: Config) -> list[EndpointConfig]:
    """Every enabled endpoint, in name order; ConfigError for a bad one."""
    endpoints = [
        parse_endpoint(section[len(SECTION_PREFIX) :], values)
        for section, values in sorted(config.extra.items())
        if section.startswith(SECTION_PREFIX)
    ]
    return [endpoint for endpoint in endpoints if not endpoint.disabled]


def queue_directory(config: Config) -> str | None:
    """Where the endpoint logs live; None keeps queues in memory (inmemory storage only)."""
    if config.notifications.queuedir:
        return config.notifications.queuedir
    if config.storage.driver == "filesystem":
        return os.path.join(config.storage.rootdirectory, "notifications")
    if config.storage.driver == "inmemory":
        return None
    raise ConfigError(
        "[notifications] queuedir: required with the s3 driver (a local folder where each "
        "instance keeps the events it has not delivered yet)"
    )


def leftover_queue_directory(config: Config) -> str | None:
    """Where endpoint logs would be, without requiring a folder (an s3 registry without
    ``queuedir`` and without endpoints has none)."""
    if config.notifications.queuedir:
        return config.notifications.queuedir
    if config.storage.driver == "filesystem":
        return os.path.join(config.storage.rootdirectory, "notifications")
    return None


def check_notifications(config: Config) -> list[EndpointConfig]:
    """Validate the notification settings (at option parsing, so that start-up stops early)."""
    endpoints = parse_endpoints(config)
    if endpoints:
        queue_directory(config)
    return endpoints
