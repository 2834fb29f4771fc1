"""
The S3 storage driver: registry:2's layout as object keys in one bucket.

The key of a path is ``<rootdirectory>/<path>``, as registry:2's s3 driver makes it, so an
existing registry:2 bucket is served as it is.  Folders are key prefixes: a folder exists while
a key lies below it.  Requests cost money and latency on S3, so each method makes as few as it
can, and independent ones run concurrently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import treq
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from registry.asyncutil import gather
from registry.storage.driver import (
    FileInfo,
    IConditionalWrites,
    IFileWriter,
    InvalidOffsetError,
    IStagedWrites,
    IStorageDriver,
    IUnfinishedFiles,
    PathNotFoundError,
    StorageError,
    Unfinished,
    VersionChangedError,
    WriteActivity,
)
from registry.storage.producers import BytesProducer
from registry.storage.s3 import _multipart as multipart
from registry.storage.s3._client import (
    S3Client,
    S3Error,
    child_text,
    children,
    header,
    parse_http_date,
    parse_iso_date,
    parse_xml,
)
from registry.storage.s3._lease import (
    LEASE_SUFFIX,
    MARKS_FOLDER,
    is_held,
    lease_key,
    start_mark,
)
from registry.storage.s3._reader import ResponseProducer
from registry.storage.s3._settings import S3Settings, quote_key
from registry.storage.s3._writer import (
    STATE_SUFFIX,
    S3Writer,
    open_writer,
    state_key,
    unfinished,
)

_List = list  # "list" is a method name below
_DELETE_BATCH = 1000  # DeleteObjects' limit
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _check(path: str) -> str:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid storage path {path!r}")
    return path


MOVE_COPY_THRESHOLD = 128 * 1024 * 1024
MOVE_COPY_PART_SIZE = 128 * 1024 * 1024


# What an appending writer keeps next to a file (its state, its lease): not files themselves.
_BESIDE_FILES = (STATE_SUFFIX, LEASE_SUFFIX)


def _etag(response: Any, path: str) -> str:
    etag = header(response, "ETag")
    if not etag:
        raise StorageError(f"writing {path}: the S3 server answered without an ETag")
    return etag


@implementer(IStorageDriver, IStagedWrites, IConditionalWrites, IUnfinishedFiles)
class S3Driver:
    name = "s3"

    # Objects above this size are moved by UploadPartCopy, ``COPY_CONCURRENCY`` parts at once,
    # as registry:2 does above its multipartcopythresholdsize: a server may copy parts in
    # parallel where one CopyObject runs alone (SeaweedFS sharing 2 cores with the registry
    # gains nothing from it: `bench/s3.py --variant MOVE_COPY_THRESHOLD=...`, docs/storage-s3.md).
    # CopyObject also stops at 5 GiB.  Tests lower both to exercise the path with small objects.
    copy_threshold = MOVE_COPY_THRESHOLD
    copy_part_size = MOVE_COPY_PART_SIZE

    def __init__(self, reactor: Any, settings: S3Settings, http_client: Any = None) -> None:
        self.settings = settings
        self._reactor = reactor
        self._client = S3Client(reactor, settings, http_client)
        self._prefix = settings.key_prefix()

    async def close(self) -> None:
        """Drop pooled connections (service shutdown, tests)."""
        await self._client.close()

    def _key(self, path: str) -> str:
        return self._prefix + _check(path)

    async def get_content(self, path: str) -> bytes:
        result = await self._client.call("GET", self._key(path), missing_ok=True)
        if result is None:
            raise PathNotFoundError(path)
        return result[1]

    async def put_content(self, path: str, data: bytes) -> None:
        await self._client.call("PUT", self._key(path), body=bytes(data))

    # Conditional writes (`IConditionalWrites`), as the upload leases do (`_lease`): S3's
    # ``If-None-Match: *`` and ``If-Match: <ETag>``; the version is the ETag.  412 (and 409,
    # a conflicting conditional request in flight) means another writer got there first.

    async def create(self, path: str, data: bytes) -> str:
        try:
            result = await self._client.call(
                "PUT", self._key(path), body=bytes(data), headers={"If-None-Match": "*"}
            )
        except S3Error as error:
            if error.status in (409, 412):
                raise VersionChangedError(f"{path} exists already") from None
            raise
        assert result is not None
        return _etag(result[0], path)

    async def read_versioned(self, path: str) -> tuple[bytes, str]:
        result = await self._client.call("GET", self._key(path), missing_ok=True)
        if result is None:
            raise PathNotFoundError(path)
        return result[1], _etag(result[0], path)

    async def replace_version(self, path: str, data: bytes, version: str) -> str:
        try:
            result = await self._client.call(
                "PUT", self._key(path), body=bytes(data), headers={"If-Match": version}
            )
        except S3Error as error:
            if error.status in (404, 409, 412):
                raise VersionChangedError(f"{path} changed") from None
            raise
        assert result is not None
        return _etag(result[0], path)

    async def delete_version(self, path: str, version: str) -> None:
        try:
            result = await self._client.call(
                "DELETE", self._key(path), headers={"If-Match": version}, missing_ok=True
            )
        except S3Error as error:
            if error.status in (409, 412):
                raise VersionChangedError(f"{path} changed") from None
            raise
        if result is None:
            raise PathNotFoundError(path)

    async def stat(self, path: str) -> FileInfo:
        key = self._key(path)
        result = await self._client.call("HEAD", key, missing_ok=True)
        if result is not None:
            response = result[0]
            return FileInfo(
                path,
                int(header(response, "Content-Length") or 0),
                parse_http_date(header(response, "Last-Modified") or ""),
                False,
            )
        listing = await self._list_page(key + "/", max_keys=2)
        # A folder's own "<key>/" entry (servers that keep folders) does not make it exist.
        contents = [
            item for item in children(listing, "Contents") if child_text(item, "Key") != key + "/"
        ]
        if not contents and not _List(children(listing, "CommonPrefixes")):
            raise PathNotFoundError(path)
        modified = parse_iso_date(child_text(contents[0], "LastModified")) if contents else 0.0
        return FileInfo(path, 0, modified, True)

    async def _list_page(
        self,
        prefix: str,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> Any:
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        result = await self._client.call("GET", query=query)
        assert result is not None
        return parse_xml(result[1])

    async def _walk(
        self, prefix: str, delimiter: str | None = None
    ) -> tuple[_List[str], _List[str]]:
        """All keys and common prefixes under ``prefix``, following continuation tokens."""
        keys: _List[str] = []
        prefixes: _List[str] = []
        token: str | None = None
        while True:
            page = await self._list_page(prefix, delimiter, token)
            keys.extend(child_text(item, "Key") for item in children(page, "Contents"))
            prefixes.extend(child_text(item, "Prefix") for item in children(page, "CommonPrefixes"))
            token = child_text(page, "NextContinuationToken") or None
            if child_text(page, "IsTruncated") != "true" or token is None:
                return keys, prefixes

    async def list(self, path: str) -> _List[str]:
        prefix = self._key(path) + "/"
        keys, prefixes = await self._walk(prefix, "/")
        names = {key[len(prefix) :] for key in keys if not key.endswith(_BESIDE_FILES)}
        names.update(sub[len(prefix) :].rstrip("/") for sub in prefixes)
        names.discard("")
        if not names:
            raise PathNotFoundError(path)
        return sorted(names)

    async def delete(self, path: str) -> None:
        key = self._key(path)
        head, (below, _), uploads = await gather(
            self._client.call("HEAD", key, missing_ok=True),
            self._walk(key + "/"),
            self._uploads_under(key),
        )
        files = [k for k in below if not k.endswith("/")]
        if head is not None:
            files.append(key)
        # Below a folder, an upload's state or lease on its own (its writer killed) is a
        # leftover worth removing, and counts: purging says so.
        found = bool(files)
        # Unfinished writes of this file or below it go too, so nothing is left behind.
        files.extend(key + suffix for suffix in _BESIDE_FILES)
        await gather(
            *(multipart.abort(self._client, upload, upload_id) for upload, upload_id in uploads),
            *(self._delete_keys(files[i : i + _DELETE_BATCH]) for i in _batches(files)),
        )
        if below:
            # Servers that keep folders as entries (SeaweedFS) list a folder emptied of its
            # files until its "<folder>/" entry goes, deepest first; on AWS these are no-ops.
            markers = sorted(_folders(key, below), key=lambda k: k.count("/"), reverse=True)
            for i in _batches(markers):
                await self._delete_keys(markers[i : i + _DELETE_BATCH])
        if not found:
            raise PathNotFoundError(path)

    async def _uploads_under(self, key: str) -> _List[tuple[str, str]]:
        """(key, upload id) of the multipart uploads of ``key`` or of keys below it."""
        found: _List[tuple[str, str]] = []
        query = {"uploads": "", "prefix": key}
        while True:
            result = await self._client.call("GET", query=query)
            assert result is not None
            page = parse_xml(result[1])
            for upload in children(page, "Upload"):
                upload_key = child_text(upload, "Key")
                if upload_key == key or upload_key.startswith(key + "/"):
                    found.append((upload_key, child_text(upload, "UploadId")))
            if child_text(page, "IsTruncated") != "true":
                return found
            query = {
                "uploads": "",
                "prefix": key,
                "key-marker": child_text(page, "NextKeyMarker"),
                "upload-id-marker": child_text(page, "NextUploadIdMarker"),
            }

    async def _delete_keys(self, keys: _List[str]) -> None:
        objects = "".join(f"<Object><Key>{_escape(key)}</Key></Object>" for key in keys)
        body = f"<Delete><Quiet>true</Quiet>{objects}</Delete>".encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        result = await self._client.call(
            "POST", query={"delete": ""}, headers={"Content-MD5": md5}, body=body
        )
        assert result is not None
        errors = _List(children(parse_xml(result[1]), "Error"))
        if errors:
            first = errors[0]
            code = child_text(first, "Code")
            raise S3Error(
                f"S3 did not delete {len(errors)} keys in bucket {self.settings.bucket}, "
                f"first {child_text(first, 'Key')}: {code} ({child_text(first, 'Message')})",
                result[0].code,
                code,
            )

    async def move(self, source: str, dest: str) -> None:
        source_key, dest_key = self._key(source), self._key(dest)
        head = await self._client.call("HEAD", source_key, missing_ok=True)
        if head is None:
            raise PathNotFoundError(source)
        size = int(header(head[0], "Content-Length") or 0)
        if size <= self.copy_threshold:
            copy_source = f"/{self.settings.bucket}/{quote_key(source_key)}"
            await self._client.call(
                "PUT", dest_key, headers={"x-amz-copy-source": copy_source}, error_in_body=True
            )
        else:
            # Marked as being written while it runs, so that the upload purge leaves it alone.
            mark = await start_mark(self._client, self._reactor, dest_key)
            try:
                upload_id = await multipart.create(self._client, dest_key)
                try:
                    parts = await multipart.copy_parts(
                        self._client, source_key, dest_key, upload_id, size, self.copy_part_size
                    )
                    await multipart.complete(self._client, dest_key, upload_id, parts)
                except BaseException:
                    await multipart.abort_after_failure(self._client, dest_key, upload_id)
                    raise
            finally:
                await mark.release()
        await self._client.call("DELETE", source_key, missing_ok=True)

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> IBodyProducer:
        key = self._key(path)
        if offset < 0:
            raise InvalidOffsetError(path, offset)
        if length == 0:
            return await self._empty_read(path, offset)
        headers = {}
        if offset or length is not None:
            # (A whole read sends no Range: servers serve plain GETs fastest, and an empty
            # object answers 200 instead of 416.)
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = await self._client.request("GET", key, headers=headers)
        if response.code == 206:
            match = _CONTENT_RANGE.match(header(response, "Content-Range") or "")
            if match is None:
                response.deliverBody(_Discard())
                raise self._client.error(206, b"", "GET", key)
            count = int(match.group(2)) - int(match.group(1)) + 1
            return ResponseProducer(response, count, key)
        if response.code == 200:
            # The server ignored the range (it may when the range covers the whole object).
            if offset != 0:
                response.deliverBody(_Discard())
                raise self._client.error(200, b"", "GET (Range ignored)", key)
            # Twisted keeps Content-Length out of the headers: it is the response's length.
            size = response.length
            if not isinstance(size, int):
                response.deliverBody(_Discard())
                raise self._client.error(200, b"", "GET (no Content-Length)", key)
            return ResponseProducer(response, size, key)
        content: bytes = await _read(response)
        if response.code == 404:
            raise PathNotFoundError(path)
        if response.code == 416:
            # Past the end, or exactly at it (an empty read, which S3 refuses as a range).
            return await self._empty_read(path, offset)
        raise self._client.error(response.code, content, "GET", key, response)

    async def _empty_read(self, path: str, offset: int) -> IBodyProducer:
        info = await self.stat(path)
        if info.is_dir:
            raise PathNotFoundError(path)
        if offset > info.size:
            raise InvalidOffsetError(path, offset)
        return BytesProducer(b"")

    async def writer(self, path: str, append: bool = False) -> IFileWriter:
        return await open_writer(self._client, self._reactor, self._key(path), path, append)

    async def unfinished(self, path: str) -> Unfinished | None:
        return await unfinished(self._client, self._key(path), path)

    async def staged_writer(self, path: str) -> IFileWriter:
        """A multipart upload at the final key, completed only by ``commit`` (see _writer)."""
        return S3Writer(self._client, self._reactor, self._key(path), path, staged=True)

    async def abort_stale_writes(
        self,
        path: str,
        age: float,
        now: float,
        owned: Callable[[str], Awaitable[bool]] | None = None,
    ) -> int:
        """
        Abort the multipart uploads under ``path`` started more than ``age`` seconds before
        ``now`` that nothing writes or will continue: what a process killed mid-write left
        behind, or a write whose file was removed meanwhile.  Kept: one whose writer is at
        work (a held `WriteMark` of its key: a staged push, a server-side copy; or the held
        lease of an appending writer), and, for a file ``owned`` says is still wanted (an
        upload the purge keeps), the one its state object records, or any when it has no
        state object (registry:2's upload, whose bytes are its multipart upload).  Returns
        how many were aborted.
        """
        stale = await self._started_before(self._key(path), now - age)
        if not stale:
            return 0
        # Read after the listing: a write's mark is made before its multipart upload.
        marked = await self._marked_keys()
        aborted = 0
        for upload_key, upload_id in stale:
            if upload_key in marked or await self._continued(upload_key, upload_id, owned):
                continue
            await multipart.abort(self._client, upload_key, upload_id)
            aborted += 1
        return aborted

    async def _started_before(self, key: str, when: float) -> _List[tuple[str, str]]:
        """(key, upload id) of the multipart uploads below ``key`` started before ``when``."""
        found: _List[tuple[str, str]] = []
        query = {"uploads": "", "prefix": key + "/"}
        for _ in range(1_000_000):  # pages; bounded
            result = await self._client.call("GET", query=query)
            assert result is not None
            page = parse_xml(result[1])
            for upload in children(page, "Upload"):
                if parse_iso_date(child_text(upload, "Initiated")) <= when:
                    found.append((child_text(upload, "Key"), child_text(upload, "UploadId")))
            if child_text(page, "IsTruncated") != "true":
                break
            query = {
                "uploads": "",
                "prefix": key + "/",
                "key-marker": child_text(page, "NextKeyMarker"),
                "upload-id-marker": child_text(page, "NextUploadIdMarker"),
            }
        return found

    async def _marked_keys(self) -> set[str]:
        """The keys a writer marks as being written (`WriteMark`) and holds; the marks of
        writers that are gone are deleted on the way."""
        keys, _ = await self._walk(f"{self._prefix}{MARKS_FOLDER}/")
        held: set[str] = set()
        for mark in keys:
            if mark.endswith("/"):
                continue  # a folder's own entry (servers that keep folders)
            found = await self._client.call("GET", mark, missing_ok=True)
            if found is None:
                continue
            try:
                key = json.loads(found[1])["key"]
            except (ValueError, KeyError, TypeError):
                key = None
            if isinstance(key, str) and is_held(*found):
                held.add(key)
            else:
                await self._client.call("DELETE", mark, missing_ok=True)
        return held

    async def _continued(
        self, key: str, upload_id: str, owned: Callable[[str], Awaitable[bool]] | None
    ) -> bool:
        """Whether an appending writer holds ``key`` now, or the file will be continued from
        multipart upload ``upload_id`` (see `abort_stale_writes`)."""
        lease = await self._client.call("GET", lease_key(key), missing_ok=True)
        if lease is not None and is_held(*lease):
            return True
        # After the lease: a writer records its multipart upload in the state, then lets go.
        if owned is None or not await owned(key.removeprefix(self._prefix)):
            return False
        state = await self._client.call("GET", state_key(key), missing_ok=True)
        if state is None:
            return True  # registry:2's upload: its multipart upload holds its bytes
        try:
            recorded = json.loads(state[1].partition(b"\n")[0]).get("upload_id")
        except (ValueError, AttributeError):
            return True  # unreadable: what it records cannot be told
        return bool(recorded == upload_id)

    async def write_activity(self, path: str, now: float) -> WriteActivity:
        """
        A file being written is not at its key until committed: its bytes so far are in the
        state object beside it (written by every writer's ``close``, so at the end of each
        request) and in a multipart upload, and the request writing it renews its lease
        every few seconds.  The latest of the three (the key, the state, the lease) is its
        last write, measured on S3's clock (each answer's ``Date`` against the object's
        ``Last-Modified``); a lease still held (`_lease.is_held`) means a request writes it
        now.  Three requests, at once.
        """
        key = self._key(path)
        found = await gather(
            self._client.call("HEAD", key, missing_ok=True),
            self._client.call("HEAD", state_key(key), missing_ok=True),
            self._client.call("GET", lease_key(key), missing_ok=True),
        )
        answers = [answer for answer in found if answer is not None]
        if not answers:
            raise PathNotFoundError(path)
        idle = min(_idle(response, now) for response, _ in answers)
        lease = found[2]
        return WriteActivity(idle, lease is not None and is_held(*lease))

    async def redirect_url(self, path: str, method: str) -> str | None:
        if not self.settings.redirect or method.upper() not in ("GET", "HEAD"):
            return None
        return self._client.presign(method.upper(), self._key(path))


def _idle(response: Any, now: float) -> float:
    """Seconds since the object of ``response`` was written, by S3's clock where it says
    (``Date``), else ``now``'s."""
    modified = parse_http_date(header(response, "Last-Modified") or "")
    answered = parse_http_date(header(response, "Date") or "") or now
    return max(0.0, answered - modified)


def _batches(keys: _List[str]) -> range:
    return range(0, len(keys), _DELETE_BATCH)


def _folders(key: str, below: _List[str]) -> set[str]:
    """``key/`` and every folder between it and the keys below it."""
    folders = {key + "/"}
    for item in below:
        parent = item.rpartition("/")[0]
        while len(parent) > len(key):
            folders.add(parent + "/")
            parent = parent.rpartition("/")[0]
    return folders


class _Discard:
    """A body protocol that drops everything (to release a response we will not read)."""

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


async def _read(response: Any) -> bytes:
    content: bytes = await treq.content(response)
    return content


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
