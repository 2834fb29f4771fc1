"""
Configuration: ``tap.cfg`` (INI) plus ``REGISTRY_<SECTION>_<KEY>`` environment overrides,
turned once into a frozen `Config` that is passed explicitly to whatever needs it.

Every section is an attrs class whose fields are the section's keys; a field's metadata says how
its text is parsed.  Unknown sections and keys are refused, so a typo stops start-up with one
line naming the key instead of being silently ignored.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import attrs

from registry.server import log_rotation

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; the message names the section and key."""


def file_problem(exc: Exception, path: object) -> str:
    """
    One line for why the file at ``path`` (named by a key) cannot be used: it cannot be read
    (``cannot read PATH: no such file or directory``), or the library that parsed it refused
    it (its message, on one line, naming the file).
    """
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename or path}: {(exc.strerror or str(exc)).lower()}"
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if str(path) in message else f"{path}: {message}"


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int:
    """``4MiB``, ``50GiB``, ``10MB``, ``1048576`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4MiB, 50GiB, 1048576)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_size_at_least(minimum: int, unit: str) -> Callable[[str], int]:
    """`parse_size`, refusing less than ``minimum`` bytes (``unit``: how the message writes
    it): a limit of 0 would refuse every request it applies to."""

    def parse(text: str) -> int:
        size = parse_size(text)
        if size < minimum:
            raise ValueError(f"must be at least {unit}: {text!r}")
        return size

    return parse


def parse_duration(text: str) -> float:
    """``30s``, ``5m``, ``168h``, ``7d``, ``1h30m``, ``120`` -> seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 5m, 168h, 7d)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_worker_timeout(text: str) -> float:
    """``[http] worker_timeout``: 0 (never), or at least 2 s (a worker's heartbeat counts as
    late only past 2 s: `registry.server.board.STALE`)."""
    value = parse_duration(text)
    if 0 < value < 2:
        raise ValueError(f"must be 0 (never) or at least 2s: {text!r}")
    return value


def parse_positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"must be more than 0: {text!r}")
    return value


_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def parse_http_url(text: str, credentials: bool = False) -> str:
    """
    An http(s) URL with a host name or address and, if any, a port in range: a URL that
    cannot be reached stops start-up here instead of failing every request later.  A
    ``user:password@`` part is refused unless ``credentials`` (the error then does not
    repeat the URL: it would print the password).
    """
    text = text.strip()
    # Every error below names the URL without its password, even one too broken to split.
    shown = without_credentials(text)
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"{shown!r} is not an http(s) URL")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # a bracketed host that is no IPv6 address
        raise ValueError(f"{shown!r} is not a URL: {exc}") from None
    if "@" in parts.netloc and not credentials:
        raise ValueError(
            "the URL carries credentials (user:password@); this section has its own keys for them"
        )
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown!r}: the port is not a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"{shown!r}: the port is not a number from 1 to 65535")
    if not host:
        raise ValueError(f"{shown!r} names no host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{shown!r}: {host!r} is not an IPv6 address") from None
    elif _HOST.fullmatch(host) is None:
        raise ValueError(f"{shown!r}: {host!r} is not a host name or address")
    return text


def parse_optional_http_url(text: str) -> str:
    """Empty (the key unused), or an http(s) URL (`parse_http_url`)."""
    return parse_http_url(text) if text.strip() else ""


def parse_regionendpoint(text: str) -> str:
    """Empty (AWS), ``host[:port]`` (https, or http when ``secure`` is off), or an http(s)
    URL: another scheme failed only at the first S3 request, naming no key."""
    text = text.strip()
    if "://" in text:
        parse_http_url(text)
    return text


def parse_instance(text: str) -> str:
    """A fleet instance's name: it goes into Redis keys, peer URLs' logs and every line the
    instance writes about the fleet, so letters, digits, ``.``, ``_`` and ``-`` only."""
    text = text.strip()
    if text and _INSTANCE.fullmatch(text) is None:
        raise ValueError(
            f"{text!r}: use 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter"
            " or digit)"
        )
    return text


