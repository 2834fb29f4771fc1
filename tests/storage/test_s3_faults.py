"""
S3 that drops or stalls connections while bodies move: a real txregistry (in process) on a
real SeaweedFS, through a front that breaks the requests a test names (`RecordingFront.fault`).

A connection S3 cuts while a part (or a whole blob) is being sent is a network failure like
any other: the body is sent again from its buffer, and the client gets its 201; when every
attempt fails, a 503 saying why.  A transfer on which nothing moves for ``idletimeout`` ends
the same way, and a download stalled mid-body cuts the client's body instead of holding it.
No test may leave a critical line or a traceback in the log (the autouse log watch).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.logger import formatEvent, globalLogPublisher

from registry.api.digests import Digest
from registry.storage import layout
from registry.storage.s3 import _client as s3_client
from tests.e2e.harness import InProcessRegistry, sleep, start_in_process
from tests.storage.s3front import RecordingFront, Seen, s3_front  # noqa: F401 - the fixture
from tests.storage.s3server import S3Server

MIB = 1024 * 1024
BODY_SIZE = 12 * MIB  # parts of 5 MiB: a multipart upload
Start = Callable[..., Awaitable[InProcessRegistry]]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_part(seen: Seen) -> bool:
    return seen.method == "PUT" and "partNumber" in seen.query


def is_first_part(seen: Seen) -> bool:
    """Part 1 (two parts go at once: every attempt of one part is what exhausts retries)."""
    return is_part(seen) and seen.query["partNumber"] == ["1"]


def is_blob_put(seen: Seen) -> bool:
    """A blob's data sent whole (no multipart upload)."""
    return seen.method == "PUT" and seen.key.endswith("/data") and not seen.query


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """As many attempts as in production, without their seconds of waiting."""
    monkeypatch.setattr(s3_client, "RETRY_DELAYS", (0.05, 0.05, 0.05))


