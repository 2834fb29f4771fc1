"""
Signed S3 requests over treq, and S3's error replies turned into `StorageError`.

Every request is signed with SigV4 (`registry.storage.s3._sigv4`); bodies given as bytes (small:
XML, links, manifests) have their SHA-256 signed, streamed bodies are sent as ``UNSIGNED-PAYLOAD``.
Responses are always unbuffered: small ones are collected here, large ones go to a producer.
One pooled, persistent `Agent` serves all requests so that connections are reused.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import (
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.iweb import IBodyProducer, IResponse

from registry.http.bounded_agent import bounded_agent
from registry.http.twisted_internals import quiet_pool
from registry.storage.driver import QUIET_RETRIES, StorageError
from registry.storage.producers import BytesProducer
from registry.storage.s3._connections import S3ConnectionPool, WatchedBody
from registry.storage.s3._settings import Endpoint, S3Settings
from registry.storage.s3._sigv4 import UNSIGNED_PAYLOAD, SigV4

_log = Logger()
# A request body: small bytes (signed), a producer (sent once), or a producer factory.
Body = bytes | IBodyProducer | Callable[[], IBodyProducer] | None
# Back-off before resending after a 5xx (S3's SlowDown, InternalError) or a network failure.
RETRY_DELAYS = (0.2, 1.0, 3.0)
# Presigned URLs live as long as registry:2's (20 minutes).
PRESIGN_SECONDS = 20 * 60
_CREDENTIAL_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
    }
)


class S3Error(StorageError):
    """S3 answered with an error status (or a 200 carrying an ``<Error>``)."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class S3CredentialsError(S3Error):
    """S3 refused the credentials: wrong key, wrong secret, or no permission on the bucket."""


def local_name(element: ET.Element) -> str:
    """An element's tag without its namespace (S3 replies use the 2006-03-01 namespace)."""
    return element.tag.rsplit("}", 1)[-1]


def children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    return (child for child in element if local_name(child) == name)


def child_text(element: ET.Element, name: str, default: str = "") -> str:
    for child in children(element, name):
        return child.text or ""
    return default


def parse_xml(body: bytes) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as error:
        raise StorageError(f"S3 sent unreadable XML: {body[:200]!r}") from error


def parse_http_date(value: str) -> float:
    """Seconds since the epoch from an HTTP date (``Last-Modified``)."""
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def parse_iso_date(value: str) -> float:
    """Seconds since the epoch from ListObjectsV2's ``LastModified``."""
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode("latin-1"))
    return values[0].decode("latin-1") if values else None


# What the attempts before met, for the response of a last attempt that failed too (5xx).
_FAILED_BEFORE: weakref.WeakKeyDictionary[IResponse, list[str]] = weakref.WeakKeyDictionary()


def _attempts(problems: list[str]) -> str:
    """What failed attempts met, in a few words: the same problem once, with its count."""
    if len(set(problems)) == 1:
        count = len(problems)
        return problems[0] + (f" ({count} attempts)" if count > 1 else "")
    return "; ".join(f"attempt {n}: {problem}" for n, problem in enumerate(problems, 1))


def _before(problems: list[str]) -> str:
    """The attempts before this one, for a failure's message ("" when it was the first)."""
    if not problems:
        return ""
    if len(problems) == 1:
        return f" (the attempt before: {problems[0]})"
    return f" (the attempts before: {_attempts(problems)})"


def _said_before(last: str, problems: list[str]) -> str:
    """`_before`, or only the count when every attempt met what the last one did (the
    same error written out twice said nothing more)."""
    if problems and all(problem == last for problem in problems):
        return f" ({len(problems) + 1} attempts)"
    return _before(problems)


def _in_words(error: BaseException) -> str:
    """A network failure's reason: Twisted's HTTP client wraps it in a list of Failures."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(str(getattr(r, "value", r)) for r in reasons)
    return str(error)


def _cancelled(error: BaseException) -> bool:
    """Whether a request failed because it was cancelled: Twisted's HTTP client reports
    that as a ``ResponseFailed`` (or a failure to send the body) carrying a `CancelledError`.
    A connection lost while the body is sent is not one: the body is a `WatchedBody`, which
    never fails when Twisted stops it, so Twisted reports the connection's loss instead."""
    reasons = getattr(error, "reasons", None) or []
    return any(isinstance(getattr(r, "value", None), CancelledError) for r in reasons)


# A body this small is sent in well under a second on any link a registry uses: its sending
# does not count against ``answertimeout``.  Larger ones (parts kept in memory) are not timed.
_QUICK_BODY = 1024 * 1024


def _slow_to_answer(
    method: str, query: dict[str, str] | None, headers: dict[str, str] | None
) -> bool:
    """A server-side copy or a multipart completion: S3 may work on it for minutes before it
    answers, with nothing moving on the connection meanwhile."""
    if any(name.lower() == "x-amz-copy-source" for name in headers or {}):
        return True
    return method == "POST" and "uploadId" in (query or {})


