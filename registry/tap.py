"""
``twistd registry``: command-line options, and which process this is.

`Options` only parses (the config file is read and validated here so that a bad value stops
start-up with one line naming the key).  `makeService` first keeps out the libraries the
configuration does not use (`registry.lean_imports`), then builds either a supervisor of
``[http] workers`` (`registry.server.supervisor`: no web stack, no storage) or a serving
process (`registry.server.build`).  This module imports neither the reactor nor the web
stack itself, so that the decision comes before Twisted makes its own.
"""

from __future__ import annotations

import os
import re
import signal
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from registry.config import Config, ConfigError, load, naming_variable
from registry.http.tls import (
    ListenerError,
    TLSSettings,
    is_tls_description,
    normalize_description,
    server_endpoint,
    warn_if_plain_public,
)
from registry.lean_imports import inherited_listeners, keep_out
from registry.ops.notifications import check_notifications
from registry.proxy.config import parse_proxies
from registry.server import daemon_status
from registry.server.exit import StartupError, exit_now, tell_checked
from registry.server.log_file import whole_lines
from registry.server.pidfile import clear_stale_pidfile
from registry.server.start_report import StartReported
from registry.server.worker_env import WORKER_ENVIRONMENT

if TYPE_CHECKING:  # (at run time imported where used, after `keep_out` decided)
    from registry.server.workers import WorkerSpec

