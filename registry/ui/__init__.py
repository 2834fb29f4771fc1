"""
The web UI: server-rendered pages under ``/ui/`` for people who would rather look than curl
(docs/ui.md).  `ui_resource` builds it for a context; `registry.app` mounts it.
"""

from __future__ import annotations

from twisted.web.resource import IResource

from registry.handlers.context import RegistryContext
from registry.storage.tags import ITagStore, TagStore
from registry.ui._app import UiApp
from registry.ui._tagtimes import TagTimes

__all__ = ["UiApp", "ui_resource"]


def _local_tag_store(tags: ITagStore) -> TagStore | None:
    """The registry's own `TagStore` under any wrappers (the pull-through cache's keep it as
    ``local``): the one every tag change of this process goes through."""
    for _ in range(8):  # wrappers do not nest deeper than this
        if isinstance(tags, TagStore):
            return tags
        inner = getattr(tags, "local", None)
        if inner is None:
            return None
        tags = inner
    return None


def ui_resource(ctx: RegistryContext) -> IResource:
    """The UI's resource; keeps the tag-date index current through the tag store."""
    tag_times = TagTimes(ctx.driver, ctx.reactor)
    if ctx.config.http.workers > 1:
        # Other workers change tags without telling this process: list the tags on every
        # view rather than trusting a listing for a while.
        tag_times.relist_after = 0.0
    local = _local_tag_store(ctx.tags)
    if local is not None:
        local.observers.append(tag_times.observe)
    app = UiApp(ctx, tag_times)
    resource: IResource = app.router.resource()
    return resource
