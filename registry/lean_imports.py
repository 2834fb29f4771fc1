"""
Libraries a registry process keeps out when its configuration does not use them, decided
before Twisted is imported.

Twisted chooses some of its imports by what is installed, not by what is used:
``twisted.internet.tcp`` imports its TLS support, and with it pyOpenSSL and cryptography
(about 13 MiB resident), whenever pyOpenSSL is installed; ``twisted.web.http`` imports its
HTTP/2 support (h2, hpack, hyperframe) whenever h2 is installed.  Every process of a registry
pays for them, TLS listener or not.  Our own modules import them only where used (the
``ssl:`` layer is `registry.http._tls_layer`, token auth is imported only when configured).

The standard library's ``ssl`` is the same case: asyncio (imported by
``twisted.internet.defer``), ``http.client`` and ``urllib.request`` (by
``twisted.python.compat``) import it when it is there, and take its absence as a Python built
without OpenSSL; with it come ``_ssl`` and libssl, about 1.2 MiB resident.  They import it
as soon as Twisted is imported, so only a worker (`registry.server.worker_twistd`) keeps it
out: `keep_out_of_worker` reads the configuration before anything imports Twisted.

So, once the configuration is read and before the reactor is imported (``twistd registry``:
`registry.tap.makeService`), `keep_out` marks the unused ones as missing in ``sys.modules``,
which is how Python's import system spells "not installed" (an import raises ImportError).
Twisted handles exactly that case, as it would on a machine without the packages:
``tcp`` then has no ``startTLS`` (nothing here calls it without TLS configured) and
``twisted.web.http`` sets ``H2_ENABLED = False``.

A library is kept out only when nothing the configuration can reach uses it:

- pyOpenSSL (and cryptography with it), and the standard library's ``ssl``: no ``ssl:``
  listener (``[http] port``, ``[debug] addr``, those a worker inherits), no token auth, no
  ``clientcas``, no outgoing HTTP client (a ``[proxy:NAME]``, ``[notifications:NAME]`` or
  ``[sync:NAME]`` section, ``[redis]``, ``[fleet]``), all of which may speak TLS (the fleet's
  Redis client through ``ssl``), and no S3 storage on an ``https`` endpoint (AWS, or
  ``regionendpoint`` https, or without a scheme and ``secure`` on);
- h2: ``[http] http2`` off, and no outgoing HTTP client other than S3's (Twisted's HTTP client
  speaks HTTP/1.1 only; S3 storage never needs h2).

A few standard-library modules that Twisted imports at start-up for what a worker never does
are not kept out but loaded at their first use (`LOADED_ON_USE`, about 0.9 MiB resident
together): the debugger ``pdb`` (with ``bdb``, ``cmd``, ``code`` and ``pprint``: twistd's
``--debug``, never given to a worker), ``decimal`` (Perspective Broker's serializer, which
``twisted.web.server`` imports for the base class of its requests), ``pty`` (processes spawned
with a terminal) and ``getpass`` (twistd's passphrase prompt).  Each is imported as a module
(``import pdb``) and used only inside functions, so a worker puts a `_LoadedOnUse` module under
its name before Twisted is imported: Python's import system hands that to ``import pdb`` (a
module in ``sys.modules`` is taken as imported), and the first read of an attribute imports
the real one.  (The standard library's
``importlib.util.LazyLoader`` cannot serve here: its module loads at the next ``import`` of
the name, which reads ``__spec__``.)

A configuration read again later (SIGHUP restarts the workers, each a new process that reads
it) is decided again by that new process.  A process that imported Twisted's reactor before
(a test, an application embedding the service) keeps everything: it is too late to matter.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from registry.config import Config, ConfigError, load
from registry.server.worker_env import WORKER_ENVIRONMENT

# What each library costs its importer, and the names that keep it out.
TLS_LIBRARIES = ("OpenSSL", "ssl")
HTTP2_LIBRARIES = ("h2",)
# Loaded at their first use in a worker (`_LoadedOnUse`); each is imported at start-up by
# Twisted for what a worker never does (the module docstring says what).
LOADED_ON_USE = ("pdb", "decimal", "pty", "getpass")
# Keeping a library out is useful only before these import it.
_IMPORTERS = {
    "OpenSSL": ("twisted.internet.tcp", "twisted.internet.ssl", "twisted.protocols.tls"),
    "ssl": ("asyncio", "http.client", "urllib.request"),
    "h2": ("twisted.web.http", "twisted.web._http2"),
}


def _plain(description: str) -> bool:
    kind = description.strip().split(":", 1)[0].lower()
    return kind in ("tcp", "tcp6", "unix")


def _s3_over_tls(config: Config) -> bool:
    """
    Whether S3 storage talks to an https endpoint: the scheme rule of
    `registry.storage.s3._settings.Endpoint` (that package imports Twisted's HTTP client, so
    it cannot be asked this early).
    """
    storage = config.storage
    if storage.driver != "s3":
        return False
    endpoint = storage.regionendpoint.strip()
    if not endpoint:
        return True  # AWS
    if "://" in endpoint:
        return endpoint.split("://", 1)[0].lower() == "https"
    return storage.secure


def _outgoing_http(config: Config) -> bool:
    """Whether the configuration makes the registry an HTTP client (any of which may be TLS)."""
    sections = ("proxy:", "notifications:", "sync:")
    return (
        any(name.startswith(sections) for name in config.extra)
        or bool(config.redis.addr)
        or bool(config.fleet.listen)
    )


def uses_http_client(config: Config) -> bool:
    """Whether the configuration makes the registry an HTTP client of anything, S3 storage
    included: a process that is not never needs twisted.web.client
    (`registry.http.twisted_internals` checks that part of Twisted only in one that is)."""
    return _outgoing_http(config) or config.storage.driver == "s3"


def unused(config: Config, inherited: Iterable[str] = ()) -> tuple[str, ...]:
    """
    The libraries ``config`` never uses (the module docstring says how that is decided), in a
    process serving on ``inherited`` listeners (endpoint descriptions) too.
    """
    listeners = [
        *config.http.port,
        *([config.debug.addr] if config.debug.addr else []),
        *inherited,
    ]
    outgoing = _outgoing_http(config)
    names: list[str] = []
    tls = (
        not all(_plain(description) for description in listeners)
        or bool(config.auth_token.realm)
        or bool(config.http.clientcas)
        or config.auth.client_certificate_users
        or outgoing
        or _s3_over_tls(config)
    )
    if not tls:
        names += TLS_LIBRARIES
    if not config.http.http2 and not outgoing:
        names += HTTP2_LIBRARIES
    return tuple(names)


def keep_out(config: Config, inherited: Iterable[str] = ()) -> tuple[str, ...]:
    """
    Mark the libraries ``config`` does not use as missing, where nothing imported them yet
    and Twisted has not yet decided without us; the names kept out.
    """
    kept: list[str] = []
    for name in unused(config, inherited):
        if name in sys.modules or any(module in sys.modules for module in _IMPORTERS[name]):
            continue
        sys.modules[name] = None  # type: ignore[assignment]  # "not installed", see above
        kept.append(name)
    return tuple(kept)


def _worker_overrides(arguments: Sequence[str]) -> tuple[str | None, dict[tuple[str, str], str]]:
    """
    The ``--config`` file and ``--storage`` override of a worker's command line, which
    `registry.server.handoff.worker_command` writes: ``... registry [--config PATH]
    [--storage PATH]``.
    """
    words = list(arguments)
    words = words[words.index("registry") + 1 :] if "registry" in words else []
    values = dict(zip(words[::2], words[1::2], strict=False))
    overrides = {}
    if values.get("--storage"):
        overrides[("storage", "driver")] = "filesystem"
        overrides[("storage", "rootdirectory")] = values["--storage"]
    return values.get("--config"), overrides


def inherited_listeners(environ: Mapping[str, str]) -> list[str]:
    """
    The endpoint descriptions of the listeners the supervisor hands this worker (none outside
    a worker).  A worker serves on these, not on its configuration's ``[http] port``: the
    supervisor's ``--port`` options are not on a worker's command line.
    """
    try:
        spec = json.loads(environ.get(WORKER_ENVIRONMENT) or "{}")
        listeners = [*spec.get("listeners", ()), *([spec["debug"]] if spec.get("debug") else [])]
        return [str(listener["description"]) for listener in listeners]
    except (ValueError, TypeError, KeyError, AttributeError):
        return ["ssl:"]  # unreadable: assume TLS, keep everything


class _LoadedOnUse(types.ModuleType):
    """
    A module whose first attribute read imports the real one (the module docstring says
    why): that module then replaces this one in ``sys.modules``, and its names are copied
    here, so that whoever holds this one reads them as plain attributes from then on.
    Double-underscore names are not looked up (scanners of ``sys.modules`` read
    ``__file__``; they find none, as for a built-in module, and import nothing).
    """

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def load_on_use(names: Iterable[str] = LOADED_ON_USE) -> tuple[str, ...]:
    """Put a `_LoadedOnUse` module under each of ``names`` nothing imported yet; the names."""
    deferred = []
    for name in names:
        if name not in sys.modules:
            stand_in = _LoadedOnUse(name)
            # Its spec is the real one's (found, not loaded): what `importlib.util.find_spec`
            # answers for a module already in sys.modules.
            stand_in.__spec__ = importlib.util.find_spec(name)
            sys.modules[name] = stand_in
            deferred.append(name)
    return tuple(deferred)


def keep_out_of_worker(arguments: Sequence[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    """
    In a worker, before Twisted is imported: read the configuration its command line names
    (as `registry.tap.Options` will again), and `keep_out` what it does not use, the
    standard library's ``ssl`` included.  A configuration that does not load keeps
    everything: ``twistd registry`` reports its error as it always does.
    """
    path, overrides = _worker_overrides(arguments)
    try:
        config = load(path, environ, overrides)
    except (ConfigError, OSError):
        return ()
    return keep_out(config, inherited_listeners(environ))
