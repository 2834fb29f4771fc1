"""
``[sync:NAME]`` sections: one replication each, parsed from `Config.extra`.

A sync copies images between this registry and one remote registry, in one ``direction``:
``pull`` brings the remote's repositories into this registry, ``push`` sends this registry's
repositories to the remote.  Errors name the section and key, so a typo stops start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from registry.api.errors import RegistryError
from registry.api.names import check_name
from registry.client import Credentials, TLSOptions, credentials_from_config
from registry.config import (
    Config,
    ConfigError,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_http_url,
    parse_list,
    parse_positive_duration,
    parse_section_values,
    parse_size,
)
from registry.sync.filters import RepositoryFilter, TagFilter, check_glob

SECTION_PREFIX = "sync:"
MAX_CONCURRENCY = 64
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


def _regex(text: str) -> re.Pattern[str] | None:
    text = text.strip()
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {text!r} ({exc})") from None


def _count(limit: int, low: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"not a whole number: {text!r}") from None
        if not low <= value <= limit:
            raise ValueError(f"must be between {low} and {limit}: {text!r}")
        return value

    return parse


def _bandwidth(text: str) -> int:
    """``50MB`` or ``50MB/s`` (bytes per second); ``0``, ``none`` or empty: no limit."""
    text = text.strip()
    if text.lower() in ("", "0", "none", "off", "unlimited"):
        return 0
    return parse_size(text.removesuffix("/s"))


def _globs(text: str) -> tuple[str, ...]:
    return tuple(check_glob(word) for word in parse_list(text))


def _prefix(text: str) -> str:
    text = text.strip().strip("/")
    if not text:
        return ""
    try:
        check_name(text)
    except RegistryError:
        raise ValueError(f"{text!r} is not a repository-name prefix (e.g. mirror)") from None
    return text


def _path(text: str) -> str | None:
    return text.strip() or None


@attrs.frozen
class SyncConfig:
    """One replication.  Durations are seconds; ``bandwidth`` is bytes per second (0: none)."""

    name: str
    remote: str
    direction: str = "pull"
    repositories: RepositoryFilter = attrs.field(factory=RepositoryFilter)
    tags: TagFilter = attrs.field(factory=TagFilter)
    # Repositories land under this prefix on the receiving side (mirror/library/alpine).
    destination: str = ""
    # Drop the globs' common leading components before adding `destination`.
    strip_prefix: bool = False
    interval: float = 3600.0
    # The first run starts at a random moment this long after start at most, so that
    # several syncs (and several restarted registries) do not all start at once.
    first_run_within: float = 5.0
    concurrency: int = 4
    bandwidth: int = 0
    referrers: bool = True
    enabled: bool = True
    timeout: float = 30.0
    credentials: Credentials | None = None
    tls: TLSOptions = attrs.field(factory=TLSOptions)

    @property
    def remote_host(self) -> str:
        return urlsplit(self.remote).netloc


_KEYS: dict[str, Callable[[str], Any]] = {
    "remote": lambda t: parse_http_url(t).rstrip("/"),
    "direction": parse_choice("pull", "push"),
    "repositories": _globs,
    "tags": parse_list,
    "tags_regex": _regex,
    "tags_exclude": _regex,
    "newest": _count(100_000),
    "destination": _prefix,
    "strip_prefix": parse_bool,
    "interval": parse_positive_duration,
    "first_run_within": parse_duration,
    "concurrency": _count(MAX_CONCURRENCY, low=1),
    "bandwidth": _bandwidth,
    "referrers": parse_bool,
    "enabled": parse_bool,
    "timeout": parse_positive_duration,
    "username": lambda t: t.strip() or None,
    # Empty, like an empty username: no credentials (as in [proxy:NAME]).
    "password": lambda t: t or None,
    "authfile": _path,
    "cabundle": _path,
    "certfile": _path,
    "keyfile": _path,
    "tls_verify": parse_bool,
}


def parse_sync(name: str, values: Mapping[str, str]) -> SyncConfig:
    section = f"[{SECTION_PREFIX}{name}]"
    if _NAME.fullmatch(name) is None:
        # The name is a path component of the sync's saved state.
        raise ConfigError(f"{section}: a sync's name starts with a letter or digit")
    kwargs = parse_section_values(section, values, _KEYS, required=("remote",))
    username, password = kwargs.pop("username", None), kwargs.pop("password", None)
    authfile = kwargs.pop("authfile", None)
    if password is not None and username is None:
        raise ConfigError(f"{section} password: needs a username")
    if username is not None and authfile is not None:
        raise ConfigError(f"{section} authfile: give username/password or authfile, not both")
    remote = kwargs["remote"]
    credentials = Credentials(username, password or "") if username else None
    if authfile is not None:
        if not Path(authfile).is_file():
            raise ConfigError(f"{section} authfile: {authfile}: no such file")
        host = urlsplit(remote).netloc
        try:
            credentials = credentials_from_config(host, authfile)
        except ValueError as exc:
            raise ConfigError(f"{section} authfile: {exc}") from None
        if credentials is None:
            # Named for this sync, a file without the remote's entry is a mistake (a host
            # spelled another way, the wrong file): running anonymously would hide it.
            raise ConfigError(f"{section} authfile: {authfile} has no credentials for {host}")
    if kwargs.get("keyfile") and not kwargs.get("certfile"):
        raise ConfigError(f"{section} keyfile: needs certfile")
    tls = TLSOptions(
        ca_file=kwargs.pop("cabundle", None),
        cert_file=kwargs.pop("certfile", None),
        key_file=kwargs.pop("keyfile", None),
        verify=kwargs.pop("tls_verify", True),
    )
    problem = tls.problem()
    if problem is not None:
        which, reason = problem
        key = {"ca_file": "cabundle", "cert_file": "certfile", "key_file": "keyfile"}[which]
        raise ConfigError(f"{section} {key}: {reason}")
    tags = TagFilter(
        globs=kwargs.pop("tags", ()),
        regex=kwargs.pop("tags_regex", None),
        exclude=kwargs.pop("tags_exclude", None),
        newest=kwargs.pop("newest", 0),
    )
    if "repositories" in kwargs:
        kwargs["repositories"] = RepositoryFilter(kwargs["repositories"] or ("**",))
    return SyncConfig(name=name, credentials=credentials, tls=tls, tags=tags, **kwargs)


def parse_syncs(config: Config) -> list[SyncConfig]:
    """Every ``[sync:NAME]`` section in name order (disabled ones included); ConfigError for
    a bad one."""
    return [
        parse_sync(section[len(SECTION_PREFIX) :], values)
        for section, values in sorted(config.extra.items())
        if section.startswith(SECTION_PREFIX)
    ]
