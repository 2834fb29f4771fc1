"""
Delivery to one webhook endpoint: one POST at a time, oldest events first, so events reach
the endpoint in the order this process accepted them (with ``[http] workers`` above 1 each
worker has its own queue, so events of different workers may arrive in either order).

A POST answered with a 2xx status delivers its events; anything else (a redirect, a 4xx/5xx,
a refused connection, no status within ``timeout``) leaves them first in the queue.  The body
of the answer is read only to reuse the connection, and only `BODY_LIMIT` bytes of it for at
most ``timeout``: past either, the connection is closed (an endless body once filled memory).
A redirect is not followed: the events would go, with the configured headers (credentials), to
a place nobody configured; registry:2 counts any status below 400 as delivered, so an endpoint that
moved loses every event without a word.  Unless ``maxbatch`` events are waiting, a POST
waits ``batchwait`` for more to come.
Until ``threshold`` failures in a row, a failed POST is retried at once (registry:2's
breaker); the ``threshold``-th failure pauses ``backoff``, and each further one doubles the
pause up to ``maxbackoff`` (registry:2 waits ``backoff`` each time, hammering an endpoint
that is down for long).

A clean stop (`Endpoint.stop`) lets the POST in flight finish, so that the events it delivers
are done before the queue is written for the last time: abandoned, they stayed queued and the
next start sent them again although the endpoint had them.  Nothing else starts meanwhile: no
further POST, no pause, no reading of the answer's body (its connection is closed).  The POST's
own ``timeout`` bounds the wait; the service abandons it sooner (`Endpoint.abandon`) at the
drain's deadline.

Logs: one line per failed POST (not per event), one when delivery works again, and one per
burst of dropped events.
"""

from __future__ import annotations

from typing import Any, NoReturn

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from registry import __version__
from registry.http.body_head import read_head
from registry.ops.notifications.config import REGISTRY_HEADERS, EndpointConfig
from registry.ops.notifications.events import EVENTS_MEDIA_TYPE, envelope
from registry.ops.notifications.queue import DurableQueue, Entry

log = Logger()


class NoAnswer(Exception):
    """A POST not answered within the endpoint's ``timeout``."""


def _no_answer(result: object, timeout: float) -> NoReturn:
    # Whatever the cancelled request failed with (treq says ResponseNeverReceived wrapping a
    # CancelledError), what happened is that the endpoint did not answer in time.
    raise NoAnswer(f"no answer within {timeout:g} s")


def _no_answer_because(exc: Exception) -> str:
    """Why a POST got no answer, in words: Twisted's ``ResponseNeverReceived`` (and
    ``ResponseFailed``) carry a list of failures whose text is their repr."""
    reasons = getattr(exc, "reasons", None)
    if not reasons:
        return f"{type(exc).__name__}: {exc}"
    value = getattr(reasons[0], "value", reasons[0])
    if isinstance(value, ConnectionDone):
        return "the endpoint closed the connection without an answer"
    if isinstance(value, ConnectionLost):
        return "the connection was lost before an answer"
    text = " ".join(str(value).split())
    return f"no answer: {type(value).__name__}: {text}" if text else type(value).__name__


