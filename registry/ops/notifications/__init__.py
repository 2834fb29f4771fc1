"""
Webhook notifications (registry:2's ``notifications.endpoints``): events for pushes, pulls,
mounts and deletes, POSTed to each ``[notifications:NAME]`` endpoint from a durable queue.
See docs/notifications.md.
"""

from registry.ops.notifications.config import EndpointConfig, parse_endpoints
from registry.ops.notifications.events import EVENTS_MEDIA_TYPE, Notifier
from registry.ops.notifications.service import (
    NotificationService,
    add_notifications,
    check_notifications,
)

__all__ = [
    "EVENTS_MEDIA_TYPE",
    "EndpointConfig",
    "NotificationService",
    "Notifier",
    "add_notifications",
    "check_notifications",
    "parse_endpoints",
]
