"""
The web UI: server-rendered pages under ``/ui/`` for people who would rather look than curl
(docs/ui.md).  `ui_resource` builds it for a context; `registry.app` mounts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from registry.handlers.context import RegistryContext
from registry.storage.tags import ITagStore, TagStore
from registry.ui._tagtimes import TagTimes

__all__ = ["ui_resource"]


@implementer(IResource)
class _BuiltOnFirstUse:
    """
    A resource built by ``build`` at its first request.  The pages, their templates and the
    modules behind them are imported then, not at start-up: a registry nobody browses does not
    hold them in memory (tests/test_lazy_imports.py).
    """

    def __init__(self, build: Callable[[], IResource]) -> None:
        self._build: Callable[[], IResource] | None = build
        self._built: IResource | None = None

    def _resource(self) -> IResource:
        if self._built is None:
            assert self._build is not None
            self._built, self._build = self._build(), None
        return self._built

    @property
    def isLeaf(self) -> bool:
        return bool(self._resource().isLeaf)

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        child: IResource = self._resource().getChildWithDefault(name, request)
        return child

    def putChild(self, path: bytes, child: IResource) -> None:
        self._resource().putChild(path, child)

    def render(self, request: IRequest) -> Any:
        return self._resource().render(request)


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

    def build() -> IResource:
        from registry.ui._app import UiApp

        resource: IResource = UiApp(ctx, tag_times).router.resource()
        return resource

    return _BuiltOnFirstUse(build)