_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_repository_patterns(text: str) -> tuple[str, ...]:
    """Repository name patterns (``team/*``, ``public/**``), each checked as the policy
    file's are."""
    patterns = parse_list(text)
    if patterns:
        from registry.auth.policy import Glob, PolicyError

        for pattern in patterns:
            try:
                Glob.parse(pattern)
            except PolicyError as exc:
                raise ValueError(str(exc)) from None
    return patterns


def parse_realm(text: str) -> str:
    """A Basic challenge's realm: what a client shows its user, so never empty."""
    if not text.strip():
        raise ValueError("empty: give the name clients show when they ask for a password")
    return text


def without_credentials(url: str) -> str:
    """``url`` with its ``user:password@`` left out, worked out by hand rather than by
    `urlsplit`, which refuses some URLs that errors must still show."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" not in authority:
        return url
    return f"{scheme}://{authority.rpartition('@')[2]}{rest[end:]}"


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


UpstreamChecks = Literal["degraded", "required", "off"]


def parse_upstream_checks(text: str) -> UpstreamChecks:
    lowered = text.strip().lower()
    if lowered in ("required", "degraded", "off"):
        return cast(UpstreamChecks, lowered)
    try:
        return "degraded" if parse_bool(lowered) else "off"
    except ValueError:
        raise ValueError(f"not a choice: {text!r} (use true, required or false)") from None


SendfileMode = Literal["auto", "always", "never"]


def parse_sendfile(text: str) -> SendfileMode:
    """``auto`` (every peer but one on loopback), or a boolean: ``true`` always, ``false`` never."""
    lowered = text.strip().lower()
    if lowered == "auto":
        return "auto"
    try:
        return "always" if parse_bool(lowered) else "never"
    except ValueError:
        raise ValueError(f"not auto, true or false: {text!r}") from None


def parse_list(text: str) -> tuple[str, ...]:
    """Whitespace-, comma- or newline-separated words."""
    return tuple(word for word in re.split(r"[\s,]+", text.strip()) if word)


def parse_ports(text: str) -> tuple[str, ...]:
    """Listening endpoints: at least one (an empty value would start a registry that listens
    on nothing, and says it is listening)."""
    ports = parse_list(text)
    if not ports:
        raise ValueError("no listening address (examples: tcp:5000, ssl:5443:privateKey=...)")
    return ports


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    """
    Addresses and CIDR networks (``127.0.0.1 10.0.0.0/8 ::1``), and ``unix`` for peers on a
    UNIX socket; each checked here so a typo stops start-up.  Kept as text, normalised.
    """
    words = []
    for word in parse_list(text):
        if word.lower() == "unix":
            words.append("unix")
            continue
        try:
            words.append(str(ipaddress.ip_network(word, strict=True)))
        except ValueError as exc:
            raise ValueError(f"not an address or network: {word!r} ({exc})") from None
    return tuple(words)


def parse_workers(text: str) -> int:
    """``auto`` (0: one per core, see `registry.server.workers`) or a number of processes."""
    text = text.strip().lower()
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not auto or a number of processes (1, 2, ...)")
    return int(text)


def parse_count(minimum: int) -> Callable[[str], int]:
    """A whole number of at least ``minimum`` (no sign, no unit)."""

    def parse(text: str) -> int:
        text = text.strip()
        if re.fullmatch(r"[0-9]{1,18}", text) is None or int(text) < minimum:
            raise ValueError(f"not a whole number of at least {minimum}: {text!r}")
        return int(text)

    return parse


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text.strip()

    return parse


def key(default: Any, parse: Callable[[str], Any] = str, doc: str = "") -> Any:
    """A configuration key: its default and how to parse its text."""
    return attrs.field(default=default, metadata={"parse": parse, "doc": doc})


@attrs.frozen
class HttpConfig:
    port: tuple[str, ...] = key(("tcp:5000",), parse_ports)
    relativeurls: bool = key(True, parse_bool)
    http2: bool = key(False, parse_bool)
    # Blob GETs from the filesystem driver over plain TCP sent with os.sendfile (http/sendfile.py),
    # in the storage thread pool: "auto" to peers not on loopback, "always", or "never".
    sendfile: str = key("auto", parse_sendfile)
    clientcas: str = key("")
    clientauth: str = key("none", parse_choice("none", "optional", "required"))
    max_body_size: int = key(1024 * 1024, parse_size_at_least(1024, "1KiB"))
    timeout: float = key(300.0, parse_positive_duration)
    # Reverse proxies whose X-Forwarded-* / Forwarded headers are believed (http/forwarded.py).
    trusted_proxies: tuple[str, ...] = key((), parse_trusted_proxies)
    # On SIGTERM, how long requests in flight may take to finish (registry:2's key).
    draintimeout: float = key(60.0, parse_duration)
    # Serving processes sharing the listening sockets: 0 (auto) is one per core, 1 is a single
    # process (registry.server.workers).
    workers: int = key(0, parse_workers)
    # With several workers: how long a worker's heartbeat may stay silent (its reactor blocked
    # or the process stopped) before the supervisor kills it and starts another; 0: never.
    worker_timeout: float = key(30.0, parse_worker_timeout)


@attrs.frozen
class StorageConfig:
    driver: str = key("filesystem", parse_choice("filesystem", "inmemory", "s3"))
    rootdirectory: str = key("./registry-data")
    delete_enabled: bool = key(False, parse_bool)
    fsync: bool = key(False, parse_bool)
    max_manifest_size: int = key(4 * 1024 * 1024, parse_size_at_least(1024, "1KiB"))
    redirect: bool = key(False, parse_bool)
    # S3 (registry:2's key names).
    bucket: str = key("")
    region: str = key("us-east-1")
    regionendpoint: str = key("", parse_regionendpoint)
    accesskey: str = key("")
    secretkey: str = key("")
    chunksize: int = key(10 * 1024 * 1024, parse_size)
    secure: bool = key(True, parse_bool)
    forcepathstyle: bool = key(False, parse_bool)
    spooldirectory: str = key("")
    # S3 upload parts wait in files (spooldirectory, else the system's temporary folder)
    # rather than in memory: concurrent large pushes then stay within a few MiB each.
    spoolparts: bool = key(True, parse_bool)
    # How long an S3 request waits for S3's answer (status line and headers) before failing:
    # a hung S3 then gives clients a 503 rather than a wait as long as theirs.
    answertimeout: float = key(60.0, parse_positive_duration)
    # How long a server-side copy or a multipart completion (an upload's commit) may take
    # before S3 answers: S3 may work on one for minutes, but a stalled S3 must not hold a
    # client's commit for ever.
    copytimeout: float = key(600.0, parse_positive_duration)
    # How long an S3 transfer (a part upload, a download, the answer after a part) may go
    # without a byte moving either way before it fails as S3 being unavailable: a stalled S3
    # then ends requests instead of holding them for as long as the network keeps quiet.
    idletimeout: float = key(60.0, parse_positive_duration)


@attrs.frozen
class UploadsConfig:
    purge_enabled: bool = key(True, parse_bool)
    purge_age: float = key(7 * 86400.0, parse_duration)
    purge_interval: float = key(86400.0, parse_positive_duration)


@attrs.frozen
class MaintenanceConfig:
    readonly: bool = key(False, parse_bool)


def parse_rotate_keep(text: str) -> int:
    """How many rotated log files to keep: 1 to `log_rotation.MAX_KEEP` (each is renamed at
    every rotation, on the thread that writes the log)."""
    count = parse_count(1)(text)
    if count > log_rotation.MAX_KEEP:
        raise ValueError(f"at most {log_rotation.MAX_KEEP} rotated log files are kept, not {count}")
    return count


@attrs.frozen
class LogConfig:
    # Where logs go is twistd's business (--logfile, --syslog); this switches the access log,
    # one line per request, and says how a --logfile rotates (registry.server.log_rotation):
    # at rotatesize bytes (0: only on SIGUSR1), keeping rotatekeep rotated files.
    accesslog: bool = key(True, parse_bool)
    rotatesize: int = key(log_rotation.DEFAULT_SIZE, parse_size)
    rotatekeep: int = key(log_rotation.DEFAULT_KEEP, parse_rotate_keep)


def parse_patterns(text: str) -> tuple[str, ...]:
    """Regular expressions, one per line (or separated by spaces); each must compile."""
    patterns = tuple(word for word in text.split() if word)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from None
    return patterns


def parse_index_platforms(text: str) -> tuple[str, ...]:
    """``all``, ``none``, or ``os/architecture`` platforms (``linux/amd64 linux/arm64``)."""
    words = parse_list(text.lower()) or ("all",)
    if words in (("all",), ("none",)):
        return words
    for word in words:
        if re.fullmatch(r"[a-z0-9._-]+/[a-z0-9._-]+", word) is None:
            raise ValueError(
                f"{word!r} is not an os/architecture platform (linux/amd64); "
                "or use all or none alone"
            )
    return words


@attrs.frozen
class ValidationConfig:
    # registry:2's validation.manifests.urls.allow / deny, for foreign-layer URLs.
    urls_allow: tuple[str, ...] = key((), parse_patterns)
    urls_deny: tuple[str, ...] = key((), parse_patterns)
    # registry:2 v3's validation.manifests.indexes.platforms (+ platformlist): which children
    # of a pushed index must already be in the repository (registry.manifests.IndexPolicy).
    index_platforms: tuple[str, ...] = key(("all",), parse_index_platforms)
    # Whether an image manifest's config and layers must already be blobs of the repository
    # (the spec lets a registry refuse a manifest whose blobs are missing, or accept it).
    blobs_required: bool = key(True, parse_bool)


@attrs.frozen
class AuthConfig:
    policy: str = key("")
    anonymous_pull: tuple[str, ...] = key((), parse_repository_patterns)
    client_certificate_users: bool = key(False, parse_bool)
    max_failures: int = key(10, parse_count(0))
    failure_window: float = key(60.0, parse_duration)
    cooldown: float = key(60.0, parse_duration)


@attrs.frozen
class HtpasswdConfig:
    path: str = key("")
    realm: str = key("Registry Realm", parse_realm)
    cache_seconds: float = key(60.0, parse_duration)


@attrs.frozen
class TokenConfig:
    realm: str = key("", parse_optional_http_url)
    service: str = key("")
    issuer: str = key("")
    rootcertbundle: str = key("")
    jwks: str = key("")


@attrs.frozen
class UiConfig:
    # The web UI under /ui/ (registry/ui), same process, same authentication.
    enabled: bool = key(True, parse_bool)


@attrs.frozen
class NotificationsConfig:
    # Settings shared by every [notifications:NAME] endpoint (see registry.ops.notifications).
    # Folder of the per-endpoint event logs; empty: <rootdirectory>/notifications with the
    # filesystem driver, memory only with inmemory, required with s3.
    queuedir: str = key("")
    # How often accepted events are written to the log: the window lost to kill -9.
    flush_interval: float = key(0.05, parse_positive_duration)
    # fsync the log after each write, so that the window holds across a power loss too. Off
    # by default, like [storage] fsync: each fsync makes the filesystem's journal commit, which
    # slows the storage's own file creations, and so every push.
    fsync: bool = key(False, parse_bool)


@attrs.frozen
class HealthConfig:
    # How long a check's result is reused, and how long a probe may take: a storage that
    # stops working shows in readiness within cache + timeout seconds.
    cache: float = key(2.0, parse_duration)
    timeout: float = key(2.0, parse_positive_duration)
    # Each [proxy:NAME] upstream's GET /v2/ in readiness: "degraded" (true) reports an
    # outage as degraded, readiness 200, the cache serving what it holds; "required" fails
    # readiness (503); "off" (false) leaves it out.
    upstreams: str = key("degraded", parse_upstream_checks)


@attrs.frozen
class DebugConfig:
    # A second listener for /metrics and the health checks (registry:2's http.debug), e.g.
    # tcp:5001:interface=127.0.0.1.  When set, /metrics leaves the main port.
    addr: str = key("")


def parse_host_port(text: str) -> str:
    """``host:port`` (``redis.internal:6379``, ``[::1]:6379``); empty means "not set"."""
    text = text.strip()
    if not text:
        return ""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (example: redis.internal:6379)")
    return text


def parse_secret(text: str) -> str:
    text = text.strip()
    if text and len(text) < 16:
        raise ValueError("too short: use at least 16 characters (e.g. openssl rand -hex 32)")
    return text


@attrs.frozen
class RedisConfig:
    # Shared state of a fleet of instances (registry/proxy/fleet); keys named after
    # registry:2's redis section.  Empty addr: no Redis, one instance per cache storage.
    addr: str = key("", parse_host_port)
    username: str = key("")
    password: str = key("")
    db: int = key(0, parse_count(0))
    dialtimeout: float = key(5.0, parse_positive_duration)
    readtimeout: float = key(5.0, parse_positive_duration)
    writetimeout: float = key(5.0, parse_positive_duration)
    tls: bool = key(False, parse_bool)
    # CA bundle that signs the Redis server's certificate (empty: the system's).
    tls_cafile: str = key("")
    # Connections at most (registry:2's pool.maxactive); also the threads that wait on them.
    pool_maxactive: int = key(8, parse_count(1))


@attrs.frozen
class FleetConfig:
    # Where this instance serves its in-flight fills to the other instances (an endpoint
    # string, e.g. tcp:5002:interface=10.0.0.5), the URL they reach it at, and the secret
    # every instance shares.  Only used with [redis] addr.
    # ``listen`` may be an ssl: endpoint (privateKey=/certKey=, as --port) and ``advertise``
    # an https:// URL.
    listen: str = key("")
    advertise: str = key("", parse_optional_http_url)
    secret: str = key("", parse_secret)
    # CA bundle that signs the instances' peer certificates, checked when a peer URL is
    # https (empty: the system's).  With it, or with an https advertise, plain-http peers
    # are refused.
    tls_cafile: str = key("")
    # A client certificate (PEM; the key in tls_keyfile, or in the same file) presented to
    # the other instances; with it, this instance's ssl: listen asks the others for theirs,
    # signed by tls_cafile (mutual TLS).
    tls_certfile: str = key("")
    tls_keyfile: str = key("")
    # A fill lease lives this long unless its holder renews it (every third of it).
    lease: float = key(15.0, parse_positive_duration)
    # This instance's name in the fleet (empty: host name and process id).
    instance: str = key("", parse_instance)


@attrs.frozen
class Config:
    http: HttpConfig = HttpConfig()
    storage: StorageConfig = StorageConfig()
    uploads: UploadsConfig = UploadsConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    log: LogConfig = LogConfig()
    validation: ValidationConfig = ValidationConfig()
    auth: AuthConfig = AuthConfig()
    auth_htpasswd: HtpasswdConfig = HtpasswdConfig()
    auth_token: TokenConfig = TokenConfig()
    ui: UiConfig = UiConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    health: HealthConfig = HealthConfig()
    debug: DebugConfig = DebugConfig()
    redis: RedisConfig = RedisConfig()
    fleet: FleetConfig = FleetConfig()
    # Sections whose names are not fixed (``[proxy:NAME]``), raw, parsed by their owners.
    extra: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    # (section, key) -> the REGISTRY_* variable that set it: an error about the value, found
    # by whoever parses it (open sections are parsed by their owners), names the variable.
    from_environment: Mapping[tuple[str, str], str] = attrs.field(
        factory=dict, eq=False, repr=False
    )


def naming_variable(error: ConfigError, config: Config) -> ConfigError:
    """``error`` about a key ``config`` took from a ``REGISTRY_*`` variable, saying which
    (the message starts ``[section] key:`` or ``[section] key = value:``)."""
    text = str(error)
    for (section, key), variable in config.from_environment.items():
        if text.startswith((f"[{section}] {key}:", f"[{section}] {key} =")):
            return ConfigError(f"{text} (from the environment variable {variable})")
    return error


SECTIONS: dict[str, type[Any]] = {
    "http": HttpConfig,
    "storage": StorageConfig,
    "uploads": UploadsConfig,
    "maintenance": MaintenanceConfig,
    "log": LogConfig,
    "validation": ValidationConfig,
    "auth": AuthConfig,
    "auth.htpasswd": HtpasswdConfig,
    "auth.token": TokenConfig,
    "ui": UiConfig,
    "notifications": NotificationsConfig,
    "health": HealthConfig,
    "debug": DebugConfig,
    "redis": RedisConfig,
    "fleet": FleetConfig,
}
# Sections parsed by their owners (one per upstream, webhook endpoint or replication); kept raw in
# Config.extra.
OPEN_KINDS = ("proxy", "notifications", "sync")
OPEN_SECTIONS = re.compile(rf"(?:{'|'.join(OPEN_KINDS)}):[a-z0-9._-]+")


def env_name(section: str, name: str) -> str:
    return "REGISTRY_" + re.sub(r"[^A-Z0-9]", "_", f"{section}_{name}".upper())


ENV_PREFIX = "REGISTRY_"
# ``REGISTRY_*`` variables that belong to other tools and are often set where a registry runs:
# containers-auth.json(5)'s credentials file (podman, skopeo, buildah; `txregistry copy` reads
# it too).
OTHER_TOOLS_VARIABLES = frozenset({"REGISTRY_AUTH_FILE"})


def _naming_variable(
    error: ConfigError, section: str, from_environment: Mapping[tuple[str, str], str]
) -> ConfigError:
    """``error`` about a key of ``section``, saying which environment variable set it."""
    text = str(error)
    for (where, key), variable in from_environment.items():
        if where == section and text.startswith(f"[{section}] {key}:"):
            return ConfigError(f"{text} (from the environment variable {variable})")
    return error


def _apply_open_section_environment(
    raw: dict[str, dict[str, str]], environ: Mapping[str, str]
) -> dict[tuple[str, str], str]:
    """
    Apply ``REGISTRY_*`` variables to the open sections of the file (``[proxy:NAME]``: the
    variable's prefix names the section, the rest the key), and refuse any ``REGISTRY_*``
    variable that names no key: a misspelt one would otherwise be ignored in silence.  The
    keys set, with the variable that set each.
    """
    applied: dict[tuple[str, str], str] = {}
    fixed = {
        env_name(section, field.name)
        for section, cls in SECTIONS.items()
        for field in attrs.fields(cls)
    }
    # Longest prefix first: [proxy:hub_eu] wins over [proxy:hub] for REGISTRY_PROXY_HUB_EU_*.
    open_prefixes = sorted(
        ((env_name(section, ""), section) for section in raw if section not in SECTIONS),
        key=lambda item: -len(item[0]),
    )
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in fixed:
            continue
        if variable in OTHER_TOOLS_VARIABLES:
            continue
        for prefix, section in open_prefixes:
            if variable.startswith(prefix) and len(variable) > len(prefix):
                key = variable[len(prefix) :].lower()
                raw[section][key] = environ[variable]
                applied[(section, key)] = variable
                break
        else:
            candidates = sorted(fixed) + [prefix + "<KEY>" for prefix, _ in open_prefixes]
            import difflib  # only for a mistake: a hint to the nearest name

            near = difflib.get_close_matches(variable, candidates, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(f"environment variable {variable}: no such key{hint}")
    return applied


def parse_section_values(
    section: str,
    values: Mapping[str, str],
    parsers: Mapping[str, Callable[[str], Any]],
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """
    The keys of a section, each read by its parser (the fixed sections' come from their
    fields; ``[proxy:NAME]``, ``[notifications:NAME]`` and ``[sync:NAME]`` name theirs); an
    unknown key, a bad value or a missing ``required`` key is a `ConfigError` naming the
    section and the key.
    """
    parsed: dict[str, Any] = {}
    for name, text in values.items():
        parse = parsers.get(name)
        if parse is None:
            raise ConfigError(f"{section} {name}: unknown key")
        try:
            parsed[name] = parse(text)
        except ValueError as exc:
            raise ConfigError(f"{section} {name}: {exc}") from None
    for name in required:
        if name not in parsed:
            raise ConfigError(f"{section} {name}: required")
    return parsed


def _parse_section(section: str, cls: type[T], values: Mapping[str, str]) -> T:
    parsers = {field.name: field.metadata["parse"] for field in attrs.fields(cls)}  # type: ignore[arg-type]
    return cls(**parse_section_values(f"[{section}]", values, parsers))


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], str] | None = None,
) -> Config:
    """
    Read ``path`` (if any), apply environment variables, then ``overrides`` (command-line
    options), and validate everything.  Raises ConfigError naming the offending key.
    """
    environ = os.environ if environ is None else environ
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    if path is not None:
        try:
            with open(path, encoding="utf-8") as file:
                parser.read_file(file)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: not UTF-8 text ({exc.reason})") from None
        except configparser.Error as exc:
            # Its messages span lines (the offending line is quoted on the next one).
            message = " ".join(str(exc.message).split())
            raise ConfigError(f"config file {path}: {message}") from None
    if parser.defaults():
        # configparser would copy its keys into every section, silently.
        raise ConfigError(
            "[DEFAULT]: not supported (its keys would apply to every section); "
            "put each key in its own section"
        )
    raw: dict[str, dict[str, str]] = {s: dict(parser.items(s)) for s in parser.sections()}
    for section in raw:
        if section not in SECTIONS and OPEN_SECTIONS.fullmatch(section) is None:
            kind, colon, _ = section.partition(":")
            if colon and kind in OPEN_KINDS:
                # The name becomes a path component, a metric label and part of REGISTRY_*
                # variable names: one spelling only (``[sync:Upstream]`` is no other section).
                raise ConfigError(
                    f"[{section}]: a section name after '{kind}:' is lower-case letters, "
                    "digits, '.', '_' and '-' only"
                )
            raise ConfigError(f"[{section}]: unknown section")
    # Keys set by a variable: a value refused names the variable, not only the key.
    from_environment: dict[tuple[str, str], str] = {}
    for section, cls in SECTIONS.items():
        for field in attrs.fields(cls):
            variable = env_name(section, field.name)
            value = environ.get(variable)
            if value is not None:
                raw.setdefault(section, {})[field.name] = value
                from_environment[(section, field.name)] = variable
    from_environment.update(_apply_open_section_environment(raw, environ))
    for (section, name), value in (overrides or {}).items():
        raw.setdefault(section, {})[name] = value
        from_environment.pop((section, name), None)
    parsed = {}
    for section, cls in SECTIONS.items():
        try:
            parsed[section.replace(".", "_")] = _parse_section(section, cls, raw.get(section, {}))
        except ConfigError as exc:
            raise _naming_variable(exc, section, from_environment) from None
    extra = {s: v for s, v in raw.items() if s not in SECTIONS}
    config = Config(**parsed, extra=extra, from_environment=from_environment)
    try:
        _check_fleet_has_redis(config)
    except ConfigError as exc:
        raise _naming_variable(exc, "fleet", from_environment) from None
    try:
        _check_storage_root(config.storage)
    except ConfigError as exc:
        raise _naming_variable(exc, "storage", from_environment) from None
    return config


def _check_storage_root(storage: StorageConfig) -> None:
    """An empty folder would be the process's current directory (``/`` under systemd): the
    data would land wherever the registry happened to start.  For S3 the root is a key
    prefix, where empty means none."""
    if storage.driver == "filesystem" and not storage.rootdirectory.strip():
        raise ConfigError(
            "[storage] rootdirectory: empty (the filesystem driver needs a folder; "
            "without one it would store in the current directory)"
        )


def _check_fleet_has_redis(config: Config) -> None:
    """A ``[fleet]`` key without ``[redis] addr`` would be ignored: the instance would run as a
    cache of its own while its operator believes it shares fills with the others."""
    if config.redis.addr:
        return
    unset = FleetConfig()
    for field in attrs.fields(FleetConfig):
        if getattr(config.fleet, field.name) != getattr(unset, field.name):
            raise ConfigError(
                f"[fleet] {field.name}: needs [redis] addr (the instances of a fleet share "
                "their state in Redis; without it this instance is a cache of its own)"
            )
