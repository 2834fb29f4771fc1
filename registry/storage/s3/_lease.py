"""
One writer at a time for an upload's data on S3, whichever process or instance it is in: what
the filesystem driver gets from ``flock`` on the data file.

Without it, two requests on one upload landing on different workers (or instances behind one
load balancer) could both append or both commit: the state object and the hash state of one
and the bytes of the other meet, and a content address ends up holding bytes that do not hash
to it, for every repository.  So an appending writer first takes a lease: a small object next
to the data, created with ``If-None-Match: *`` (S3's conditional write: exactly one creator
wins).  The holder renews it while it writes and deletes it (``If-Match`` its own version) when
it closes.  A lease whose holder died (``kill -9``) is taken over with ``If-Match`` its
version: at once when the holder was a process of this host and pid namespace that no longer
runs (its pid and start time tell it from a process that got the same pid since), else once
S3's clock says it was not renewed for `STALE_SECONDS`.  Everyone else gets `PathBusyError`,
which the upload API answers as registry:2 does a concurrent request (416 with the range).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import uuid
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from registry.procinfo import boot_id, gone, pid_namespace, start_time
from registry.storage import layout
from registry.storage.driver import PathBusyError, StorageError, WriteRemoved, WriteTakenOver
from registry.storage.s3._client import S3Client, S3Error, header, parse_http_date

LEASE_SUFFIX = "~txregistry-lease"
# Renewed this often while held; taken over when not renewed for STALE_SECONDS (S3's clock).
RENEW_SECONDS = 5.0
STALE_SECONDS = 30.0

_log = Logger()
_HOST = socket.gethostname()


def lease_key(key: str) -> str:
    return key + LEASE_SUFFIX


def _holder_is_gone(body: bytes) -> bool:
    """Whether the lease names a process of this host and pid namespace that no longer runs:
    none with its pid, a zombie, or one started at another time (its pid since given to
    another process, this one included)."""
    try:
        holder = json.loads(body)
        host, pid = holder["host"], int(holder["pid"])
        started = holder.get("started")
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    namespace = holder.get("pidns")  # absent from leases of earlier versions
    boot = holder.get("boot")  # likewise
    if boot is not None and boot != boot_id():
        # Another machine of the same host name (its root pid namespace reads the same), or
        # an earlier boot: its pid means nothing here; the lease's age says.
        return False
    if host != _HOST or (namespace is not None and namespace != pid_namespace()):
        # Another host's, or another pid namespace's (a container sharing the host name, a
        # restarted container): its pid means nothing here; the lease's age says.
        return False
    return gone(pid, started, namespace)


def is_held(response: IResponse, body: bytes) -> bool:
    """
    Whether the lease read as ``response`` and ``body`` (a GET of it) is held by a writer at
    work: renewed within `STALE_SECONDS` by S3's clock (its ``Date`` against the lease's
    ``Last-Modified``, so no host's clock enters), by a holder that is not a process of this
    host that no longer runs.  What a takeover waits for, and what keeps an upload from the
    purge while a request writes it.
    """
    renewed = parse_http_date(header(response, "Last-Modified") or "")
    now = parse_http_date(header(response, "Date") or "")
    stale = bool(renewed and now) and now - renewed > STALE_SECONDS
    return not (stale or _holder_is_gone(body))


class WriteLease:
    """A held lease: `renewing` keeps it, `release` gives it back; `lost` once it was lost."""

    def __init__(
        self,
        client: S3Client,
        reactor: Any,
        key: str,
        path: str,
        body: bytes,
        etag: str,
        marker: str,
    ) -> None:
        self._client = client
        self._key = key
        self._path = path
        # A key that exists as long as the file can be continued (the upload's state): when
        # the lease goes, it tells a removed file from one another writer took over.
        self._marker = marker
        self._body = body  # what the lease was taken with, renewed as is
        self._etag = etag
        self.lost: StorageError | None = None
        # One request on the lease at a time: two renewals of one version would make the
        # second look like a takeover.
        self._lock = DeferredLock()
        self._renewal = LoopingCall(self._in_turn, self._renew)
        self._renewal.clock = reactor
        self._renewing = self._renewal.start(RENEW_SECONDS, now=False)
        self._renewing.addErrback(lambda failure: None)  # `_renew` reports through `lost`

    def _in_turn(self, step: Any) -> Deferred[None]:
        return self._lock.run(lambda: Deferred.fromCoroutine(step()))

    async def _renew(self) -> None:
        if self.lost is not None:
            return
        try:
            result = await self._client.call(
                "PUT", self._key, body=self._body, headers={"If-Match": self._etag}
            )
        except S3Error as error:
            if error.status in (404, 412):
                await self._lose()
            return  # an outage: tried again at the next renewal
        except StorageError:
            return
        assert result is not None
        self._etag = header(result[0], "ETag") or self._etag

    async def _lose(self) -> None:
        try:
            removed = await self._client.call("HEAD", self._marker, missing_ok=True) is None
        except StorageError:
            removed = False
        if removed:
            self.lost = WriteRemoved(f"the upload {self._path} was removed while written")
        else:
            self.lost = WriteTakenOver(f"another request took over the upload {self._path}")
        if self._renewal.running:
            self._renewal.stop()

    async def confirm(self) -> None:
        """Renew now, and raise unless the lease is still this writer's (before a commit)."""
        await self._in_turn(self._renew)
        if self.lost is not None:
            raise self.lost

    async def release(self) -> None:
        if self._renewal.running:
            self._renewal.stop()
        await self._in_turn(self._delete)

    async def _delete(self) -> None:
        if self.lost is not None:
            return
        self.lost = StorageError(f"the writer of {self._path} is closed")
        try:
            await self._client.call(
                "DELETE", self._key, headers={"If-Match": self._etag}, missing_ok=True
            )
        except S3Error as error:
            if error.status != 412:
                raise