def _answers_quickly(
    method: str, query: dict[str, str] | None, headers: dict[str, str] | None, body: Body
) -> bool:
    """
    Whether S3 answers this request as soon as it has read it, so that waiting longer than
    ``answertimeout`` means S3 hangs: not a streamed or large body (its sending counts as
    waiting), a part upload, a server-side copy or a multipart completion (S3 may work a long
    time before it answers).
    """
    if not (body is None or (isinstance(body, bytes) and len(body) <= _QUICK_BODY)):
        return False
    if _slow_to_answer(method, query, headers):
        return False
    return not (method == "PUT" and "uploadId" in (query or {}))


def _target(key: str, query: dict[str, str] | None) -> str:
    """What a request was about, for a message: its key, or the prefix a listing asked for
    (a bucket-level request's key is empty: "GET /" told an operator nothing)."""
    if key:
        return key
    prefix = (query or {}).get("prefix")
    return f"/ (listing {prefix})" if prefix else "/"


class S3Client:
    """Signs and sends requests to one bucket; knows nothing of registry paths."""

    def __init__(self, reactor: Any, settings: S3Settings, http_client: Any = None) -> None:
        self.settings = settings
        self.retry_delays = RETRY_DELAYS
        self._reactor = reactor
        self.endpoint = Endpoint.from_settings(settings)
        access, secret, token = settings.credentials()
        self._signer = SigV4(access, secret, settings.region, token)
        self._pool: HTTPConnectionPool | None = None
        if http_client is None:
            self._pool = quiet_pool(
                S3ConnectionPool(reactor, persistent=True, idle_timeout=settings.idletimeout)
            )
            # Uploads, downloads and small requests of many clients run at once.
            self._pool.maxPersistentPerHost = 32
            self._pool.retryAutomatically = True
            agent = bounded_agent(reactor, connect_timeout=30, pool=self._pool)
            http_client = HTTPClient(agent)
        self._http = http_client

    async def close(self) -> None:
        """Drop pooled connections (tests, shutdown)."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    def _signed_headers(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> dict[str, str]:
        # Sign small bodies' SHA-256; streamed bodies are UNSIGNED-PAYLOAD (hashing them first
        # would read them twice).
        payload = UNSIGNED_PAYLOAD if body is None else hashlib.sha256(body).hexdigest()
        return self._signer.headers(method, url, headers, payload)

    def presign(self, method: str, key: str, expires: int = PRESIGN_SECONDS) -> str:
        """A URL carrying its SigV4 signature in the query string."""
        return self._signer.presign(method, self.endpoint.url(key), expires)

    async def request(
        self,
        method: str,
        key: str = "",
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: Body = None,
    ) -> IResponse:
        """
        Send a signed request; the response body is left unread.  A body given as bytes, or as
        a callable returning a fresh producer, is sent again (newly signed) after a 5xx or a
        network failure, as S3 asks of its clients; a bare producer can be sent only once.
        """
        retryable = body is None or isinstance(body, bytes) or callable(body)
        delays = list(self.retry_delays) if retryable else []
        where = f"S3 {method} {_target(key, query)}"
        met: list[str] = []  # what each failed attempt met, for the one line that tells
        while True:
            try:
                response = await self._send(method, key, query, headers, body)
            except ConnectingCancelledError:
                raise CancelledError(
                    f"{where}: still connecting to {self.endpoint.bucket_url}{_before(met)}"
                ) from None
            except (ConnectError, DNSLookupError, ResponseFailed, RequestTransmissionFailed) as e:
                if _cancelled(e):  # our caller gave up (a client left, a time limit): never resent
                    raise CancelledError(f"{where}: no answer yet{_before(met)}") from None
                if not delays:
                    # The failure is the one line: the caller logs it, with every attempt's.
                    raise StorageError(
                        f"S3 at {self.endpoint.bucket_url} unreachable ({method} "
                        f"{_target(key, query)}): " + _attempts([*met, _in_words(e)])
                    ) from e
                problem = _in_words(e)
            except RequestGenerationFailed as e:
                if _cancelled(e):
                    raise CancelledError(f"{where}: no answer yet{_before(met)}") from None
                # The body itself failed (a spooled part unreadable): sending it again would
                # meet the same failure.
                raise StorageError(
                    f"{where}: the request body could not be read: {_in_words(e)}{_before(met)}"
                ) from e
            else:
                if response.code < 500 or not delays:
                    if response.code >= 500:
                        # The caller turns it into an `S3Error`: that says what came before.
                        _FAILED_BEFORE[response] = list(met)
                    elif met and not QUIET_RETRIES.get():
                        _log.info(
                            "S3 {method} {key} answered {status} at attempt {attempt} "
                            "after: {problems}",
                            method=method,
                            key=_target(key, query),
                            status=response.code,
                            attempt=len(met) + 1,
                            problems=_attempts(met),
                        )
                    return response
                content = await treq.content(response)
                problem = str(self.error(response.code, content, method, key, query=query))
            delay = delays.pop(0)
            met.append(problem)
            try:
                await deferLater(self._reactor, delay, lambda: None)
            except CancelledError:
                raise CancelledError(f"{where}: waiting to try again after: {problem}") from None

    async def _send(
        self,
        method: str,
        key: str,
        query: dict[str, str] | None,
        headers: dict[str, str] | None,
        body: Body,
    ) -> IResponse:
        url = self.endpoint.url(key, query)
        data: IBodyProducer | None
        if isinstance(body, bytes):
            signed = self._signed_headers(method, url, headers or {}, body)
            # Twisted sends "Content-Length: 0" itself for a PUT or POST without a producer.
            data = BytesProducer(body) if body else None
        else:
            signed = self._signed_headers(method, url, headers or {}, None)
            data = body() if callable(body) else body
        if data is not None:
            # Twisted stopping the body (a lost connection) must read as the network failure
            # it is, not as a cancel; see `WatchedBody`.  Waiting for the answer after the body
            # counts against the idle limit unless ``answertimeout`` or nothing bounds it.
            idle_answer = not _answers_quickly(
                method, query, headers, body
            ) and not _slow_to_answer(method, query, headers)
            data = WatchedBody(data, idle_answer)
        sending: Deferred[IResponse] = self._http.request(
            method,
            url,
            headers=signed,
            data=data,
            unbuffered=True,
            allow_redirects=False,
        )
        if _answers_quickly(method, query, headers, body):
            limit = self.settings.answertimeout
        elif _slow_to_answer(method, query, headers):
            # S3 may work on a copy or a completion for minutes with nothing moving: bounded
            # all the same, or a stalled S3 held the client's commit without an answer.
            limit = self.settings.copytimeout
        else:
            return await sending
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            sending.cancel()

        timer = self._reactor.callLater(limit, expire)
        try:
            return await sending
        except Exception as exc:
            if expired:
                raise StorageError(
                    f"S3 at {self.endpoint.bucket_url} gave no answer within {limit:g}s "
                    f"({method} {_target(key, query)})"
                ) from exc
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def call(
        self,
        method: str,
        key: str = "",
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: Body = None,
        ok: tuple[int, ...] = (200, 204, 206),
        missing_ok: bool = False,
        error_in_body: bool = False,
    ) -> tuple[IResponse, bytes] | None:
        """
        A request whose (small) reply is read whole.  Returns None on 404 when ``missing_ok``;
        raises `S3Error` for any other status outside ``ok``, and with ``error_in_body`` for a 200
        whose body is an ``<Error>`` (S3 sends those for copies and completions that fail late).
        """
        response = await self.request(method, key, query=query, headers=headers, body=body)
        try:
            content: bytes = await treq.content(response)
        except ResponseFailed as error:
            # Cut or stalled mid-answer: a storage failure like any other, not a crash.
            raise StorageError(
                f"S3 at {self.endpoint.bucket_url} cut its answer to {method} "
                f"{_target(key, query)}: " + _in_words(error)
            ) from error
        if missing_ok and response.code == 404:
            return None
        if response.code not in ok:
            raise self.error(response.code, content, method, key, response, query)
        if error_in_body and b"<Error>" in content[:200]:
            raise self.error(response.code, content, method, key, query=query)
        return response, content

    def error(
        self,
        status: int,
        body: bytes,
        method: str,
        key: str,
        response: IResponse | None = None,
        query: dict[str, str] | None = None,
    ) -> S3Error:
        """The error for an S3 answer; with the ``response`` that was the last of several
        attempts, the message also says what the attempts before it met."""
        met = _FAILED_BEFORE.pop(response, []) if response is not None else []
        code, message, endpoint = "", "", ""
        if body:
            try:
                root = ET.fromstring(body)
                code, message = child_text(root, "Code"), child_text(root, "Message")
                # A bucket in another region (301 PermanentRedirect) names where it is.
                endpoint = child_text(root, "Endpoint")
            except ET.ParseError:
                message = body[:200].decode("utf-8", "replace")
        bucket = self.settings.bucket
        if status == 403 or code in _CREDENTIAL_CODES:
            text = f"S3 refused the credentials for bucket {bucket}: {code or f'HTTP {status}'}"
            text += f" ({message})" if message else ""
            return S3CredentialsError(
                text + _said_before(text, met), status, code or "AccessDenied"
            )
        where = f"{method} {_target(key, query)}"
        text = f"S3 error on {where} in bucket {bucket}: HTTP {status}" + (
            f" {code}" if code else ""
        )
        text += f" ({message})" if message else ""
        if endpoint:
            text += f"; it is served at {endpoint[:200]} ([storage] regionendpoint, region)"
        return S3Error(text + _said_before(text, met), status, code)
