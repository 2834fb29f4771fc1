"""
Registry events as registry:2 sends them to its notification endpoints, and the `Notifier` the
handlers call once an operation has succeeded.

An event is registry:2's JSON object (``notifications/event.go``)::

    {"id": uuid, "timestamp": RFC 3339, "action": "push" | "pull" | "mount" | "delete",
     "target": {"mediaType", "size", "digest", "length", "repository", "fromRepository",
                "url", "tag"},               (only the fields that apply)
     "request": {"id", "addr", "host", "method", "useragent"},
     "actor": {"name"},                      (empty for anonymous requests)
     "source": {"addr", "instanceID"}}

and events travel in an envelope ``{"events": [...]}`` of media type
``application/vnd.docker.distribution.events.v1+json``.

Handler calls never wait and never raise: the event is encoded once and appended to each
interested endpoint's queue; delivery happens later (`registry.ops.notifications.delivery`).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from registry.api.digests import Digest
from registry.http import forwarded

if TYPE_CHECKING:
    from registry.ops.notifications.delivery import Endpoint

log = Logger()

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
# registry:2 describes every blob (layer or config) with this media type in events.
BLOB_MEDIA_TYPE = "application/octet-stream"


def client_address(request: IRequest) -> str:
    """
    The client's address as registry:2 writes it: ``host:port`` of the connection, or the
    address a trusted reverse proxy reports (`registry.http.forwarded`, no port then).
    """
    seen = forwarded.origin(request)
    if seen.forwarded:
        return seen.client
    addr = request.getClientAddress()
    if isinstance(addr, IPv6Address):
        return f"[{addr.host}]:{addr.port}"
    if isinstance(addr, IPv4Address):
        return f"{addr.host}:{addr.port}"
    return seen.client


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with microseconds, as Go's ``time.Time`` marshals (``...Z``)."""
    whole = int(seconds)
    micros = round((seconds - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def new_id() -> str:
    """
    A random (version 4) UUID.  From `random` rather than `uuid.uuid4`: ``os.urandom`` is a
    system call, twice per event; ids need to be unique, not secret
    (`random` reseeds itself in a forked child).
    """
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def envelope(events: Sequence[bytes]) -> bytes:
    """The POST body for already encoded events."""
    return b'{"events":[' + b",".join(events) + b"]}"


# Of a client's User-Agent, what an event keeps: clients send up to the header limit (16 KiB),
# and each queued event, in memory and in the queue's log, would carry all of it.  Engines'
# own are well under this (docker's, with its UpstreamClient part, about 130 characters).
USERAGENT_KEPT = 256


def _header(request: IRequest, name: bytes) -> str:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else ""


def _request_id(request: IRequest) -> str:
    """One id per request, shared by the events it causes (registry:2's request id)."""
    existing = getattr(request, "notification_request_id", None)
    if isinstance(existing, str):
        return existing
    new = new_id()
    request.notification_request_id = new  # type: ignore[attr-defined]
    return new


class Notifier:
    """
    What handlers tell about successful operations (registry:2's ``Listener``): one call per
    operation, made after it succeeded.  Without endpoints every call returns at once.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint] = (),
        source: dict[str, str] | None = None,
        clock: Any = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.source = source or {}
        self._clock = clock

    def listening_on(self, port: int) -> None:
        """
        Name the port the registry is bound to in ``source.addr``: the configured one says
        ``0`` when the system picks it (``tcp:0``).  Called once the listeners are bound,
        before the first connection is accepted; without endpoints there is no source to set.
        """
        if "addr" in self.source:
            host = self.source["addr"].rsplit(":", 1)[0]
            self.source["addr"] = f"{host}:{port}"

    def stats(self) -> dict[str, dict[str, int]]:
        """Per endpoint: pending, delivered, failed, errors, dropped (a snapshot)."""
        return {endpoint.name: endpoint.stats() for endpoint in self.endpoints}

    def manifest_pushed(
        self,
        request: IRequest,
        repository: str,
        media_type: str,
        digest: Digest,
        size: int,
        tag: str | None,
    ) -> None:
        self._emit(request, "push", repository, media_type, digest, size, tag=tag)

    def manifest_pulled(
        self,
        request: IRequest,
        repository: str,
        media_type: str,
        digest: Digest,
        size: int,
        tag: str | None,
    ) -> None:
        self._emit(request, "pull", repository, media_type, digest, size, tag=tag)

    def blob_pushed(self, request: IRequest, repository: str, digest: Digest, size: int) -> None:
        self._emit(request, "push", repository, BLOB_MEDIA_TYPE, digest, size, kind="blobs")

    def blob_pulled(self, request: IRequest, repository: str, digest: Digest, size: int) -> None:
        self._emit(request, "pull", repository, BLOB_MEDIA_TYPE, digest, size, kind="blobs")

    def blob_mounted(
        self,
        request: IRequest,
        repository: str,
        digest: Digest,
        size: int,
        from_repository: str | None,
    ) -> None:
        self._emit(
            request,
            "mount",
            repository,
            BLOB_MEDIA_TYPE,
            digest,
            size,
            kind="blobs",
            from_repository=from_repository,
        )

    def manifest_deleted(self, request: IRequest, repository: str, digest: Digest) -> None:
        self._emit(request, "delete", repository, digest=digest)

    def tag_deleted(self, request: IRequest, repository: str, tag: str) -> None:
        self._emit(request, "delete", repository, tag=tag)

    def blob_deleted(self, request: IRequest, repository: str, digest: Digest) -> None:
        self._emit(request, "delete", repository, digest=digest)

    def _emit(
        self,
        request: IRequest,
        action: str,
        repository: str,
        media_type: str | None = None,
        digest: Digest | None = None,
        size: int | None = None,
        tag: str | None = None,
        kind: str = "manifests",
        from_repository: str | None = None,
    ) -> None:
        if not self.endpoints:
            return
        try:
            wanting = [e for e in self.endpoints if e.config.wants(action, media_type)]
            if not wanting:
                return
            target: dict[str, Any] = {}
            if media_type is not None:
                target["mediaType"] = media_type
            if size is not None:
                target["size"] = size
            if digest is not None:
                target["digest"] = str(digest)
            if size is not None:
                target["length"] = size
            target["repository"] = repository
            if from_repository:
                target["fromRepository"] = from_repository
            if size is not None and digest is not None:
                # Absolute, as registry:2 writes it: the receiver is not the client, so a
                # relative URL would tell it nothing.  What the client used (a trusted proxy's
                # scheme and host), as an absolute ``Location``.
                path = f"/v2/{repository}/{kind}/{digest}"
                target["url"] = forwarded.origin(request).url(path)
            if tag is not None:
                target["tag"] = tag
            event = self._event(request, action, target)
        except Exception:
            # An event must never fail the request it describes.
            log.failure("notifications: building a {action} event failed", action=action)
            return
        for endpoint in wanting:
            endpoint.accept(event)

    def _event(self, request: IRequest, action: str, target: dict[str, Any]) -> bytes:
        now = self._clock.seconds() if self._clock is not None else time.time()
        user = getattr(request, "principal_name", None)
        record = {
            "id": new_id(),
            "timestamp": timestamp(now),
            "action": action,
            "target": target,
            "request": {
                "id": _request_id(request),
                "addr": client_address(request),
                "host": forwarded.origin(request).host or "",
                "method": request.method.decode("latin-1"),
                "useragent": _header(request, b"user-agent")[:USERAGENT_KEPT],
            },
            "actor": {"name": user} if user else {},
            "source": self.source,
        }
        return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii")
