"""
``twistd`` for worker processes, without its plugin search.

twistd finds its subcommands by importing every module in every ``twisted/plugins`` folder
(Twisted's own: conch, mail, names, words, trial's interfaces and with them ``unittest``
and ``argparse``), about 0.8 MiB that stays resident in each process that only ever runs
``registry``.  A worker's subcommand is always ours, so its twistd knows only that one;
everything else (logging, its rotation on SIGUSR1, syslog, signals, start and stop) is
twistd's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.scripts import twistd
from twisted.scripts._twistd_unix import ServerOptions


class WorkerOptions(ServerOptions):
    """twistd's options with ``registry`` as the only subcommand."""

    @property
    def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
        from twisted.plugins.registry_plugin import registry

        self.loadedPlugins = {registry.tapname: registry}
        yield (registry.tapname, None, registry.options, registry.description)


def run() -> None:
    """``twistd`` with `WorkerOptions` (what `registry.server.handoff` starts workers with)."""
    from twisted.application import app

    app.run(twistd.runApp, WorkerOptions)
