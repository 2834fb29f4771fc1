"""The ``twistd registry`` plugin; the implementation lives in registry.tap (imported lazily)."""

from twisted.application.service import ServiceMaker

registry = ServiceMaker(
    "txregistry",
    "registry.tap",
    "An OCI Distribution registry: private registry, pull-through cache, streaming blobs.",
    "registry",
)
