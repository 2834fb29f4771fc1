"""
Two txregistry processes on one S3 bucket (a real SeaweedFS): what one writes the other
serves at once, and a chunked upload continues on whichever instance gets the next request.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq

from tests.e2e.client import error_codes, get, header, sha256
from tests.e2e.harness import REPO_ROOT, RegistryProcess, twistd_command, write_config
from tests.e2e.ocilayout import Layout, read_index_digest
from tests.e2e.tools import skopeo
from tests.storage.s3server import S3Server

NO_TLS = ["--src-tls-verify=false", "--dest-tls-verify=false"]


def s3_sections(server: S3Server, root: str, **extra: str) -> dict[str, dict[str, str]]:
    return {
        "storage": server.storage_section(root, chunksize="5MiB", delete_enabled="true", **extra)
    }


@pytest.fixture
def two_instances(
    s3_server: S3Server, tmp_path: Path
) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    root = f"/e2e/{uuid.uuid4().hex}"
    instances = []
    for index in range(2):
        workdir = tmp_path / f"instance{index}"
        workdir.mkdir()
        process = RegistryProcess(workdir, s3_sections(s3_server, root))
        process.launch()  # both start up side by side
        instances.append(process)
    for process in instances:
        process.wait_serving()
    yield instances[0], instances[1]
    for process in instances:
        process.send_stop()
    for process in instances:
        process.wait_stopped()


@pytest_twisted.ensureDeferred
async def test_push_through_one_pull_through_other(
    two_instances: tuple[RegistryProcess, RegistryProcess], tmp_path: Path
) -> None:
    first, second = two_instances
    layout = Layout(tmp_path / "src")
    _, descriptor = layout.image(
        "amd64", [{"a": os.urandom(3_000_000)}, {"b": os.urandom(7_000_000)}, {"c": b"small"}]
    )
    layout.tag(descriptor, "v1")
    await skopeo(
        "copy",
        *NO_TLS,
        "--preserve-digests",
        f"oci:{layout.root}:v1",
        f"docker://{first.url.removeprefix('http://')}/shared/app:v1",
    )
    out = tmp_path / "out"
    await skopeo(
        "copy",
        *NO_TLS,
        "--preserve-digests",
        f"docker://{second.url.removeprefix('http://')}/shared/app:v1",
        f"oci:{out}:v1",
    )
    assert read_index_digest(out, "v1") == descriptor["digest"]
    response, body = await get(f"{second.url}/v2/shared/app/tags/list")
    assert json.loads(body)["tags"] == ["v1"]
    response, body = await get(f"{second.url}/v2/_catalog")
    assert "shared/app" in json.loads(body)["repositories"]

    # A tag moved through the second instance is seen by the first immediately.
    _, other = layout.image("amd64", [{"d": b"other"}])
    layout.tag(other, "v2")
    await skopeo(
        "copy",
        *NO_TLS,
        "--preserve-digests",
        f"oci:{layout.root}:v2",
        f"docker://{second.url.removeprefix('http://')}/shared/app:v1",
    )
    response, _ = await get(f"{first.url}/v2/shared/app/manifests/v1")
    assert header(response, "docker-content-digest") == other["digest"]


@pytest_twisted.ensureDeferred
async def test_chunked_upload_alternating_instances(
    two_instances: tuple[RegistryProcess, RegistryProcess],
) -> None:
    instances = two_instances
    chunks = [os.urandom(size) for size in (6_000_000, 1_000_000, 5_500_000, 300_000, 2_000_000)]
    whole = b"".join(chunks)
    response = await treq.post(f"{instances[0].url}/v2/chunks/app/blobs/uploads/")
    assert response.code == 202
    location = header(response, "location")
    assert location is not None
    offset = 0
    for index, chunk in enumerate(chunks):
        target = instances[index % 2].url + location
        response = await treq.patch(
            target, data=chunk, headers={"Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
        )
        assert response.code == 202, await response.text()
        offset += len(chunk)
        assert header(response, "range") == f"0-{offset - 1}"
        location = header(response, "location")
        assert location is not None
        # Status from the other instance agrees.
        status = await treq.get(instances[(index + 1) % 2].url + location)
        assert header(status, "range") == f"0-{offset - 1}"

    wrong = await treq.patch(
        instances[0].url + location, data=b"x", headers={"Content-Range": "0-0"}
    )
    assert wrong.code == 416
    assert await error_codes(wrong) == ["RANGE_INVALID"]

    response = await treq.put(f"{instances[1].url}{location}?digest={sha256(whole)}")
    assert response.code == 201, await response.text()
    response = await treq.get(f"{instances[0].url}/v2/chunks/app/blobs/{sha256(whole)}")
    assert response.code == 200
    assert hashlib.sha256(await response.content()).hexdigest() == sha256(whole)[7:]


def test_wrong_credentials_stop_startup_clearly(s3_server: S3Server, tmp_path: Path) -> None:
    """The start-up probe goes through the S3 driver: refused credentials stop the process."""
    sections = s3_sections(s3_server, "/e2e/bad")
    sections["storage"]["secretkey"] = "not-the-secret"
    config = write_config(tmp_path / "registry.cfg", sections)
    result = subprocess.run(
        twistd_command("--config", str(config), "--port", "tcp:0:interface=127.0.0.1"),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    [line] = result.stderr.splitlines()
    assert line.startswith(f"txregistry: cannot use storage s3://{s3_server.bucket}/e2e/bad: ")
    assert "S3 refused the credentials" in line
    assert "Traceback" not in result.stdout
    assert "listening" not in result.stdout


@pytest_twisted.ensureDeferred
async def test_a_commit_waits_for_the_request_writing_the_upload(
    two_instances: tuple[RegistryProcess, RegistryProcess], s3_server: S3Server
) -> None:
    """
    Two requests on one upload at once, on two instances (or workers): while one writes the
    upload, the other's PUT gets 416 with the upload's range, and nothing appears at its
    digest; it succeeds once the first is done.  Before, both went ahead, and a content
    address could end up holding the other request's bytes, for every repository.
    """
    from twisted.internet import reactor

    from registry.storage import layout
    from registry.storage.s3 import S3Driver

    first, second = two_instances
    name, head, last = "race/app", os.urandom(1_000_000), os.urandom(1_000_000)
    digest = sha256(head + last)
    response = await treq.post(f"{first.url}/v2/{name}/blobs/uploads/")
    assert response.code == 202, await response.text()
    location = header(response, "location") or ""
    response = await treq.patch(
        f"{first.url}{location}", data=head, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.code == 202, await response.text()
    location = header(response, "location") or location
    upload_id = location.split("?")[0].rstrip("/").rsplit("/", 1)[-1]

    root = first.sections["storage"]["rootdirectory"]
    driver = S3Driver(reactor, s3_server.settings(root))
    try:
        # Another request writing this upload (held here, as long as the test needs).
        writing = await driver.writer(layout.upload_data(name, upload_id), append=True)
        finish = f"{second.url}{location}{'&' if '?' in location else '?'}digest={digest}"
        response = await treq.put(finish, data=last)
        assert response.code == 416, await response.text()
        assert header(response, "range") == f"0-{len(head) - 1}"
        response, _ = await get(f"{second.url}/v2/{name}/blobs/{digest}")
        assert response.code == 404
        await writing.close()
    finally:
        await driver.close()

    response = await treq.put(finish, data=last)
    assert response.code == 201, await response.text()
    response, body = await get(f"{first.url}/v2/{name}/blobs/{digest}")
    assert (response.code, body) == (200, head + last)