def _body() -> bytes:
    pid = os.getpid()  # read each time: a worker forked after import is another process
    holder = {
        "host": _HOST,
        "pid": pid,
        "started": start_time(pid),
        "pidns": pid_namespace(),
        "boot": boot_id(),
        "id": uuid.uuid4().hex,
    }
    return json.dumps(holder).encode()


async def take_lease(
    client: S3Client, reactor: Any, key: str, path: str, marker: str
) -> WriteLease:
    """The lease on ``key``'s writes, or `PathBusyError` while another writer holds it;
    ``marker`` is a key that exists as long as the file can be continued."""
    lease = lease_key(key)
    body = _body()
    for _ in range(2):  # create; or take over a dead holder's, once
        try:
            result = await client.call("PUT", lease, body=body, headers={"If-None-Match": "*"})
        except S3Error as error:
            if error.status not in (409, 412):
                raise
        else:
            assert result is not None
            etag = header(result[0], "ETag") or ""
            return WriteLease(client, reactor, lease, path, body, etag, marker)
        held = await client.call("GET", lease, missing_ok=True)
        if held is None:
            continue  # released meanwhile: create it again
        response, content = held
        etag = header(response, "ETag") or ""
        if is_held(response, content):
            break
        try:
            result = await client.call("PUT", lease, body=body, headers={"If-Match": etag})
        except S3Error as error:
            if error.status not in (404, 409, 412):
                raise
            break  # another request took it over first
        assert result is not None
        _log.info("took over the write lease of {path} from a writer that stopped", path=path)
        etag = header(result[0], "ETag") or ""
        return WriteLease(client, reactor, lease, path, body, etag, marker)
    raise PathBusyError(f"{path} is being written by another request")


# Marks of the writes that hold no lease (a push staged at a blob's key, a server-side copy
# to one, any writer of a new file): where the upload purge finds whether a multipart upload
# it lists has a writer at work.  Several writers may write one key at once (two pushes of one
# blob), so each has its own mark, named by a hash of the key and a random part, all in one
# folder (one per key would leave an empty folder per blob on servers that keep folders).
MARKS_FOLDER = f"{layout.OWN}/s3writes"


def marks_prefix(root: str, key: str) -> str:
    """The start of the names of the marks of the writes of ``key``; ``root`` is the
    driver's key prefix (its root directory)."""
    return f"{root}{MARKS_FOLDER}/{hashlib.sha256(key.encode()).hexdigest()[:40]}-"


class WriteMark:
    """
    A write of ``key`` at work: an object `marks_prefix` ``+`` a random name, holding the key
    and its writer (host, pid, start time, pid namespace: `is_held` reads it as a lease's),
    written before the multipart upload is created, renewed every `RENEW_SECONDS` while the
    write runs, deleted when it ends.  A process killed mid-write leaves it, naming a process
    that is gone; one of another host is taken for gone once not renewed for `STALE_SECONDS`.
    """

    def __init__(self, client: S3Client, reactor: Any, key: str) -> None:
        self._client = client
        self.key = marks_prefix(client.settings.key_prefix(), key) + uuid.uuid4().hex
        holder = json.loads(_body())
        holder["key"] = key
        self._body = json.dumps(holder).encode()
        self._lock = DeferredLock()
        self._ended = False
        self._renewal = LoopingCall(
            lambda: self._lock.run(lambda: Deferred.fromCoroutine(self._put()))
        )
        self._renewal.clock = reactor

    async def start(self) -> None:
        """Write the mark (before the write it marks begins), then keep renewing it."""
        await self._client.call("PUT", self.key, body=self._body)
        self._renewing = self._renewal.start(RENEW_SECONDS, now=False)
        self._renewing.addErrback(lambda failure: None)

    async def _put(self) -> None:
        if self._ended:
            return
        try:
            await self._client.call("PUT", self.key, body=self._body)
        except StorageError:
            return  # an outage: renewed at the next turn, or lapses (the purge may abort)

    async def release(self) -> None:
        """The write ended (completed or aborted): the mark goes.  Never raises."""
        if self._renewal.running:
            self._renewal.stop()

        async def delete() -> None:
            self._ended = True
            with contextlib.suppress(StorageError):
                await self._client.call("DELETE", self.key, missing_ok=True)

        await self._lock.run(lambda: Deferred.fromCoroutine(delete()))


async def start_mark(client: S3Client, reactor: Any, key: str) -> WriteMark:
    mark = WriteMark(client, reactor, key)
    await mark.start()
    return mark
