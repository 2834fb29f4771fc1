"""Blob push and pull through the real HTTP interface (OCI distribution-spec end-2 ... end-10)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import DeferredList

from tests.e2e.client import (
    error_codes,
    get,
    header,
    push_blob,
    raw_headers,
    raw_request,
    sha256,
    split_response,
    start_upload,
)
from tests.e2e.conftest import Starter
from tests.e2e.harness import InProcessRegistry

ZERO = "sha256:" + "0" * 64


@pytest_twisted.ensureDeferred
async def test_base_endpoint(registry: InProcessRegistry) -> None:
    response, body = await get(registry.url + "/v2/")
    assert response.code == 200
    assert header(response, "docker-distribution-api-version") == "registry/2.0"
    assert json.loads(body) == {}
    # No framework name and version (registry:2 sends no Server header either).
    assert not response.headers.hasHeader(b"server")
    response, _ = await get(registry.url + "/v2")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_unknown_paths_get_oci_errors(registry: InProcessRegistry) -> None:
    for path in ("/", "/v1/", "/v2/foo/bar", "/v2/foo/nothing/here"):
        response = await treq.get(registry.url + path)
        assert response.code == 404, path
        assert not response.headers.hasHeader(b"server")
        assert await error_codes(response) == ["NOT_FOUND"]


@pytest_twisted.ensureDeferred
async def test_monolithic_post_then_get_head_range(registry: InProcessRegistry) -> None:
    data = os.urandom(300_000)
    digest = await push_blob(registry.url, "team/app", data)
    response, body = await get(f"{registry.url}/v2/team/app/blobs/{digest}")
    assert response.code == 200
    assert body == data
    assert header(response, "docker-content-digest") == digest
    assert response.length == len(data)

    status, headers = await raw_headers("HEAD", f"{registry.url}/v2/team/app/blobs/{digest}")
    assert status == 200
    assert headers["content-length"] == str(len(data))
    assert headers["docker-content-digest"] == digest

    response, body = await get(
        f"{registry.url}/v2/team/app/blobs/{digest}", headers={"Range": "bytes=100-199"}
    )
    assert response.code == 206
    assert body == data[100:200]
    assert header(response, "content-range") == f"bytes 100-199/{len(data)}"

    response, body = await get(
        f"{registry.url}/v2/team/app/blobs/{digest}", headers={"Range": "bytes=-10"}
    )
    assert (response.code, body) == (206, data[-10:])

    response = await treq.get(
        f"{registry.url}/v2/team/app/blobs/{digest}", headers={"Range": "bytes=999999-"}
    )
    assert response.code == 416
    assert header(response, "content-range") == f"bytes */{len(data)}"
    assert await error_codes(response) == ["RANGE_INVALID"]


@pytest_twisted.ensureDeferred
async def test_an_empty_digest_or_mount_starts_an_upload(registry: InProcessRegistry) -> None:
    """``?digest=`` and ``?mount=`` with nothing after them name nothing: an upload is
    started, as registry:2 does, with or without a body."""
    for query, body in (("digest=", b""), ("digest=", b"ignored"), ("mount=&from=", b"")):
        response = await treq.post(f"{registry.url}/v2/empty/q/blobs/uploads/?{query}", data=body)
        assert response.code == 202, (query, await response.text())
        location = header(response, "location")
        assert location is not None and location.startswith("/v2/empty/q/blobs/uploads/")
        response = await treq.get(f"{registry.url}{location}")
        assert (response.code, header(response, "range")) == (204, "0-0")


@pytest_twisted.ensureDeferred
async def test_ranges_with_thousands_of_digits(registry: InProcessRegistry) -> None:
    """
    Positions longer than int() converts: past the end is 416 with the OCI error, a huge last
    position or suffix is the whole blob; never a 500 (nor a traceback: tests/logwatch.py).
    A reversed range (the conformance suite's ``bytes=500-0``) is 416 too, as registry:2
    answers it.
    """
    data = os.urandom(1000)
    digest = await push_blob(registry.url, "team/app", data)
    huge = "9" * 5000

    async def ranged(value: str) -> tuple[bytes, dict[str, str], bytes]:
        request = (
            f"GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\nRange: {value}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        return split_response(await raw_request(registry.url, request))

    status, headers, body = await ranged(f"bytes={huge}-")
    assert status == b"HTTP/1.1 416 Range Not Satisfiable"
    assert headers["content-range"] == "bytes */1000"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["errors"][0]["code"] == "RANGE_INVALID"
    for value in (f"bytes=0-{huge}", f"bytes=-{huge}"):
        status, headers, body = await ranged(value)
        assert status == b"HTTP/1.1 206 Partial Content"
        assert headers["content-range"] == "bytes 0-999/1000"
        assert body == data
    for value in (f"bytes={huge}-5", "bytes=500-0"):  # last before first: rejected
        status, headers, body = await ranged(value)
        assert status == b"HTTP/1.1 416 Range Not Satisfiable"
        assert headers["content-range"] == "bytes */1000"
        assert json.loads(body)["errors"][0]["code"] == "RANGE_INVALID"
    status, headers, body = await ranged("items=0-9")  # another unit: ignored
    assert status == b"HTTP/1.1 200 OK"
    assert body == data


@pytest_twisted.ensureDeferred
async def test_blob_not_in_repository(registry: InProcessRegistry) -> None:
    digest = await push_blob(registry.url, "one", b"only in one")
    response = await treq.get(f"{registry.url}/v2/two/blobs/{digest}")
    assert response.code == 404
    assert await error_codes(response) == ["BLOB_UNKNOWN"]
    response = await treq.head(f"{registry.url}/v2/two/blobs/{digest}")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_put_with_body_completes_session(registry: InProcessRegistry) -> None:
    data = os.urandom(70_000)
    location = await start_upload(registry.url, "web")
    response = await treq.put(f"{location}?digest={sha256(data)}", data=data)
    assert response.code == 201, await response.text()
    assert header(response, "location") == f"/v2/web/blobs/{sha256(data)}"
    _, body = await get(f"{registry.url}/v2/web/blobs/{sha256(data)}")
    assert body == data


@pytest_twisted.ensureDeferred
async def test_chunked_patch_with_and_without_content_range(registry: InProcessRegistry) -> None:
    chunks = [os.urandom(100_000), os.urandom(50_001), os.urandom(7)]
    location = await start_upload(registry.url, "chunky")
    offset = 0
    for index, chunk in enumerate(chunks):
        headers = {"Content-Type": "application/octet-stream"}
        if index != 1:  # the middle chunk is sent the Docker way, without Content-Range
            headers["Content-Range"] = f"{offset}-{offset + len(chunk) - 1}"
        response = await treq.patch(location, data=chunk, headers=headers)
        assert response.code == 202, await response.text()
        offset += len(chunk)
        assert header(response, "range") == f"0-{offset - 1}"
        assert header(response, "docker-upload-uuid") == location.rsplit("/", 1)[1]
        location = registry.url + header(response, "location")  # type: ignore[operator]

    response = await treq.get(location)
    assert response.code == 204
    assert header(response, "range") == f"0-{offset - 1}"

    whole = b"".join(chunks)
    response = await treq.put(f"{location}?digest={sha256(whole)}")
    assert response.code == 201, await response.text()
    _, body = await get(f"{registry.url}/v2/chunky/blobs/{sha256(whole)}")
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(whole).hexdigest()


@pytest_twisted.ensureDeferred
async def test_concurrent_chunked_uploads_hash_independently(registry: InProcessRegistry) -> None:
    """
    Uploads are hashed on worker threads, each in its own lane: interleaved PATCHes of
    several uploads, with chunks larger than a lane's queue (so the socket is paused and
    resumed), must each end with their own digest.
    """
    uploads = {
        f"lanes/u{index}": [os.urandom(3 * 1024 * 1024) for _ in range(3)] for index in range(4)
    }
    locations = {name: await start_upload(registry.url, name) for name in uploads}
    for step in range(3):
        responses = await DeferredList(
            [
                treq.patch(
                    locations[name],
                    data=chunks[step],
                    headers={"Content-Type": "application/octet-stream"},
                )
                for name, chunks in uploads.items()
            ],
            fireOnOneErrback=True,
        )
        for (name, _), (_, response) in zip(uploads.items(), responses, strict=True):
            assert response.code == 202, await response.text()
            assert header(response, "range") == f"0-{(step + 1) * 3 * 1024 * 1024 - 1}"
            locations[name] = registry.url + header(response, "location")  # type: ignore[operator]
    for name, chunks in uploads.items():
        whole = b"".join(chunks)
        response = await treq.put(f"{locations[name]}?digest={sha256(whole)}")
        assert response.code == 201, await response.text()
        _, body = await get(f"{registry.url}/v2/{name}/blobs/{sha256(whole)}")
        assert sha256(body) == sha256(whole)


@pytest_twisted.ensureDeferred
async def test_out_of_order_chunk_is_416(registry: InProcessRegistry) -> None:
    location = await start_upload(registry.url, "order")
    response = await treq.patch(location, data=b"x" * 10, headers={"Content-Range": "0-9"})
    assert response.code == 202
    for bad in ("20-29", "5-14", "0-9"):
        response = await treq.patch(location, data=b"y" * 10, headers={"Content-Range": bad})
        assert response.code == 416, bad
        assert header(response, "range") == "0-9"
        assert header(response, "location") == location.removeprefix(registry.url)
        assert await error_codes(response) == ["RANGE_INVALID"]
    # Not a range at all (the spec's ``^[0-9]+-[0-9]+$``): 400 naming the header, where a 416
    # would tell the client to resume from a position it never sent.
    for method in ("PATCH", "PUT"):
        query = f"?digest={sha256(b'x' * 20)}" if method == "PUT" else ""
        for bad in ("garbage", "10-9", "-5"):
            response = await treq.request(
                method, location + query, data=b"y" * 10, headers={"Content-Range": bad}
            )
            assert response.code == 400, (method, bad)
            assert json.loads(await response.content()) == {
                "errors": [
                    {
                        "code": "BLOB_UPLOAD_INVALID",
                        "message": "Content-Range must be <first>-<last>, the chunk's first "
                        "and last byte offsets",
                        "detail": {"content_range": bad},
                    }
                ]
            }
    response = await treq.patch(
        f"{registry.url}/v2/order/blobs/uploads/{'0' * 8}-0000-0000-0000-{'0' * 12}",
        data=b"y",
        headers={"Content-Range": "garbage"},
    )
    assert response.code == 404
    assert await error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
    response = await treq.get(location)
    assert header(response, "range") == "0-9"
    # A last chunk sent with PUT is checked the same way, and the upload survives it.
    whole = b"x" * 10 + b"z" * 10
    response = await treq.put(
        f"{location}?digest={sha256(whole)}", data=b"z" * 10, headers={"Content-Range": "30-39"}
    )
    assert response.code == 416
    response = await treq.put(
        f"{location}?digest={sha256(whole)}", data=b"z" * 10, headers={"Content-Range": "10-19"}
    )
    assert response.code == 201, await response.text()


@pytest_twisted.ensureDeferred
async def test_wrong_digest_stores_nothing(registry: InProcessRegistry) -> None:
    data = b"some bytes"
    wrong = sha256(b"other bytes")
    response = await treq.post(f"{registry.url}/v2/x/blobs/uploads/?digest={wrong}", data=data)
    assert response.code == 400
    assert await error_codes(response) == ["DIGEST_INVALID"]
    for digest in (wrong, sha256(data)):
        response = await treq.head(f"{registry.url}/v2/x/blobs/{digest}")
        assert response.code == 404

    location = await start_upload(registry.url, "x")
    response = await treq.put(f"{location}?digest={wrong}", data=data)
    assert response.code == 400
    assert await error_codes(response) == ["DIGEST_INVALID"]
    response = await treq.get(location)
    assert response.code == 404  # the failed upload is gone, as in registry:2


@pytest_twisted.ensureDeferred
async def test_sha512_digest(registry: InProcessRegistry) -> None:
    data = os.urandom(10_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    response = await treq.post(f"{registry.url}/v2/x/blobs/uploads/?digest={digest}", data=data)
    assert response.code == 201, await response.text()
    response, body = await get(f"{registry.url}/v2/x/blobs/{digest}")
    assert (response.code, body) == (200, data)
    assert header(response, "docker-content-digest") == digest


@pytest_twisted.ensureDeferred
async def test_malformed_digests_and_names(registry: InProcessRegistry) -> None:
    cases = [
        ("/v2/x/blobs/sha256:abc", "DIGEST_INVALID"),
        ("/v2/x/blobs/md5:" + "a" * 32, "DIGEST_INVALID"),
        ("/v2/x/blobs/sha256:" + "G" * 64, "DIGEST_INVALID"),
        ("/v2/UPPER/blobs/" + ZERO, "NAME_INVALID"),
        ("/v2/a..b/blobs/" + ZERO, "NAME_INVALID"),
        ("/v2/" + "a" * 256 + "/blobs/" + ZERO, "NAME_INVALID"),
        ("/v2/-x/blobs/" + ZERO, "NAME_INVALID"),
    ]
    for path, code in cases:
        response = await treq.get(registry.url + path)
        assert response.code in (400, 404), path
        assert await error_codes(response) == [code], path
    response = await treq.post(f"{registry.url}/v2/x/blobs/uploads/?digest=sha256:zz", data=b"a")
    assert response.code == 400
    assert await error_codes(response) == ["DIGEST_INVALID"]


@pytest_twisted.ensureDeferred
async def test_names_with_api_words(registry: InProcessRegistry) -> None:
    for name in ("blobs", "a/blobs/uploads", "manifests/x", "tags/list/y", "a/b/c/d/e/f"):
        data = name.encode() * 10
        digest = await push_blob(registry.url, name, data)
        response, body = await get(f"{registry.url}/v2/{name}/blobs/{digest}")
        assert (response.code, body) == (200, data), name


@pytest_twisted.ensureDeferred
async def test_unknown_upload(registry: InProcessRegistry) -> None:
    missing = f"{registry.url}/v2/x/blobs/uploads/00000000-0000-4000-8000-000000000000"
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = await treq.request(method, missing + f"?digest={ZERO}", data=b"abc")
        assert response.code == 404, method
        assert await error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"], method


@pytest_twisted.ensureDeferred
async def test_cancel_upload(registry: InProcessRegistry) -> None:
    location = await start_upload(registry.url, "x")
    await treq.patch(location, data=b"partial")
    response = await treq.delete(location)
    assert response.code == 204
    response = await treq.get(location)
    assert response.code == 404
    assert await error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


@pytest_twisted.ensureDeferred
async def test_cross_repository_mount(registry: InProcessRegistry) -> None:
    digest = await push_blob(registry.url, "source/repo", b"mount me")
    response = await treq.post(
        f"{registry.url}/v2/dest/blobs/uploads/?mount={digest}&from=source/repo"
    )
    assert response.code == 201
    assert header(response, "location") == f"/v2/dest/blobs/{digest}"
    assert header(response, "docker-content-digest") == digest
    _, body = await get(f"{registry.url}/v2/dest/blobs/{digest}")
    assert body == b"mount me"

    # Without ``from`` (and without access control), a stored blob is mounted all the same.
    response = await treq.post(f"{registry.url}/v2/anon/blobs/uploads/?mount={digest}")
    assert response.code == 201
    assert (await treq.head(f"{registry.url}/v2/anon/blobs/{digest}")).code == 200

    # Unknown blob, or a ``from`` that does not have it: a new upload session instead.
    # Empty ``mount=`` and ``from=`` too (registry:2 starts an upload; it was DIGEST_INVALID).
    for query in (
        f"mount={ZERO}&from=source/repo",
        f"mount={ZERO}",
        f"mount={digest}&from=dest2",
        "mount=&from=",
        "mount=",
    ):
        response = await treq.post(f"{registry.url}/v2/other/blobs/uploads/?{query}")
        assert response.code == 202, query
        location = header(response, "location") or ""
        assert location.startswith("/v2/other/blobs/uploads/")


@pytest_twisted.ensureDeferred
async def test_blob_delete_disabled_by_default(registry: InProcessRegistry) -> None:
    digest = await push_blob(registry.url, "x", b"keep")
    response = await treq.delete(f"{registry.url}/v2/x/blobs/{digest}")
    assert response.code == 405
    assert await error_codes(response) == ["UNSUPPORTED"]
    response, body = await get(f"{registry.url}/v2/x/blobs/{digest}")
    assert body == b"keep"


@pytest_twisted.ensureDeferred
async def test_blob_delete_when_enabled(start_registry: Starter) -> None:
    registry = await start_registry({"storage": {"delete_enabled": "true"}})
    digest = await push_blob(registry.url, "x", b"remove")
    response = await treq.delete(f"{registry.url}/v2/x/blobs/{digest}")
    assert response.code == 202
    response = await treq.get(f"{registry.url}/v2/x/blobs/{digest}")
    assert response.code == 404
    response = await treq.delete(f"{registry.url}/v2/x/blobs/{digest}")
    assert response.code == 404
    assert await error_codes(response) == ["BLOB_UNKNOWN"]


@pytest_twisted.ensureDeferred
async def test_readonly_refuses_writes(start_registry: Starter) -> None:
    registry = await start_registry({"maintenance": {"readonly": "true"}})
    response = await treq.post(f"{registry.url}/v2/x/blobs/uploads/")
    assert response.code == 405
    assert await error_codes(response) == ["UNSUPPORTED"]
    response = await treq.post(
        f"{registry.url}/v2/x/blobs/uploads/?digest={sha256(b'a')}", data=b"a"
    )
    assert response.code == 405
    response, _ = await get(registry.url + "/v2/")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_method_not_allowed(registry: InProcessRegistry) -> None:
    response = await treq.request("PATCH", f"{registry.url}/v2/x/blobs/{ZERO}")
    assert response.code == 405
    assert await error_codes(response) == ["UNSUPPORTED"]


@pytest.mark.parametrize("size", [0, 1, 4 * 1024 * 1024 + 3])
@pytest_twisted.ensureDeferred
async def test_sizes(registry: InProcessRegistry, size: int) -> None:
    data = os.urandom(size)
    digest = await push_blob(registry.url, "sizes", data)
    response, body = await get(f"{registry.url}/v2/sizes/blobs/{digest}")
    assert (response.code, body) == (200, data)


@pytest_twisted.ensureDeferred
async def test_absolute_locations_when_asked(start_registry: Starter) -> None:
    registry = await start_registry({"http": {"relativeurls": "false"}})
    response = await treq.post(f"{registry.url}/v2/abs/blobs/uploads/")
    location = header(response, "location")
    assert location is not None
    assert location.startswith(registry.url + "/v2/abs/blobs/uploads/")
    data = b"absolute"
    response = await treq.put(f"{location}?digest={sha256(data)}", data=data)
    assert header(response, "location") == f"{registry.url}/v2/abs/blobs/{sha256(data)}"


@pytest_twisted.ensureDeferred
async def test_oversized_headers_are_refused(registry: InProcessRegistry) -> None:
    """Header bytes are bounded (16 KiB a line): a huge header is refused, the socket closed."""
    import socket

    from twisted.internet.threads import deferToThread

    host, port = registry.url.removeprefix("http://").split(":")

    def send() -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            return answer

    answer = await deferToThread(send)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
    response, _ = await get(registry.url + "/v2/")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_health(registry: InProcessRegistry) -> None:
    response, body = await get(registry.url + "/health")
    assert response.code == 200
    assert json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize(
    ("query", "detail"),
    [("?digest=sha256:zz", None), ("", "digest missing"), ("?digest=", "digest missing")],
)
@pytest_twisted.ensureDeferred
async def test_a_final_put_without_a_usable_digest_leaves_the_upload_for_a_retry(
    registry: InProcessRegistry, query: str, detail: str | None
) -> None:
    """registry:2 refuses it before reading the body ("return error, but allow retry"): the
    body must not reach the upload, or the retry commits it twice and fails."""
    location = await start_upload(registry.url, "retry")
    response = await treq.patch(location, data=b"ab")
    assert response.code == 202
    response = await treq.put(location + query, data=b"c")
    answer = json.loads(await response.content())
    assert response.code == 400, answer
    [error] = answer["errors"]
    assert error["code"] == "DIGEST_INVALID"
    if detail is not None:
        assert error["detail"] == {"reason": detail}
    response = await treq.get(location)
    assert (response.code, header(response, "range")) == (204, "0-1")
    whole = sha256(b"abc")
    response = await treq.put(f"{location}?digest={whole}", data=b"c")
    assert response.code == 201, await response.text()
    _, body = await get(f"{registry.url}/v2/retry/blobs/{whole}")
    assert body == b"abc"


@pytest_twisted.ensureDeferred
async def test_a_put_without_a_digest_on_an_unknown_upload_is_404(
    registry: InProcessRegistry,
) -> None:
    missing = f"{registry.url}/v2/x/blobs/uploads/00000000-0000-4000-8000-000000000000"
    for query in ("", "?digest=sha256:zz"):
        response = await treq.put(missing + query, data=b"abc")
        assert response.code == 404, query
        assert await error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"], query


@pytest_twisted.ensureDeferred
async def test_upload_status_and_cancel_are_204_without_content_length(
    registry: InProcessRegistry,
) -> None:
    """RFC 9110 section 8.6: no Content-Length in a 204.  HEAD answers as GET does (registry:2
    does too), and the connection stays open after each (the second request is answered)."""
    location = await start_upload(registry.url, "nolength")
    await treq.patch(location, data=b"abc")
    path = location.removeprefix(registry.url)
    upload_id = path.rsplit("/", 1)[1]
    host = registry.url.removeprefix("http://")
    for method in ("GET", "HEAD"):
        answer = await raw_request(
            registry.url,
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
        )
        first, _, second = answer.partition(b"\r\n\r\n")
        status, headers, _ = split_response(first + b"\r\n\r\n")
        assert status == b"HTTP/1.1 204 No Content", method
        assert "content-length" not in headers, method
        assert "transfer-encoding" not in headers, method
        assert headers["range"] == "0-2", method
        assert headers["location"] == path, method
        assert headers["docker-upload-uuid"] == upload_id, method
        assert headers["docker-distribution-api-version"] == "registry/2.0", method
        assert second.startswith(b"HTTP/1.1 200 OK\r\n"), (method, second)
        assert second.endswith(b"\r\n\r\n{}"), (method, second)

    answer = await raw_request(
        registry.url,
        f"DELETE {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
    )
    status, headers, body = split_response(answer)
    assert (status, body) == (b"HTTP/1.1 204 No Content", b"")
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers

    response = await treq.post(location)
    assert response.code == 405
    assert header(response, "allow") == "GET, HEAD, PUT, PATCH, DELETE"
    assert await error_codes(response) == ["UNSUPPORTED"]


@pytest_twisted.ensureDeferred
async def test_a_chunk_whose_length_is_not_its_content_range_is_refused(
    registry: InProcessRegistry,
) -> None:
    """registry:2 v3: 416 when the chunk does not start at the upload's end, else 400
    SIZE_INVALID; nothing of the chunk is kept either way."""
    location = await start_upload(registry.url, "sized")
    response = await treq.patch(location, data=b"abc", headers={"Content-Range": "0-2"})
    assert response.code == 202
    for method in ("PATCH", "PUT"):
        query = f"?digest={sha256(b'abcdefgh')}" if method == "PUT" else ""
        response = await treq.request(
            method, location + query, data=b"defgh", headers={"Content-Range": "3-12"}
        )
        answer = json.loads(await response.content())
        assert response.code == 400, (method, answer)
        assert answer == {
            "errors": [
                {
                    "code": "SIZE_INVALID",
                    "message": "the chunk's length does not match its Content-Range",
                    "detail": {"content_range": "3-12", "received": 5},
                }
            ]
        }
        response = await treq.request(
            method, location + query, data=b"defgh", headers={"Content-Range": "5-9"}
        )
        assert response.code == 416, method
        assert header(response, "range") == "0-2"
        assert await error_codes(response) == ["RANGE_INVALID"]
        response = await treq.get(location)
        assert header(response, "range") == "0-2", method

    # Without Content-Length (chunked), the body is measured once it is in and dropped.
    path = location.removeprefix(registry.url)
    host = registry.url.removeprefix("http://")
    for method, query in (("PATCH", ""), ("PUT", f"?digest={sha256(b'abcdefgh')}")):
        answer = await raw_request(
            registry.url,
            f"{method} {path}{query} HTTP/1.1\r\nHost: {host}\r\nContent-Range: 3-12\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            "5\r\ndefgh\r\n0\r\n\r\n".encode(),
        )
        status, _, body = split_response(answer)
        assert status == b"HTTP/1.1 400 Bad Request", (method, answer)
        assert json.loads(body)["errors"][0] == {
            "code": "SIZE_INVALID",
            "message": "the chunk's length does not match its Content-Range",
            "detail": {"content_range": "3-12", "received": 5},
        }
        response = await treq.get(location)
        assert header(response, "range") == "0-2", method

    response = await treq.put(
        f"{location}?digest={sha256(b'abcdefgh')}",
        data=b"defgh",
        headers={"Content-Range": "3-7"},
    )
    assert response.code == 201, await response.text()
