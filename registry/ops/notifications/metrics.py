"""Per-endpoint notification metrics for a ``CollectorRegistry`` (`registry.ops.prometheus`)."""

from __future__ import annotations

from collections.abc import Iterator

from registry.ops.notifications.events import Notifier
from registry.ops.prometheus import (
    CollectorRegistry,
    CounterMetricFamily,
    Family,
    GaugeMetricFamily,
)

_COUNTERS = {
    "delivered": "Events the endpoint accepted (a 2xx status).",
    "failed": "POSTs the endpoint answered with anything but a 2xx status (3xx included).",
    "errors": "POSTs without an answer (connection refused or reset, timeout).",
    "dropped": "Oldest events dropped because the endpoint's queue was full (maxevents).",
}


class _NotificationCollector:
    """Reads `Notifier.stats` at each scrape: no bookkeeping on the event path."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    def collect(self) -> Iterator[Family]:
        stats = self._notifier.stats()
        pending = GaugeMetricFamily(
            "txregistry_notifications_pending",
            "Events queued for the endpoint, not delivered yet.",
            labels=["endpoint"],
        )
        for name, values in stats.items():
            pending.add_metric([name], values["pending"])
        yield pending
        for key, help_text in _COUNTERS.items():
            family = CounterMetricFamily(
                f"txregistry_notifications_{key}", help_text, labels=["endpoint"]
            )
            for name, values in stats.items():
                family.add_metric([name], values[key])
            yield family


def register_notification_metrics(registry: CollectorRegistry, notifier: Notifier) -> None:
    """Expose ``notifier``'s per-endpoint counters in ``registry``."""
    registry.register(_NotificationCollector(notifier))
