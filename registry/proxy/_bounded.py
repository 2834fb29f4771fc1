"""The bounded table lives in the client library (its token cache needs it); re-exported."""

from registry.client._bounded import BoundedMap

__all__ = ["BoundedMap"]
