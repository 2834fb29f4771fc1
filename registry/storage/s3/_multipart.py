"""
Multipart-upload calls shared by the writer and by ``move`` of objects above 5 GiB.
"""

from __future__ import annotations

from collections.abc import Awaitable

import attrs
from twisted.logger import Logger

from registry.asyncutil import bounded_map
from registry.storage.driver import StorageError
from registry.storage.s3._client import (
    Body,
    S3Client,
    child_text,
    children,
    header,
    parse_xml,
)
from registry.storage.s3._settings import MIN_PART_SIZE, quote_key

log = Logger()

# Server-side part copies are cheap for us but slow for S3: run a few at once.
COPY_CONCURRENCY = 4
COPY_PART_SIZE = 1024 * 1024 * 1024
# S3 numbers parts 1 to 10,000 and lists at most 1,000 uploads or parts a page: the listings
# below stop after this many pages, a bound far above anything a key can have.
MAX_PARTS = 10_000
MAX_PAGES = 100


@attrs.frozen
class Part:
    number: int
    etag: str
    size: int


async def create(client: S3Client, key: str) -> str:
    result = await client.call("POST", key, query={"uploads": ""})
    assert result is not None
    upload_id = child_text(parse_xml(result[1]), "UploadId")
    if not upload_id:
        raise StorageError(f"S3 started a multipart upload for {key} without an UploadId")
    return upload_id


async def upload_part(client: S3Client, key: str, upload_id: str, number: int, body: Body) -> str:
    query = {"partNumber": str(number), "uploadId": upload_id}
    result = await client.call("PUT", key, query=query, body=body)
    assert result is not None
    etag = header(result[0], "ETag")
    if not etag:
        raise StorageError(f"S3 sent no ETag for part {number} of {key}")
    return etag


async def complete(client: S3Client, key: str, upload_id: str, parts: list[Part]) -> None:
    xml = "".join(
        f"<Part><PartNumber>{part.number}</PartNumber><ETag>{_escape(part.etag)}</ETag></Part>"
        for part in parts
    )
    body = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
    await client.call("POST", key, query={"uploadId": upload_id}, body=body, error_in_body=True)


async def abort(client: S3Client, key: str, upload_id: str) -> None:
    """Abort an upload; one that is already gone is fine."""
    await client.call("DELETE", key, query={"uploadId": upload_id}, missing_ok=True)


async def abort_after_failure(client: S3Client, key: str, upload_id: str) -> None:
    """
    Abort an upload on the way out of a failed operation, whose error is the one to report:
    when S3 is away, the abort fails too, and its error ("no answer ... (DELETE key)") took
    the place of the real cause, reading like the deletion of a blob.  Such an abort's
    failure is one warning instead; the upload stays until ``purge-uploads`` removes it.
    """
    try:
        await abort(client, key, upload_id)
    except StorageError as exc:
        log.warn(
            "S3 multipart upload {upload_id} of {key} not aborted ({error}): it stays until"
            " purge-uploads removes it",
            upload_id=upload_id,
            key=key,
            error=str(exc),
        )


async def uploads_of(client: S3Client, key: str) -> list[str]:
    """
    The ids of the multipart uploads in progress of exactly ``key`` (ListMultipartUploads
    lists every key that starts with its prefix: those of other keys are left out).
    """
    found: list[str] = []
    query = {"uploads": "", "prefix": key}
    for _ in range(MAX_PAGES):
        result = await client.call("GET", query=query)
        assert result is not None
        page = parse_xml(result[1])
        found.extend(
            child_text(upload, "UploadId")
            for upload in children(page, "Upload")
            if child_text(upload, "Key") == key
        )
        key_marker = child_text(page, "NextKeyMarker")
        if child_text(page, "IsTruncated") != "true" or not key_marker:
            return found
        query = {
            "uploads": "",
            "prefix": key,
            "key-marker": key_marker,
            "upload-id-marker": child_text(page, "NextUploadIdMarker"),
        }
    raise StorageError(f"S3 listed more than {MAX_PAGES} pages of multipart uploads of {key}")


async def list_parts(client: S3Client, key: str, upload_id: str) -> list[Part]:
    """The parts of an upload in progress, by number (ListParts, every page)."""
    parts: list[Part] = []
    query = {"uploadId": upload_id}
    for _ in range(MAX_PAGES):
        result = await client.call("GET", key, query=query)
        assert result is not None
        page = parse_xml(result[1])
        try:
            parts.extend(
                Part(
                    int(child_text(part, "PartNumber")),
                    child_text(part, "ETag"),
                    int(child_text(part, "Size")),
                )
                for part in children(page, "Part")
            )
        except ValueError as error:
            raise StorageError(f"S3 listed a part of {key} unreadably: {error}") from error
        if len(parts) > MAX_PARTS:
            raise StorageError(f"S3 listed more than {MAX_PARTS} parts of an upload of {key}")
        marker = child_text(page, "NextPartNumberMarker")
        if child_text(page, "IsTruncated") != "true" or not marker:
            return sorted(parts, key=lambda part: part.number)
        query = {"uploadId": upload_id, "part-number-marker": marker}
    raise StorageError(f"S3 listed more than {MAX_PAGES} pages of parts of {key}")


def copy_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """
    Inclusive byte ranges of ``part_size`` covering ``size``; a short remainder joins the
    range before it, so that every range is at least 5 MiB whenever ``size`` is (the copied
    parts may be followed by more parts).
    """
    ranges = [(start, min(start + part_size, size) - 1) for start in range(0, size, part_size)]
    if len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] + 1 < MIN_PART_SIZE:
        last = ranges.pop()
        ranges[-1] = (ranges[-1][0], last[1])
    return ranges


async def copy_parts(
    client: S3Client,
    source_key: str,
    key: str,
    upload_id: str,
    size: int,
    part_size: int = COPY_PART_SIZE,
    first_number: int = 1,
) -> list[Part]:
    """Copy the object at ``source_key`` into parts of the upload, server side."""
    source = f"/{client.settings.bucket}/{quote_key(source_key)}"

    async def copy(number: int, first: int, last: int) -> Part:
        result = await client.call(
            "PUT",
            key,
            query={"partNumber": str(number), "uploadId": upload_id},
            headers={
                "x-amz-copy-source": source,
                "x-amz-copy-source-range": f"bytes={first}-{last}",
            },
            error_in_body=True,
        )
        assert result is not None
        etag = child_text(parse_xml(result[1]), "ETag")
        if not etag:
            raise StorageError(f"S3 sent no ETag for copied part {number} of {key}")
        return Part(number, etag, last - first + 1)

    def run(numbered: tuple[int, tuple[int, int]]) -> Awaitable[Part]:
        index, (first, last) = numbered
        return copy(first_number + index, first, last)

    return await bounded_map(run, enumerate(copy_ranges(size, part_size)), COPY_CONCURRENCY)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
