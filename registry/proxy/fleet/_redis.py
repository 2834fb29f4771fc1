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
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from registry.config import RedisConfig

T = TypeVar("T")

log = Logger()

# While Redis is known to be away, how often one command (a PING) checks whether it is back.
PROBE_INTERVAL = 1.0


class RedisUnavailable(Exception):
    """Redis could not be reached or refused a command; the message says why in one line."""


class RedisLost(RedisUnavailable):
    """Redis did not answer (down, hung), or is known not to since a command failed that way.
    `FleetRedis` logs one line when Redis goes away and one when it is back, so callers do
    not log it (`log_redis`)."""


def log_redis(log: Logger, exc: BaseException | None, text: str, **fields: Any) -> None:
    """A warning for a Redis failure, unless `FleetRedis` already said Redis is away."""
    if not isinstance(exc, RedisLost):
        log.warn(text, **fields)


# What Redis answers a client that did not authenticate where it must (redis-py's HELLO on
# Redis 6+, or any command): the server's own words name neither the cause nor the key.
_NO_AUTH = ("NOAUTH", "HELLO must be called with the client already authenticated")


def describe_redis_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if any(marker in text for marker in _NO_AUTH):
        return "Redis requires a password, and [redis] password is not set"
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
        # Why Redis is known to be away (a command timed out or could not connect), until a
        # probe gets an answer: meanwhile every command fails at once (`RedisLost`) instead
        # of queueing for the pool's connections behind commands that wait for a hung Redis.
        self.down: str | None = None
        self._probe: Any = None

    @property
    def budget(self) -> float:
        """How long a command may take in all, waiting for a connection included."""
        return max(self.config.readtimeout, self.config.writetimeout)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopped = True
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self.pool.stop()
        self.client.close()

    async def run(self, call: Callable[[redis.Redis], T], probe: bool = False) -> T:
        """``call(client)`` in a pool thread; a Redis failure becomes `RedisUnavailable`, and
        so does a call once the registry is stopping (an eviction queued behind another one
        may end after the threads stopped: it must not fail with a traceback).

        A command takes at most `budget` in all (waiting for a free connection included).
        One that times out or cannot connect marks Redis away (one warning line): from then
        on commands fail at once with `RedisLost` until a probe gets an answer (one line)."""
        if self._stopped:
            raise RedisUnavailable("the registry is stopping")
        if self.down is not None and not probe:
            raise RedisLost(f"Redis at {self.config.addr} is not answering ({self.down})")
        if not self.pool.started:
            self.pool.start()
        budget = self.budget
        queued = time.monotonic()

        def in_thread() -> T:
            if self.down is not None and not probe:
                raise RedisLost(f"Redis at {self.config.addr} is not answering ({self.down})")
            if time.monotonic() - queued > budget:
                raise RedisLost("no Redis connection free within the read timeout")
            try:
                return call(self.client)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise RedisLost(describe_redis_error(exc)) from exc
            except redis.RedisError as exc:
                raise RedisUnavailable(describe_redis_error(exc)) from exc

        d: Deferred[T] = deferToThreadPool(self.reactor, self.pool, in_thread)
        # The thread may stay blocked longer (a command already sent waits for its socket
        # timeout); its result is then dropped.
        d.addTimeout(budget + 0.5, self.reactor)
        try:
            return await d
        except TimeoutError:
            reason = f"no answer within {budget:g}s"
            if not probe:
                self._away(reason)
            raise RedisLost(reason) from None
        except RedisLost as exc:
            if not probe and not str(exc).startswith(f"Redis at {self.config.addr} is not"):
                self._away(str(exc))
            raise

    def _away(self, reason: str) -> None:
        if self.down is not None or self._stopped:
            return
        self.down = reason
        log.warn(
            "Redis at {addr} is not answering ({reason}): cached content is served without "
            "it, misses are answered 503, until it answers again",
            addr=self.config.addr,
            reason=reason,
        )
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        if not self._stopped:
            self._probe = self.reactor.callLater(PROBE_INTERVAL, self._check_back)

    def _check_back(self) -> None:
        async def probe() -> None:
            try:
                await self.run(lambda client: client.ping(), probe=True)
            except RedisUnavailable:
                self._schedule_probe()
                return
            if self.down is not None:
                self.down = None
                log.info("Redis at {addr} answers again", addr=self.config.addr)

        Deferred.fromCoroutine(probe())

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
        """The start-up check: fails without marking Redis away (the instance exits)."""
        await self.run(lambda client: client.ping(), probe=True)
