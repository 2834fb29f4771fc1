"""Upstream body reading lives in the client library; re-exported for old imports."""

from registry.client._body import BodyRelay, Collector, ConsumerWriter, abort_transport

__all__ = ["BodyRelay", "Collector", "ConsumerWriter", "abort_transport"]