@pytest.fixture
def app_lines() -> Iterator[list[str]]:
    """What the registry's request handling logs (``registry.app``), as text."""
    lines: list[str] = []

    def observe(event: dict[str, object]) -> None:
        if str(event.get("log_namespace", "")).startswith("registry.app"):
            lines.append(str(formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.async_yield_fixture
async def start(
    s3_server: S3Server,
    s3_front: RecordingFront,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[Start]:
    """Starts the registry on S3 through the front, with these ``[storage]`` keys."""
    started: list[InProcessRegistry] = []

    async def starting(**storage: str) -> InProcessRegistry:
        section = s3_server.storage_section(f"/faults/{uuid.uuid4().hex}", chunksize="5MiB")
        section["regionendpoint"] = s3_front.endpoint
        section.update(storage)
        registry = await start_in_process(tmp_path, {"storage": section, "http": {"workers": "1"}})
        started.append(registry)
        return registry

    yield starting
    for registry in started:
        await registry.stop()


async def push(registry: InProcessRegistry, data: bytes) -> tuple[int, bytes]:
    """A monolithic push (``POST ?digest=``): the status and the body of the answer."""
    url = f"{registry.url}/v2/app/blobs/uploads/?digest={digest_of(data)}"
    response = await treq.post(url, data, timeout=120)
    return response.code, await treq.content(response)


async def assert_served(registry: InProcessRegistry, data: bytes) -> None:
    response = await treq.get(f"{registry.url}/v2/app/blobs/{digest_of(data)}", timeout=60)
    assert response.code == 200
    assert await treq.content(response) == data


def unavailable(status: int, body: bytes) -> str:
    """The reason of a ``503 UNAVAILABLE`` answer."""
    assert status == 503, body
    [error] = json.loads(body)["errors"]
    assert error["code"] == "UNAVAILABLE", error
    reason: str = error["detail"]["reason"]
    return reason


@pytest.mark.parametrize("spoolparts", ["true", "false"])
@pytest_twisted.ensureDeferred
async def test_a_part_cut_mid_body_is_sent_again(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
    spoolparts: str,
) -> None:
    registry = await start(spoolparts=spoolparts)
    fault = s3_front.fault(is_part, "cut_up", after=200_000)
    data = os.urandom(BODY_SIZE)
    status, body = await push(registry, data)
    assert status == 201, body
    assert fault.count == 0
    numbers = [seen.query["partNumber"][0] for seen in s3_front.seen if is_part(seen)]
    assert len(numbers) == len(set(numbers)) + 1  # the cut part, sent again
    await assert_served(registry, data)


@pytest_twisted.ensureDeferred
async def test_a_blob_sent_whole_and_cut_mid_body_is_sent_again(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    registry = await start()
    fault = s3_front.fault(is_blob_put, "cut_up", after=200_000)
    data = os.urandom(3_000_000)  # under a part: one PUT of the spooled blob
    status, body = await push(registry, data)
    assert status == 201, body
    assert fault.count == 0
    assert len([seen for seen in s3_front.seen if is_blob_put(seen)]) == 2
    await assert_served(registry, data)


@pytest_twisted.ensureDeferred
async def test_a_patch_whose_part_is_cut_is_sent_again(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    registry = await start()
    data = os.urandom(BODY_SIZE)
    started = await treq.post(f"{registry.url}/v2/app/blobs/uploads/")
    assert started.code == 202, await treq.content(started)
    location = started.headers.getRawHeaders("Location")[0]
    fault = s3_front.fault(is_part, "cut_up", after=1_000_000)
    patched = await treq.patch(
        f"{registry.url}{location}",
        data,
        headers={"Content-Range": f"0-{len(data) - 1}"},
        timeout=120,
    )
    assert patched.code == 202, await treq.content(patched)
    assert patched.headers.getRawHeaders("Range") == [f"0-{len(data) - 1}"]
    assert fault.count == 0
    location = patched.headers.getRawHeaders("Location")[0]
    separator = "&" if "?" in location else "?"
    done = await treq.put(f"{registry.url}{location}{separator}digest={digest_of(data)}")
    assert done.code == 201, await treq.content(done)
    await assert_served(registry, data)


@pytest.mark.usefixtures("quick_retries")
@pytest_twisted.ensureDeferred
async def test_a_part_cut_at_every_attempt_is_a_503_saying_why(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    registry = await start()
    fault = s3_front.fault(is_first_part, "cut_up", after=1_000_000, count=4)
    data = os.urandom(BODY_SIZE)
    reason = unavailable(*await push(registry, data))
    assert fault.count == 0
    assert "unreachable (PUT " in reason and "(4 attempts)" in reason, reason
    head = await treq.head(f"{registry.url}/v2/app/blobs/{digest_of(data)}")
    assert head.code == 404


@pytest_twisted.ensureDeferred
async def test_a_part_s3_refuses_before_its_body_is_in_is_sent_again(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    """S3 answers 500 and closes while the part is still being sent: sent again, and the
    body's end (stopped by Twisted after the answer) logs nothing."""
    registry = await start()
    fault = s3_front.fault(is_part, "answer_up", after=1_000_000)
    data = os.urandom(BODY_SIZE)
    status, body = await push(registry, data)
    assert status == 201, body
    assert fault.count == 0
    await assert_served(registry, data)


@pytest_twisted.ensureDeferred
async def test_a_stalled_part_upload_is_sent_again(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    registry = await start(idletimeout="1s")
    fault = s3_front.fault(is_part, "stall_up", after=1_000_000)
    data = os.urandom(BODY_SIZE)
    status, body = await push(registry, data)
    assert status == 201, body
    assert fault.count == 0
    await assert_served(registry, data)


@pytest.mark.usefixtures("quick_retries")
@pytest_twisted.ensureDeferred
async def test_a_part_upload_stalled_at_every_attempt_is_a_503_saying_why(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    registry = await start(idletimeout="1s")
    fault = s3_front.fault(is_first_part, "stall_up", after=1_000_000, count=4)
    data = os.urandom(BODY_SIZE)
    reason = unavailable(*await push(registry, data))
    assert fault.count == 0
    assert "no byte sent or received for 1s (S3 stalled) (4 attempts)" in reason, reason


@pytest_twisted.ensureDeferred
async def test_a_download_stalled_mid_body_cuts_the_clients_body(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
    app_lines: list[str],
) -> None:
    registry = await start(idletimeout="1s")
    data = os.urandom(3_000_000)
    status, body = await push(registry, data)
    assert status == 201, body
    blob_key = layout.blob_data(Digest.parse(digest_of(data)))
    fault = s3_front.fault(
        lambda seen: seen.method == "GET" and seen.key.endswith(blob_key),
        "stall_down",
        after=1_000_000,
    )
    response = await treq.get(f"{registry.url}/v2/app/blobs/{digest_of(data)}", timeout=60)
    assert response.code == 200
    assert response.length == len(data)
    received: list[bytes] = []
    with pytest.raises(Exception) as cut:  # Twisted's ResponseFailed and kin
        await treq.collect(response, received.append)
    assert "PotentialDataLoss" in repr(cut.value) or "ConnectionLost" in repr(cut.value)
    assert fault.count == 0
    got = b"".join(received)
    assert len(got) < len(data) and data.startswith(got)
    # Cut for S3 stalling, not by some later limit.
    cut_lines = [line for line in app_lines if "body cut short" in line]
    assert len(cut_lines) == 1, app_lines
    assert "no byte sent or received for 1s (S3 stalled)" in cut_lines[0], cut_lines
    # Named by its whole key, the root's prefix included, as every other S3 message names it.
    assert re.search(rf"S3 read of faults/[0-9a-f]{{32}}/{blob_key} ended after", cut_lines[0])


@pytest_twisted.ensureDeferred
async def test_starting_an_upload_on_a_hung_s3_answers_after_one_timeout(
    start: Start,
    s3_front: RecordingFront,  # noqa: F811
) -> None:
    """The clean-up of a half-made upload goes on after the 503: the client does not wait
    out its time limit too."""
    registry = await start(answertimeout="2s")
    s3_front.hold(lambda seen: True)
    response = await treq.post(f"{registry.url}/v2/app/blobs/uploads/", timeout=60)
    unavailable(response.code, await treq.content(response))
    # The clean-up's first call waits on S3 still (its time limit ends it only later); had
    # the answer waited for it, it would have timed out and its connection closed by now.
    await sleep(0.5)
    held = s3_front.held_requests
    cleaning = [
        seen
        for seen in held
        if seen.method != "PUT" and ("/_uploads/" in seen.key or "/_uploads/" in str(seen.query))
    ]
    assert cleaning, held
    s3_front.release()
