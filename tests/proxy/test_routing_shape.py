"""The shape that keeps the read-only cache read-only: the routing stores wrap the local ones
(no subclassing), each provides a complete interface (every method a handler calls), and the
context is typed, frozen and built once."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from zope.interface import Interface
from zope.interface.verify import verifyClass, verifyObject

from registry.config import load
from registry.handlers.context import LocalStores, RegistryContext, Stores
from registry.http.routes import IRouteRewriter
from registry.ops.metrics import Metrics
from registry.proxy.routing import (
    RoutingBlobStore,
    RoutingManifestStore,
    RoutingReferrers,
    RoutingTagStore,
    RoutingUploadStore,
)
from registry.proxy.service import install_proxies
from registry.storage.blobs import BlobStore, IBlobStore
from registry.storage.catalog import ICatalog
from registry.storage.manifests import IManifestStore, ManifestStore
from registry.storage.memory import MemoryDriver
from registry.storage.referrers import IReferrers, ReferrersIndex
from registry.storage.tags import ITagStore, TagStore
from registry.storage.uploads import IUploadStore, UploadStore

HANDLERS = Path(__file__).resolve().parents[2] / "registry" / "handlers"
APP = HANDLERS.parent / "app.py"
INTERFACES: dict[str, type[Interface]] = {
    "blobs": IBlobStore,
    "uploads": IUploadStore,
    "manifests": IManifestStore,
    "tags": ITagStore,
    "referrers": IReferrers,
    "catalog": ICatalog,
}
WRAPPERS = [
    (RoutingBlobStore, BlobStore, IBlobStore),
    (RoutingManifestStore, ManifestStore, IManifestStore),
    (RoutingTagStore, TagStore, ITagStore),
    (RoutingUploadStore, UploadStore, IUploadStore),
    (RoutingReferrers, ReferrersIndex, IReferrers),
]


def _context(tmp_path: Path, proxied: bool) -> RegistryContext:
    text = "[storage]\ndriver = inmemory\n"
    if proxied:
        text += "[proxy:hub]\nremoteurl = http://127.0.0.1:9\nprefix = docker.io\n"
    path = tmp_path / "registry.cfg"
    path.write_text(text)
    config = load(str(path), {})
    driver = MemoryDriver()
    metrics = Metrics()
    reactor = MemoryReactorClock()  # built, never started: nothing runs

    def wrap(local: LocalStores) -> Stores:
        return install_proxies(local, local.driver, config, reactor, MultiService(), metrics)

    return RegistryContext.build(config, driver, reactor, metrics=metrics, wrap=wrap)


def test_every_method_handlers_call_is_in_the_store_interfaces() -> None:
    """``ctx.<store>.<name>`` anywhere in the handlers names a method or attribute of that
    store's interface: a wrapper that provides the interface provides what handlers use."""
    pattern = re.compile(r"ctx\.(blobs|uploads|manifests|tags|referrers|catalog)\.(\w+)")
    used: set[tuple[str, str]] = set()
    for source in [*HANDLERS.glob("*.py"), APP]:
        used |= set(pattern.findall(source.read_text()))
    assert ("blobs", "is_linked") in used  # the search sees what it should
    missing = [(store, name) for store, name in sorted(used) if name not in INTERFACES[store]]
    assert missing == []


@pytest.mark.parametrize(("wrapper", "local", "interface"), WRAPPERS)
def test_routing_stores_wrap_and_provide_only_their_interface(
    wrapper: type, local: type, interface: type[Interface]
) -> None:
    """Composition, not inheritance: a method added to the local store (a new write, say) is
    not reachable through the wrapper until the wrapper implements it."""
    assert not issubclass(wrapper, local)
    assert verifyClass(interface, wrapper)
    public = {name for name in vars(wrapper) if not name.startswith("_")} - {"local", "router"}
    assert public <= set(interface.names()), public - set(interface.names())
    extra = {name for name in vars(local) if not name.startswith("_")} - set(interface.names())
    for name in extra:
        assert not hasattr(wrapper, name), f"{wrapper.__name__}.{name} leaks {local.__name__}"


@pytest.mark.parametrize("proxied", [False, True])
def test_the_context_is_typed_frozen_and_every_store_verifies(
    tmp_path: Path, proxied: bool
) -> None:
    ctx = _context(tmp_path, proxied)
    for field, interface in INTERFACES.items():
        assert verifyObject(interface, getattr(ctx, field))
    assert "extras" not in attrs.fields_dict(RegistryContext)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ctx.blobs = ctx.blobs  # type: ignore[misc]
    if proxied:
        assert isinstance(ctx.blobs, RoutingBlobStore)
        assert ctx.route_rewriter is not None
        assert verifyObject(IRouteRewriter, ctx.route_rewriter)
    else:
        assert isinstance(ctx.blobs, BlobStore)
        assert ctx.route_rewriter is None
