"""
Webhook notifications (registry:2's ``notifications.endpoints``): events for pushes, pulls,
mounts and deletes, POSTed to each ``[notifications:NAME]`` endpoint from a durable queue.
See docs/notifications.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from registry.ops.notifications.config import (
    EndpointConfig,
    check_notifications,
    leftover_queue_directory,
    parse_endpoints,
)
from registry.ops.notifications.events import EVENTS_MEDIA_TYPE, Notifier

if TYPE_CHECKING:
    from twisted.application.service import MultiService

    from registry.config import Config
    from registry.ops.notifications.service import NotificationService

# The delivery side (treq, the durable queue, the service) is imported only when an endpoint is
# configured: a registry without webhooks does not hold it in memory (tests/test_lazy_imports.py).
_FROM_SERVICE = ("NotificationService",)


def add_notifications(
    config: Config,
    reactor: Any,
    parent: MultiService,
    worker: int = 0,
    workers: int = 1,
    check: bool = False,
    time_left: Callable[[], float | None] | None = None,
) -> Notifier:
    """`registry.ops.notifications.service.add_notifications`, loaded when there are endpoints."""
    if not parse_endpoints(config):
        if worker == 0 and _queue_logs_left(config):
            from registry.ops.notifications import service

            service.warn_leftover_queues(config)
        return Notifier()
    from registry.ops.notifications import service

    return service.add_notifications(
        config, reactor, parent, worker=worker, workers=workers, check=check, time_left=time_left
    )


def _queue_logs_left(config: Config) -> bool:
    """Whether the queue folder of a registry with no endpoint holds any log (cheap: the
    delivery side is loaded only to read one)."""
    directory = leftover_queue_directory(config)
    if directory is None:
        return False
    try:
        return any(name.endswith(".log") for name in os.listdir(directory))
    except OSError:
        return False


def __getattr__(name: str) -> Any:
    if name in _FROM_SERVICE:
        from registry.ops.notifications import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EVENTS_MEDIA_TYPE",
    "EndpointConfig",
    "NotificationService",
    "Notifier",
    "add_notifications",
    "check_notifications",
    "parse_endpoints",
]
