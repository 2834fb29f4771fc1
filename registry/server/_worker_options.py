"""twistd's options for a worker (`registry.server.worker_twistd`): ``registry`` only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.scripts._twistd_unix import ServerOptions


class WorkerOptions(ServerOptions):
    """twistd's options with ``registry`` as the only subcommand (no plugin search)."""

    @property
    def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
        from twisted.plugins.registry_plugin import registry

        self.loadedPlugins = {registry.tapname: registry}
        yield (registry.tapname, None, registry.options, registry.description)
