"""
Several instances, one cache: the shared state of a fleet of txregistry instances in Redis.

- `lease`: which instance fetches a blob from the upstream (one fetch per blob for the
  fleet), taken over when its holder dies;
- `peer`: the holder streams the fill in progress to the other instances' clients;
- `follow`: a client's response that survives the loss of its source (takeover);
- `ledger`: sizes and least-recently-used order of the whole fleet's cache (its index of
  record), and the eviction lock;
- `index`: an instance's side of that index (what it has not pushed yet, recent entries);
- `marker`: without Redis, one instance per cache storage (a second one is refused);
- `_redis`: the connection.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import attrs

from registry.api.digests import Digest
from registry.proxy.fleet._redis import FleetRedis, RedisUnavailable
from registry.proxy.fleet.lease import FillLeases, Lease
from registry.proxy.fleet.peer import PeerClient

__all__ = ["Fleet", "FleetRedis", "HeldElsewhere", "Lease", "RedisUnavailable", "instance_name"]


class HeldElsewhere(Exception):
    """Another instance holds the fill lease of this blob."""

    def __init__(self, digest: Digest, lease: Lease) -> None:
        super().__init__(f"{digest} is being fetched by instance {lease.instance or '?'}")
        self.lease = lease


class StoredMeanwhile(Exception):
    """The lease was free because its holder had just stored the blob: read it from storage."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(f"{digest} was stored by another instance meanwhile")


def instance_name(configured: str) -> str:
    return configured or f"{socket.gethostname()}-{os.getpid()}"


@attrs.define(eq=False)
class Fleet:
    """What a cache needs to take part in a fleet."""

    redis: FleetRedis
    leases: FillLeases
    peers: PeerClient
    instance: str
    reactor: Any
    # How often a client waiting for a fill held elsewhere looks again (no holder URL, or
    # the holder gone before its lease expired).
    poll: float = 0.25
