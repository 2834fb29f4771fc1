"""
``[proxy:NAME]`` sections: one upstream registry each, parsed from `Config.extra`.

The core config refuses unknown sections and keys for the sections it knows; it keeps
``[proxy:NAME]`` raw so this module owns their keys and their error messages, which name the
section and key (``[proxy:dockerhub] ttl: not a duration``) so a typo stops start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from registry.api.errors import RegistryError
from registry.api.names import check_name
from registry.config import (
    Config,
    ConfigError,
    parse_bool,
    parse_duration,
    parse_http_url,
    parse_positive_duration,
    parse_section_values,
    parse_size,
)

SECTION_PREFIX = "proxy:"
# ``max_inflight``'s default (`registry.proxy.cache.Limits` too).
MAX_INFLIGHT = 1024


def _optional_size(text: str) -> int | None:
    """``0``, ``none`` or empty: no bound."""
    if text.strip().lower() in ("", "0", "none", "off"):
        return None
    return parse_size(text)


def _optional_duration(text: str) -> float | None:
    if text.strip().lower() in ("", "0", "none", "off"):
        return None
    return parse_duration(text)


def _prefix(text: str) -> str:
    text = text.strip().strip("/")
    if not text:
        return ""
    try:
        check_name(text)
    except RegistryError:
        raise ValueError(f"{text!r} is not a repository-name prefix (e.g. docker.io)") from None
    return text


def _optional_bool(text: str) -> bool | None:
    """Empty: the default (None), decided elsewhere."""
    return parse_bool(text) if text.strip() else None


def _positive_int(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a number of 1 or more")
    return int(text)


def _url(text: str) -> str:
    return parse_http_url(text).rstrip("/")


@attrs.frozen
class ProxyConfig:
    """One upstream.  Durations are seconds; ``None`` disables a bound."""

    name: str
    remoteurl: str
    username: str | None = None
    password: str | None = None
    # Repository names ``<prefix>/<upstream name>`` go to this upstream ("docker.io").
    prefix: str = ""
    # Names matching no prefix (and not looking like another registry's host) come here.
    default: bool = False
    # Delete cached content unused for this long (None: keep until evicted for space).
    ttl: float | None = None
    # Revalidate a cached tag with upstream HEAD at most this often (0: on every request).
    tag_freshness: float = 0.0
    # Evict least-recently-used content above this many bytes (None: unbounded).
    max_size: int | None = None
    # How long a fill may wait for eviction to make room under max_size before it serves its
    # clients without keeping the blob (registry.proxy.space).
    space_wait: float = 10.0
    # How long the bytes of a fill interrupted by a restart (kill -9, a crash, a stop) are
    # kept for the next fill of the blob to resume from (``Range``) instead of fetching it
    # again from its first byte; 0: not kept (in the storage on the filesystem, in the fill
    # spool on S3; docs/proxy.md).
    partial_age: float = 86400.0
    # Connect-to-first-byte bound, and the silence allowed in a blob body.
    timeout: float = 30.0
    cabundle: str | None = None
    # Hash the first full read of each cached blob after a start (fills are hashed anyway); a
    # mismatch drops the blob so that the next pull fetches it again.
    verify_reads: bool = True
    # Map one-component names to ``library/<name>`` upstream (None: only for Docker Hub hosts).
    library: bool | None = None
    # How often the eviction state is written to storage, eviction runs, and a summary is logged.
    flush_interval: float = 30.0
    evict_interval: float = 60.0
    log_interval: float = 300.0
    # Distinct upstream calls (fills, HEADs, tag revalidations) in flight at once; beyond it
    # clients get 503 with Retry-After rather than a queue that grows with their requests.
    max_inflight: int = MAX_INFLIGHT
    # How long the cache stops asking an upstream that failed three times in a row (doubled
    # at each failed try, up to a minute; registry.proxy.health), and a kind of call that met
    # a 429 without Retry-After (doubled while the 429s go on); 0: it asks every time however
    # often it failed or answered 429 (a 429's Retry-After is still waited out).
    hold_off: float = 5.0


_KEYS: dict[str, Callable[[str], Any]] = {
    "remoteurl": _url,
    "username": lambda t: t.strip() or None,
    "password": lambda t: t or None,
    "prefix": _prefix,
    "default": parse_bool,
    "ttl": _optional_duration,
    "tag_freshness": parse_duration,
    "max_size": _optional_size,
    "space_wait": parse_duration,
    "partial_age": parse_duration,
    "timeout": parse_positive_duration,
    "cabundle": lambda t: t.strip() or None,
    "verify_reads": parse_bool,
    # Empty: automatic (only for Docker Hub hosts), as tap.cfg lists it.
    "library": _optional_bool,
    "flush_interval": parse_positive_duration,
    "evict_interval": parse_positive_duration,
    "log_interval": parse_positive_duration,
    "max_inflight": _positive_int,
    "hold_off": parse_duration,
}


def parse_proxy(name: str, values: Mapping[str, str]) -> ProxyConfig:
    section = f"[{SECTION_PREFIX}{name}]"
    kwargs = parse_section_values(section, values, _KEYS, required=("remoteurl",))
    if not kwargs.get("prefix") and not kwargs.get("default"):
        raise ConfigError(f"{section} prefix: required unless default = true")
    if kwargs.get("tag_freshness", 0.0) < 0:
        raise ConfigError(f"{section} tag_freshness: must not be negative")
    if kwargs.get("cabundle"):
        from registry.client import TLSOptions

        problem = TLSOptions(ca_file=kwargs["cabundle"]).problem()
        if problem is not None:
            raise ConfigError(f"{section} cabundle: {problem[1]}")
    return ProxyConfig(name=name, **kwargs)


def parse_proxies(config: Config) -> list[ProxyConfig]:
    """Every configured upstream, in name order; ConfigError for a bad or conflicting one."""
    proxies = [
        parse_proxy(section[len(SECTION_PREFIX) :], values)
        for section, values in sorted(config.extra.items())
        if section.startswith(SECTION_PREFIX)
    ]
    defaults = [p.name for p in proxies if p.default]
    if len(defaults) > 1:
        raise ConfigError(f"[proxy:{defaults[1]}] default: only one upstream may be the default")
    prefixes: dict[str, str] = {}
    for proxy in proxies:
        if proxy.prefix and proxy.prefix in prefixes:
            raise ConfigError(
                f"[proxy:{proxy.name}] prefix: {proxy.prefix!r} already used by "
                f"[proxy:{prefixes[proxy.prefix]}]"
            )
        if proxy.prefix:
            prefixes[proxy.prefix] = proxy.name
    _refuse_nested(proxies)
    return proxies


def _refuse_nested(proxies: list[ProxyConfig]) -> None:
    """
    A prefix inside another's (``docker.io/q`` and ``docker.io``) would give two upstream
    repositories one local name (``docker.io/q/app`` is ``app`` of the first and ``q/app`` of
    the second): content cached through one would be served through the other, past the
    policy and the other upstream's own access.  So would a prefix ``library`` next to a
    default upstream without one that stores ``alpine`` as ``library/alpine`` (Docker Hub).
    """
    named = sorted((p.prefix, p.name) for p in proxies if p.prefix)
    for prefix, name in named:
        for other, other_name in named:
            if prefix.startswith(other + "/"):
                raise ConfigError(
                    f"[proxy:{name}] prefix: {prefix!r} lies inside the prefix {other!r} of "
                    f"[proxy:{other_name}]: names under it would belong to both"
                )
    bare_default = next((p for p in proxies if p.default and not p.prefix), None)
    if bare_default is not None and _maps_library(bare_default):
        for prefix, name in named:
            if prefix == "library" or prefix.startswith("library/"):
                raise ConfigError(
                    f"[proxy:{name}] prefix: {prefix!r} is where [proxy:{bare_default.name}] "
                    f"(the default, without a prefix) keeps its library/ names"
                )


def _maps_library(proxy: ProxyConfig) -> bool:
    """Whether ``proxy`` stores one-component names as ``library/<name>`` (as its client
    decides, `registry.client._client.maps_to_library`)."""
    from registry.client._client import maps_to_library

    return maps_to_library(proxy.remoteurl, proxy.library)


def looks_like_host(component: str) -> bool:
    """Docker's rule: a first name component naming another registry (``.``, ``:``, localhost)."""
    return "." in component or ":" in component or component == "localhost"


def proxied_names(proxies: list[ProxyConfig]) -> Callable[[str], bool]:
    """Whether a local repository name is a cache's (routing's rules, `registry.proxy.routing`):
    ``<prefix>/...`` of any upstream, else any name not looking like a host when an upstream
    is the default."""
    prefixes = tuple(f"{p.prefix}/" for p in proxies if p.prefix)
    default = any(p.default for p in proxies)

    def proxied(name: str) -> bool:
        if name.startswith(prefixes):
            return True
        return default and not looks_like_host(name.split("/", 1)[0])

    return proxied