class Endpoint:
    """The queue and delivery loop of one ``[notifications:NAME]`` endpoint."""

    def __init__(
        self,
        config: EndpointConfig,
        queue: DurableQueue,
        reactor: Any,
        client: HTTPClient,
        one_shot: HTTPClient | None = None,
        worker: int | None = None,
    ) -> None:
        """``client`` keeps connections open between POSTs; ``one_shot`` (if given) opens one
        per POST, for an endpoint that answers in HTTP/1.0 (see `_post`).  ``worker``: this
        process's number when there are several, which its log lines name (each worker
        delivers its own queue: their failure counts are apart)."""
        self.config = config
        self.queue = queue
        self._reactor = reactor
        self._client = client
        self._one_shot = one_shot
        self._worker = worker
        self._where = f" (worker {worker})" if worker is not None else ""
        self.delivered = 0  # events
        self.failed = 0  # POSTs answered with anything but 2xx
        self.errors = 0  # POSTs without an answer (refused, reset, timed out)
        self._failures = 0  # in a row
        self._wakeup: Deferred[None] | None = None
        self._running: Deferred[None] | None = None
        self._posting = False  # a POST is in flight (`_post` awaits its answer)
        self._stopping = False  # `stop` or `abandon`: no further POST, pause or body read
        self._cancelled = False  # `abandon` cancelled the delivery loop (and its POST)
        self._burst = 0  # events dropped since the queue was last below its bound
        queue.on_drop = self._dropped
        self._headers = Headers({b"content-type": [EVENTS_MEDIA_TYPE.encode()]})
        if not any(name.lower() == "user-agent" for name, _ in config.headers):
            # Firewalls and WAFs often refuse requests without one.
            self._headers.addRawHeader(b"user-agent", f"txregistry/{__version__}".encode())
        for name, value in config.headers:
            if name.lower() in REGISTRY_HEADERS:
                log.warn(
                    "notifications: {endpoint}: header {header} is the registry's to send;"
                    " the configured one is left out",
                    endpoint=config.name,
                    header=name,
                )
                continue
            # UTF-8, as registry:2 (Go) sends a header value.
            self._headers.addRawHeader(name.encode("ascii"), value.encode("utf-8"))

    @property
    def name(self) -> str:
        return self.config.name

    def stats(self) -> dict[str, int]:
        return {
            "pending": self.queue.waiting,
            "delivered": self.delivered,
            "failed": self.failed,
            "errors": self.errors,
            "dropped": self.queue.dropped,
        }

    def accept(self, event: bytes) -> None:
        """Queue an event; the delivery loop picks it up."""
        self.queue.append(event)
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.callback(None)

    def start(self) -> None:
        self._running = Deferred.fromCoroutine(self._run())
        self._running.addErrback(lambda f: f.trap(CancelledError))
        self._running.addErrback(lambda f: log.failure("notifications: delivery loop died", f))

    async def stop(self) -> None:
        """
        Stop delivering.  A POST in flight finishes (its ``timeout`` bounds it), unless
        `abandon` comes first: what it delivered is then done in the queue.  A loop waiting
        for events, for a batch to fill, between tries or on an answer's body stops at once.
        """
        self._stopping = True
        running = self._running
        if running is None:
            return
        if not self._posting:
            self.abandon()
            return
        await running  # the loop ends after this POST
        self._running = None

    def abandon(self) -> None:
        """Stop at once: a POST in flight is abandoned, and its events stay queued."""
        self._stopping = True
        running, self._running = self._running, None
        if running is not None and not running.called:
            self._cancelled = True
            running.cancel()

    async def _run(self) -> None:
        while not self._stopping:
            batch = self.queue.take(self.config.maxbatch)
            if not batch:
                self._wakeup = Deferred()
                await self._wakeup
                continue
            if len(batch) < self.config.maxbatch and self.config.batchwait and not self._failures:
                # Let a batch fill: a POST costs the reactor about as much as a small push, so
                # one per event would slow pushes down; one per `batchwait` does not.
                self.queue.release()
                await deferLater(self._reactor, self.config.batchwait)
                batch = self.queue.take(self.config.maxbatch)
            self._posting = True
            try:
                problem, response = await self._post(batch)
            except BaseException:
                self.queue.release()
                raise
            finally:
                self._posting = False
            if problem is None:
                self.queue.done(len(batch))
                self.delivered += len(batch)
                self._delivered_again()
            else:
                self.queue.release()
            if response is not None:
                # After the bookkeeping: a stop while the body is read cancels only the read
                # (closing the connection), the events' fate is decided by the status.  A stop
                # that waited for this POST reads nothing more.
                within = 0.0 if self._stopping else self.config.timeout
                await _discard_body(response, self._reactor, within)
            if problem is None:
                continue
            self._failures += 1
            delay = self._delay()
            log.warn(
                "notifications: POST to {endpoint}{where} failed: {problem}; {pending} events"
                " pending, failure {failures} in a row, next try in {delay:.3g} s",
                endpoint=self.name,
                where=self._where,
                worker=self._worker,
                url=self.config.shown_url,
                problem=problem,
                pending=len(self.queue.pending),
                failures=self._failures,
                delay=delay,
            )
            if delay > 0 and not self._stopping:
                await deferLater(self._reactor, delay)  # cancelled by a stop

    def _delay(self) -> float:
        # registry:2's breaker: a failure that makes `threshold` in a row waits `backoff`.
        beyond = self._failures - self.config.threshold
        if beyond < 0:
            return 0.0
        return min(self.config.backoff * 2.0 ** min(beyond, 60), self.config.maxbackoff)

    def _delivered_again(self) -> None:
        if self._failures:
            log.info(
                "notifications: {endpoint}{where} accepts events again after {failures} failed"
                " POSTs",
                endpoint=self.name,
                where=self._where,
                worker=self._worker,
                failures=self._failures,
            )
            self._failures = 0
        if self._burst and len(self.queue.pending) < self.config.maxevents:
            log.warn(
                "notifications: {endpoint}{where}: {count} oldest events were dropped (maxevents"
                " {maxevents} reached); {total} dropped since start",
                endpoint=self.name,
                where=self._where,
                worker=self._worker,
                count=self._burst,
                maxevents=self.config.maxevents,
                total=self.queue.dropped,
            )
            self._burst = 0

    def _dropped(self, count: int) -> None:
        if not self._burst:
            log.warn(
                "notifications: {endpoint}{where} queue full ({maxevents} events): dropping the"
                " oldest",
                endpoint=self.name,
                where=self._where,
                worker=self._worker,
                maxevents=self.config.maxevents,
            )
        self._burst += count

    async def _post(self, batch: list[Entry]) -> tuple[str | None, IResponse | None]:
        """(None when the endpoint took the events, else what went wrong; the response, whose
        body is still to be read, when there is one)."""
        body = envelope([event for _, event in batch])
        # Cancelling the request (at the timeout, or at `stop`) closes its connection.
        request = self._client.post(
            self.config.url,
            data=body,
            headers=self._headers,
            allow_redirects=False,
            unbuffered=True,  # treq would otherwise read the whole body into memory
        )
        request.addTimeout(self.config.timeout, self._reactor, onTimeoutCancel=_no_answer)
        try:
            response = await request
        except CancelledError:
            raise
        except NoAnswer as exc:
            self.errors += 1
            return str(exc), None
        except Exception as exc:
            if self._cancelled:
                # `abandon` cancelled the request: Twisted reports that as a request that
                # got no answer, which is no failure of the endpoint's.
                raise CancelledError() from exc
            self.errors += 1
            return _no_answer_because(exc)[:300], None
        if tuple(response.version[1:]) < (1, 1) and self._one_shot is not None:
            # An HTTP/1.0 server closes its connection after each answer, unless it says
            # otherwise in a header Twisted does not show; Twisted's pool would keep the
            # connection anyway and send the next POST into it, to be lost, not retried (a POST
            # is not idempotent): one connection per POST from now on.
            self._client = self._one_shot
        status = int(response.code)
        if 200 <= status < 300:
            return None, response
        self.failed += 1
        if 300 <= status < 400:
            raw = response.headers.getRawHeaders(b"location", [None])[-1]
            location = raw.decode("latin-1") if raw else None
            where = f" to {location[:200]}" if location else ""
            return (
                f"status {status}, a redirect{where} (not followed: set url to where events go)",
                response,
            )
        return f"status {status}", response


# What is read of an answer's body, at most: nothing in it is used, it is read only so that the
# connection can serve the next POST (an endpoint's "ok" or error page is far smaller).
BODY_LIMIT = 64 * 1024


async def _discard_body(response: IResponse, reactor: Any, within: float) -> None:
    """
    Read ``response``'s body (at most `BODY_LIMIT` bytes, for at most ``within`` seconds) and
    drop it; past either bound, or when cancelled (`Endpoint.stop`), the connection is closed.
    The status alone decides what happened to the events, so nothing here fails.
    """
    await read_head(response, BODY_LIMIT, reactor, within)
