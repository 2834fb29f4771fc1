"""
The web UI: server-rendered pages under ``/ui/`` for people who would rather look than curl
(docs/ui.md).  `ui_resource` builds it for a context; `registry.app` mounts it.
"""

from __future__ import annotations

from twisted.web.resource import IResource

from registry.handlers.context import RegistryContext
from registry.ui._app import UiApp
from registry.ui._tagtimes import TagTimes

__all__ = ["UiApp", "ui_resource"]


def ui_resource(ctx: RegistryContext) -> IResource:
    """The UI's resource; keeps the tag-date index current through the tag store."""
    tag_times = TagTimes(ctx.driver, ctx.reactor)
    ctx.tags.observers.append(tag_times.observe)
    app = UiApp(ctx, tag_times)
    ctx.extras["ui"] = app
    resource: IResource = app.router.resource()
    return resource
