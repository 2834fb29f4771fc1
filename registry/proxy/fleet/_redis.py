"""
The fleet's Redis connection: redis-py's client, each command run in a thread pool of its own.

Why redis-py and not a Twisted-native client (txredisapi): redis-py is the client Redis itself
maintains, typed, with TLS, ACL users, connect and socket timeouts and a bounded connection
pool, which map one to one onto registry:2's ``[redis]`` keys; txredisapi follows Redis
releases from afar and has no types.  Its commands block, so none runs on the reactor thread:
each goes to a `ThreadPool` sized to ``pool_maxactive`` (one thread per connection, so a
command never waits for a connection while holding a thread).  The fleet sends a few commands
per fill and one batch per second, never one per byte, so a thread hop per command costs
nothing measurable.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from registry.config import RedisConfig

T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis could not be reached or refused a command; the message says why in one line."""


def describe_redis_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


class FleetRedis(Service):
    """One Redis client and the threads that run its commands; a service so that the threads
    start and stop with the registry."""

    def __init__(self, config: RedisConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        host, _, port = config.addr.rpartition(":")
        kwargs: dict[str, Any] = {
            "host": host.strip("[]"),
            "port": int(port),
            "db": config.db,
            "username": config.username or None,
            "password": config.password or None,
            "socket_connect_timeout": config.dialtimeout,
            # redis-py has one socket timeout for both directions: the longer one bounds both.
            "socket_timeout": max(config.readtimeout, config.writetimeout),
            "max_connections": max(1, config.pool_maxactive),
            "decode_responses": False,
            # No retries inside redis-py (its default: 3, with back-off): a hung Redis would
            # hold each command, and the thread running it, for several read timeouts.  The
            # fleet's callers decide what a failed command means (serve from storage, 503).
            "retry": Retry(NoBackoff(), 0),
        }
        if config.tls:
            kwargs["ssl"] = True
            kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            if config.tls_cafile:
                kwargs["ssl_ca_certs"] = config.tls_cafile
        self.client: redis.Redis = redis.Redis(**kwargs)
        self.pool = ThreadPool(
            minthreads=1, maxthreads=max(1, config.pool_maxactive), name="registry-redis"
        )
        self._scripts: dict[str, Any] = {}
        self._stopped = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopped = True
        self.pool.stop()
        self.client.close()

    async def run(self, call: Callable[[redis.Redis], T]) -> T:
        """``call(client)`` in a pool thread; a Redis failure becomes `RedisUnavailable`, and
        so does a call once the registry is stopping (an eviction queued behind another one
        may end after the threads stopped: it must not fail with a traceback)."""
        if self._stopped:
            raise RedisUnavailable("the registry is stopping")
        if not self.pool.started:
            self.pool.start()

        def in_thread() -> T:
            try:
                return call(self.client)
            except redis.RedisError as exc:
                raise RedisUnavailable(describe_redis_error(exc)) from exc

        return await deferToThreadPool(self.reactor, self.pool, in_thread)

    def registered(self, source: str) -> Any:
        """The redis-py `Script` of ``source`` (registered once, then sent by its SHA); call
        it with ``client=`` a pipeline to run it in a batch."""
        registered = self._scripts.get(source)
        if registered is None:
            registered = self._scripts[source] = self.client.register_script(source)
        return registered

    async def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script (registered once, then sent by its SHA)."""
        registered = self.registered(source)
        return await self.run(lambda _client: registered(keys=keys, args=args))

    async def ping(self) -> None:
        await self.run(lambda client: client.ping())
