"""
``twistd registry``: command-line options and the service tree.

`Options` only parses (the config file is read and validated here so that a bad value stops
start-up with one line naming the key); `makeService` builds everything from the resulting
`Config`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from registry.app import make_site
from registry.config import Config, ConfigError, load
from registry.handlers.context import RegistryContext
from registry.ops.purge import purge_uploads
from registry.proxy.config import parse_proxies
from registry.proxy.service import install_proxies
from registry.storage.factory import build_driver

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
        self["port"].append(description)

    opt_p = opt_port

    def postOptions(self) -> None:
        overrides: dict[tuple[str, str], str] = {}
        if self["storage"]:
            overrides[("storage", "driver")] = "filesystem"
            overrides[("storage", "rootdirectory")] = self["storage"]
        if self["port"]:
            overrides[("http", "port")] = " ".join(self["port"])
        try:
            self.config = load(self["config"], os.environ, overrides)
            parse_proxies(self.config)  # [proxy:NAME] sections are validated here too
        except ConfigError as exc:
            raise usage.UsageError(f"configuration error: {exc}") from None


class ThreadPoolService(Service):
    """Owns the thread pool for blocking work (directory walks, fsync, file reads)."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.pool.stop()
        return None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config = options.config
    assert config is not None
    root = MultiService()
    pool = ThreadPool(minthreads=2, maxthreads=16, name="registry-io")
    ThreadPoolService(pool).setServiceParent(root)  # type: ignore[no-untyped-call]
    driver = build_driver(config, reactor, pool)
    ctx = RegistryContext.build(config, driver, reactor)
    # Pull-through caches ([proxy:NAME]): swaps in routing stores, adds their service.
    install_proxies(ctx, config, reactor, root)
    site = make_site(ctx)

    def index_catalog() -> None:
        # A registry:2 data directory served for the first time has no catalog index yet:
        # build it now rather than inside the first catalog request.
        d = Deferred.fromCoroutine(ctx.catalog.ensure_index())
        d.addErrback(lambda f: log.failure("building the catalog index failed", f))

    reactor.callWhenRunning(index_catalog)
    for description in config.http.port:
        strports.service(description, site).setServiceParent(root)
    if config.uploads.purge_enabled:

        def purge() -> Deferred[Any]:
            d = Deferred.fromCoroutine(purge_uploads(driver, config.uploads.purge_age, time.time()))
            d.addErrback(lambda f: log.failure("upload purge failed", f))
            return d

        TimerService(config.uploads.purge_interval, purge).setServiceParent(root)
    log.info(
        "txregistry listening on {ports}, {driver} storage",
        ports=", ".join(config.http.port),
        driver=config.storage.driver,
    )
    return root