log = Logger()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run txregistry, an OCI Distribution registry. Listening addresses are Twisted endpoint "
        "strings (tcp:5000, ssl:5443:privateKey=key.pem:certKey=cert.pem); see tap.cfg for "
        "every configuration key."
    )
    optParameters = [
        ["config", "c", None, "Configuration file in the tap.cfg format."],
        ["storage", "s", None, "Filesystem storage root (sets [storage] rootdirectory)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["port"] = []
        self.config: Config | None = None

    def opt_port(self, description: str) -> None:
        """Listen on this endpoint string (repeatable). Default: tcp:5000 or [http] port."""
        self["port"].append(normalize_description(description))

    opt_p = opt_port

    def opt_version(self) -> NoReturn:
        """Print the version and exit."""
        print(f"txregistry {version()}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        A mistake on the command line or in the configuration prints one line naming it, not
        twistd's whole usage text (``--help`` still prints that).
        """
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as exc:
            exit_now(str(exc))

    def postOptions(self) -> None:
        overrides: dict[tuple[str, str], str] = {}
        if self["storage"]:
            overrides[("storage", "driver")] = "filesystem"
            overrides[("storage", "rootdirectory")] = self["storage"]
        if self["port"]:
            overrides[("http", "port")] = " ".join(self["port"])
        elif WORKER_ENVIRONMENT in os.environ:
            # A worker serves the sockets its supervisor bound, named in its spec (the
            # supervisor's --port is not on its command line): the file's [http] port, perhaps
            # empty where --port replaced it, does not apply to it; nor its [debug] addr, which
            # a SIGHUP may have changed since the supervisor bound it.  A SIGHUP's check reads
            # the file's, to refuse what a start would refuse (`_check_listeners`).
            from registry.server.workers import WorkerSpec

            spec = WorkerSpec.from_environ(os.environ)
            if spec is not None and spec.listeners and not spec.check_ports:
                overrides[("http", "port")] = " ".join(i.description for i in spec.listeners)
            if spec is not None and not spec.check:
                overrides[("debug", "addr")] = spec.debug.description if spec.debug else ""
        try:
            self.config = load(self["config"], os.environ, overrides)
            parse_proxies(self.config)  # [proxy:NAME] sections are validated here too
            check_notifications(self.config)  # and [notifications:NAME]
            if has_syncs(self.config):  # and [sync:NAME]
                from registry.sync.config import parse_syncs

                parse_syncs(self.config)
        except ConfigError as exc:
            if self.config is not None:
                exc = naming_variable(exc, self.config)
            raise usage.UsageError(f"configuration error: {exc}") from None
        twistd = getattr(self, "parent", None)
        if twistd is not None and twistd.get("pidfile"):
            # Here: twistd parses its options (ours are parsed within), then checks its pid
            # file (``checkPID``, which refuses any live pid), and only then calls
            # `makeService`.  This is the last code of ours before that check.
            clear_stale_pidfile(twistd["pidfile"])


def version() -> str:
    """The installed distribution's version (the checkout's pyproject.toml when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("txregistry")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def listening_endpoints(
    config: Config,
    reactor: Any,
    auth_enabled: bool,
    warn: bool = True,
    refuse_expired: bool = False,
) -> list[tuple[str, Any]]:
    """One endpoint per ``--port`` (or ``[http] port``), checked but not bound yet; ``warn``
    False leaves the warnings about them to the processes that serve them (a supervisor's
    workers), ``refuse_expired`` refuses an expired certificate (a rolling restart's worker)."""
    tls = TLSSettings(
        clientcas=config.http.clientcas or None,
        clientauth=config.http.clientauth,
        http2=config.http.http2,
    )
    endpoints = []
    for description in config.http.port:
        description = normalize_description(description)
        warning = warn_if_plain_public(description, auth_enabled)
        if warning:
            log.warn("{warning}", warning=warning)
        endpoint = server_endpoint(
            reactor, description, tls, warn=warn, refuse_expired=refuse_expired
        )
        endpoints.append((description, endpoint))
    if tls.clientauth != "none" and not any(is_tls_description(d) for d, _ in endpoints):
        # Only a TLS handshake can ask for a certificate: every connection would be served
        # without one, where the operator asked for them.
        raise ValueError(
            f"[http] clientauth = {tls.clientauth}: no listener is ssl: "
            f"({', '.join(d for d, _ in endpoints)}), so no client certificate can be asked for"
        )
    return endpoints


def configuration_error(exc: Exception) -> NoReturn:
    """One line naming the problem, not a traceback: these are configuration mistakes."""
    if isinstance(exc, ListenerError):  # its line names the listener itself
        exit_now(str(exc))
    exit_now(f"configuration error: {exc}")


def makeService(options: Options) -> IService:
    twistd = getattr(options, "parent", None)
    if twistd is None:
        return _make_service(options, under_twistd=False)
    daemon_status.keep_terminal(twistd)  # (before twistd forks, when it does)
    # Every process twistd runs (a single one, the supervisor before its exec, each worker)
    # logs whole lines to its --logfile, also on a full disk.
    service = _make_service(options, under_twistd=True)
    config = options.config
    assert config is not None
    # A worker's lines say which worker wrote them (the workers share one output).
    from registry.server.workers import WorkerSpec

    spec = WorkerSpec.from_environ(os.environ)
    worker = spec.worker if spec is not None else None
    reported = StartReported(service, twistd)
    return whole_lines(reported, twistd, config.log.rotatesize, config.log.rotatekeep, worker)


def _make_service(options: Options, under_twistd: bool) -> IService:
    config = options.config
    assert config is not None
    # Workers are processes twistd starts; a service embedded elsewhere (tests, another
    # application) is one process whatever the configuration says, and keeps every library.
    if under_twistd:
        # A SIGHUP (a reload sent as the service starts) before its handler is installed
        # (`HupReloader`, or the supervisor, which keeps it across its exec: an ignored signal
        # stays ignored) is dropped rather than the end of the process.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # Before anything below imports the reactor; a worker counts the listeners it serves.
        keep_out(config, inherited_listeners(os.environ))
    from twisted.internet import reactor

    from registry.server.workers import WorkerSpec, resolve, single_process_reasons

    spec = WorkerSpec.from_environ(os.environ)
    if spec is None:
        try:
            count = resolve(config)
        except ConfigError as exc:
            configuration_error(naming_variable(exc, config))
        if count > 1 and under_twistd:
            return _supervising(options, config, count, reactor)
    from registry.server.build import serve

    try:
        if spec is not None and spec.check:
            # What the supervisor's own start-up refuses ([http] workers); the number it
            # asks for is told, since a SIGHUP does not change it.
            checked_workers = resolve(config)
            changed = _check_listeners(config, spec, reactor)
            single = single_process_reasons(config)
            if single and spec.workers > 1:
                # (``workers = auto`` resolves to 1 for it: the workers running would each
                # serve it on their own, a cache or an in-memory store per process.)
                raise ConfigError(
                    f"only 1 worker can serve this configuration ({'; '.join(single)}), and"
                    f" {spec.workers} run: stop the registry and start it again to apply it"
                )
        service = serve(config, reactor, spec, reload_on_hup=under_twistd)
    except ConfigError as exc:  # found while building: a folder to create, a file to read
        configuration_error(exc)
    except StartupError as exc:  # not a mistake in the file: another process holds a queue
        exit_now(str(exc))
    if spec is not None and spec.check:
        # A SIGHUP's check (registry.server.supervisor): everything start-up reads and
        # refuses before the reactor runs has passed; nothing was started.
        tell_checked(checked_workers, changed)
        raise SystemExit(0)
    return service


def _check_listeners(config: Config, spec: WorkerSpec, reactor: Any) -> list[tuple[str, str, str]]:
    """
    In a SIGHUP's check: the file's listening addresses validated as the supervisor's
    start-up validates them (parsed, TLS files loaded, nothing bound), since the next start
    reads them; and each that differs from what the workers serve, as (key, in the file,
    served): the supervisor's sockets stay until it restarts.  ``[http] port`` is the file's
    only where the supervisor was started without ``--port`` (``spec.check_ports``).
    """
    changed = []
    if spec.check_ports:
        try:
            endpoints = listening_endpoints(config, reactor, auth_enabled=False, warn=False)
        except (ValueError, OSError, ConfigError) as exc:
            configuration_error(exc)
        asked = ", ".join(description for description, _ in endpoints)
        kept = ", ".join(inherited.description for inherited in spec.listeners)
        if [_same_endpoint_key(d) for d, _ in endpoints] != [
            _same_endpoint_key(i.description) for i in spec.listeners
        ]:
            changed.append(("[http] port", asked, kept))
    # ([debug] addr's own mistakes are refused as a worker builds its listener.)
    asked = normalize_description(config.debug.addr) if config.debug.addr else ""
    kept = normalize_description(spec.debug.description) if spec.debug is not None else ""
    if _same_endpoint_key(asked) != _same_endpoint_key(kept):
        changed.append(("[debug] addr", asked, kept))
    return changed


# The endpoint kinds whose first positional argument is the port.
_PORT_FIRST = ("tcp", "tcp6", "ssl")


def _same_endpoint_key(description: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``description`` as what it means rather than how it is written: the kind and its
    options, sorted (``tcp:port=5000:interface=::1`` and ``tcp:5000:interface=::1`` are the
    same listener)."""
    parts = re.split(r"(?<!\\):", normalize_description(description)) if description else [""]
    kind, options = parts[0].lower(), {}
    for position, part in enumerate(parts[1:]):
        key, equals, value = part.partition("=")
        if not equals:
            key, value = ("port" if position == 0 and kind in _PORT_FIRST else str(position)), key
        options[key] = value
    return kind, tuple(sorted(options.items()))


def _supervising(options: Options, config: Config, count: int, reactor: Any) -> IService:
    """The supervisor of ``count`` workers, its listeners checked here (TLS certificates
    included) so that a mistake is one line before any worker starts."""
    try:
        # Each worker warns about a clear-text listener with auth on (it reads the auth
        # settings; the supervisor does not load auth at all).
        endpoints = listening_endpoints(config, reactor, auth_enabled=False, warn=False)
        debug = []
        if config.debug.addr:
            description = normalize_description(config.debug.addr)
            debug.append((config.debug.addr, server_endpoint(reactor, description)))
    except (ValueError, OSError, ConfigError) as exc:
        configuration_error(exc)
    from registry.server.handoff import supervise, worker_command

    twistd = getattr(options, "parent", None)
    command = worker_command(options["config"], options["storage"], twistd)
    return supervise(
        reactor,
        config,
        count,
        endpoints,
        debug,
        command,
        twistd,
        ports_from_file=not options["port"],
    )


def has_syncs(config: Config) -> bool:
    """Whether any ``[sync:NAME]`` is configured (replication, and the client library with it,
    is loaded only then)."""
    return any(section.startswith("sync:") for section in config.extra)
