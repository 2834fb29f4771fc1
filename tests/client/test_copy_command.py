"""
``txregistry copy`` as a script runs it (a child process): a multi-platform index with its
referrers between the project's registry and registry:2 (no referrers API: the tag schema)
and through an OCI layout, digests preserved; blobs present skipped, mounted within one
registry; exit codes 0, 1, 2.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import subprocess
import sys
import termios
from pathlib import Path

import bcrypt
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread

from registry.client import TLSOptions
from registry.client.layout import REF_NAME
from tests.auth import pki
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.test_layout import push_multi
from tests.e2e.client import get, header
from tests.e2e.conftest import Starter
from tests.e2e.harness import REPO_ROOT, free_port
from tests.e2e.tools import Registry2Process

NO_TLS = ["--src-tls-verify=false", "--dest-tls-verify=false"]


async def txregistry(*args: str, stderr: int | None = None) -> tuple[int, str, str]:
    """Run ``txregistry ARGS`` (this checkout) in a thread so the reactor keeps serving;
    ``stderr`` a file descriptor to give it instead of a pipe (a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DOCKER_CONFIG": "/nonexistent"}

    def call() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "registry.cli", *args]
        return subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr is None else stderr,
            text=True,
            timeout=300,
            env=env,
        )

    result = await deferToThread(call)
    return result.returncode, result.stdout, result.stderr or ""


async def push_referrers(client: object, name: str, subject: bytes) -> list[bytes]:
    made = []
    for artifact_type, payload in (
        ("application/vnd.dev.cosign.simplesigning.v1+json", b"signature"),
        ("application/spdx+json", b'{"spdxVersion": "SPDX-2.3"}'),
    ):
        body, blobs = images.referrer(subject, images.OCI_INDEX, artifact_type, payload)
        for dgst, data in blobs.items():
            await client.upload_blob(name, data, dgst)  # type: ignore[attr-defined]
        await client.put_manifest(name, images.digest(body), body)  # type: ignore[attr-defined]
        made.append(body)
    return made


@pytest_twisted.ensureDeferred
async def test_copy_index_with_referrers_through_registry2_and_a_layout(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    ours = await start_registry()
    client = make_client(ours.url)
    index, manifests = await push_multi(client, "app/web", "v1")
    referrers = await push_referrers(client, "app/web", index)
    host = ours.url.removeprefix("http://")
    root = tmp_path / "registry2-root"
    root.mkdir()
    registry2 = Registry2Process(tmp_path, root)
    registry2.start()
    try:
        # 1. ours → registry:2, with referrers (registry:2 stores them by digest).
        code, out, err = await txregistry(
            "copy",
            *NO_TLS,
            "--referrers",
            f"docker://{host}/app/web:v1",
            f"docker://{registry2.host}/mirror/web:v1",
        )
        assert code == 0, err
        assert f"copied {images.digest(index)}" in out
        assert "2 referrers" in out
        # Not a terminal: one line per item, each blob once.
        lines = err.splitlines()
        assert sum(line.startswith("copied blob ") for line in lines) == 4 + 3
        response, body = await get(
            f"http://{registry2.host}/v2/mirror/web/manifests/v1",
            headers={"Accept": images.OCI_INDEX},
        )
        assert body == index
        for referrer in referrers:
            response, body = await get(
                f"http://{registry2.host}/v2/mirror/web/manifests/{images.digest(referrer)}",
                headers={"Accept": images.OCI_MANIFEST},
            )
            assert response.code == 200 and body == referrer
        # registry:2 has no referrers API: the spec's fallback tag lists them.
        response, body = await get(
            f"http://{registry2.host}/v2/mirror/web/manifests/sha256-{images.digest(index)[7:]}",
            headers={"Accept": images.OCI_INDEX},
        )
        listed = json.loads(body)["manifests"]
        assert sorted(d["digest"] for d in listed) == sorted(images.digest(r) for r in referrers)
        assert {d["artifactType"] for d in listed} == {
            "application/vnd.dev.cosign.simplesigning.v1+json",
            "application/spdx+json",
        }
        # 2. Again: everything is there already.
        code, out, err = await txregistry(
            "copy",
            *NO_TLS,
            f"docker://{host}/app/web:v1",
            f"docker://{registry2.host}/mirror/web:v1",
        )
        assert code == 0, err
        assert "0 blobs" in out and "4 already there" in out
        # 3. registry:2 → a layout, the referrers found through the fallback tag.
        layout = tmp_path / "layout"
        code, out, err = await txregistry(
            "copy",
            *NO_TLS,
            "--referrers",
            f"docker://{registry2.host}/mirror/web:v1",
            f"oci:{layout}:v1",
        )
        assert code == 0, err
        assert "2 referrers" in out
        # Another image in the same layout, which refers to nothing.
        await push_multi(client, "app/other", "v9")
        code, out, err = await txregistry(
            "copy", *NO_TLS, f"docker://{host}/app/other:v9", f"oci:{layout}:v9"
        )
        assert code == 0, err
        entries = json.loads((layout / "index.json").read_text())["manifests"]
        tagged = {e["annotations"][REF_NAME]: e["digest"] for e in entries if "annotations" in e}
        assert tagged["v1"] == images.digest(index)
        untagged = sorted(e["digest"] for e in entries if "annotations" not in e)
        assert untagged == sorted(images.digest(r) for r in referrers)
    finally:
        registry2.stop()
    # 4. The layout → a fresh registry of ours: the referrers API lists them again.
    fresh = await start_registry()
    fresh_host = fresh.url.removeprefix("http://")
    code, out, err = await txregistry(
        "copy",
        "--dest-tls-verify=false",
        "--referrers",
        f"oci:{layout}:v1",
        f"docker://{fresh_host}/restored/web:v1",
    )
    assert code == 0, err
    assert "5 manifests" in out and "2 referrers" in out
    response, body = await get(f"{fresh.url}/v2/restored/web/referrers/{images.digest(index)}")
    listed = sorted(d["digest"] for d in json.loads(body)["manifests"])
    assert listed == sorted(images.digest(r) for r in referrers)
    for arch, manifest in manifests.items():
        response, _ = await get(f"{fresh.url}/v2/restored/web/manifests/{images.digest(manifest)}")
        assert header(response, "docker-content-digest") == images.digest(manifest), arch


@pytest_twisted.ensureDeferred
async def test_same_registry_mounts_and_exit_codes(
    registry: object, make_client: ClientFactory, tmp_path: Path
) -> None:
    url = registry.url  # type: ignore[attr-defined]
    client = make_client(url)
    index, _ = await push_multi(client, "one/app", "v1")
    host = url.removeprefix("http://")
    code, out, err = await txregistry(
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{host}/one/app:v1",
        f"docker://{host}/two/app:v1",
    )
    assert code == 0, err
    assert "4 mounted" in out and "0 blobs" in out
    assert (await client.get_manifest("two/app", "v1")).body == index
    # A tag that does not exist: 1, and the registry's error code in the message.
    code, out, err = await txregistry(
        "copy", *NO_TLS, f"docker://{host}/one/app:nope", f"oci:{tmp_path}/x:nope"
    )
    assert code == 1 and "MANIFEST_UNKNOWN" in err and out == ""
    # Nothing listening: 1, and the line says where the copy found no answer.
    nothing = f"127.0.0.1:{free_port()}"
    code, out, err = await txregistry(
        "copy", *NO_TLS, f"docker://{nothing}/one/app:v1", f"oci:{tmp_path}/x:v1"
    )
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"txregistry copy: failed: no answer from http://{nothing}: ConnectionRefusedError: "
        "Connection was refused by other side: 111: Connection refused."
    ]
    # Bad names and bad options: 2.
    for args in (
        ["copy", "one/app:v1", f"oci:{tmp_path}/x"],
        ["copy", f"oci:{tmp_path}/not-a-layout:v1", f"docker://{host}/a:b"],
        ["copy", "--src-tls-verify=maybe", f"docker://{host}/a:b", f"oci:{tmp_path}/x"],
    ):
        code, _, err = await txregistry(*args)
        assert code == 2, (args, err)


async def _image_and_locked_registry(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> tuple[str, str]:
    """An image on an open registry (its ``docker://`` name) and the host of a registry
    where alice logs in with ``alice-pw`` (Basic auth)."""
    lines = [f"alice:{bcrypt.hashpw(b'alice-pw', bcrypt.gensalt(rounds=4)).decode()}"]
    (tmp_path / "htpasswd").write_text("\n".join(lines) + "\n")
    locked = await start_registry(
        {"auth.htpasswd": {"path": str(tmp_path / "htpasswd"), "realm": "test"}}
    )
    open_registry = await start_registry()
    await push_multi(make_client(open_registry.url), "app/web", "v1")
    source = f"docker://{open_registry.url.removeprefix('http://')}/app/web:v1"
    return source, locked.url.removeprefix("http://")


@pytest_twisted.ensureDeferred
async def test_credentials_and_progress_on_a_terminal(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """``--dest-creds`` and ``--authfile`` reach a registry with Basic auth (without them:
    exit 1 naming UNAUTHORIZED); on a terminal the progress is one line rewritten in place."""
    source, host = await _image_and_locked_registry(start_registry, make_client, tmp_path)
    code, _, err = await txregistry("copy", *NO_TLS, source, f"docker://{host}/a:v1")
    assert code == 1 and "UNAUTHORIZED" in err
    code, out, err = await txregistry(
        "copy", *NO_TLS, "--dest-creds", "alice:alice-pw", source, f"docker://{host}/a:v1"
    )
    assert code == 0, err
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {host: {"auth": "YWxpY2U6YWxpY2UtcHc="}}}))
    terminal, other_end = pty.openpty()
    try:
        code, out, _ = await txregistry(
            "copy",
            *NO_TLS,
            "--authfile",
            str(authfile),
            source,
            f"docker://{host}/b:v1",
            stderr=other_end,
        )
        shown = os.read(terminal, 65536).decode()
    finally:
        os.close(terminal)
        os.close(other_end)
    assert code == 0 and "4 already there" not in out
    assert shown.count("\rcopying: ") == 4 + 3  # 4 blobs, 3 manifests: one rewrite each
    assert shown.count("\n") == 1  # the line ends once, at the end


@pytest_twisted.ensureDeferred
async def test_cert_dir_with_a_client_certificate(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """``--src-cert-dir`` as skopeo reads it: ``*.crt`` CAs, ``*.cert`` + ``*.key``."""
    ca_key, key, client_key = pki.new_key("ec"), pki.new_key("ec"), pki.new_key("ec")
    ca = pki.certificate("test CA", ca_key, ca=True)
    server = pki.certificate("127.0.0.1", key, (ca_key, ca), server=True)
    mine = pki.certificate("alice", client_key, (ca_key, ca), client=True)
    certs = tmp_path / "certs.d"
    certs.mkdir()
    ca_file = pki.write(certs / "ca.crt", pki.pem_cert(ca))
    pki.write(certs / "client.cert", pki.pem_cert(mine))
    pki.write(certs / "client.key", pki.pem_key(client_key))
    cert = pki.write(tmp_path / "server.pem", pki.pem_cert(server))
    server_key = pki.write(tmp_path / "server.key", pki.pem_key(key))
    registry = await start_registry(
        {"http": {"clientcas": ca_file, "clientauth": "required"}},
        listen=f"ssl:{{port}}:interface=127.0.0.1:privateKey={server_key}:certKey={cert}",
    )
    client = make_client(
        registry.url,
        tls=TLSOptions(
            ca_file=ca_file, cert_file=certs / "client.cert", key_file=certs / "client.key"
        ),
    )
    index, _ = await push_multi(client, "tls/app", "v1")
    source = f"docker://{registry.url.removeprefix('https://')}/tls/app:v1"
    code, out, err = await txregistry(
        "copy", "--src-cert-dir", str(certs), source, f"oci:{tmp_path}/out:v1"
    )
    assert code == 0, err
    assert f"copied {images.digest(index)}" in out
    assert sorted(p.name for p in certs.iterdir()) == ["ca.crt", "client.cert", "client.key"]
    code, _, err = await txregistry("copy", source, f"oci:{tmp_path}/out2:v1")
    assert code == 1 and "certificate" in err.lower()


@pytest_twisted.ensureDeferred
async def test_a_malformed_reference_is_a_bad_command_line(
    registry: object, tmp_path: Path
) -> None:
    """An image name the registry could never accept: exit 2 and one line naming it, before
    anything is asked of the registry (no traceback, no copy attempted)."""
    host = registry.url.removeprefix("http://")  # type: ignore[attr-defined]
    cases = (
        (f"docker://{host}/a/b@sha256:abc", "'sha256:abc' is not a digest"),
        (f"docker://{host}/a/b@md5:abc", "'md5:abc' is not a digest"),
        (f"docker://{host}/UPPER/app:v", "'UPPER/app' is not a repository name"),
        (f"docker://{host}/ma/app:bad:tag", "'ma/app:bad' is not a repository name"),
        (f"docker://{host}/a/b:", "'' is not a tag"),
        (f"docker://{host}/a/b:-x", "'-x' is not a tag"),
        (f"docker://{host}/a//b:v", "'a//b' is not a repository name"),
    )
    runs = [
        Deferred.fromCoroutine(txregistry("copy", "-q", *NO_TLS, source, f"oci:{tmp_path}/x7:v"))
        for source, _ in cases
    ]
    results = await gatherResults(runs)  # side by side: each is a process start
    for (source, why), (code, out, err) in zip(cases, results, strict=True):
        assert (code, out) == (2, ""), err
        assert len(err.splitlines()) == 1 and err.startswith(f"txregistry copy: {source}: "), err
        assert why in err
    assert not (tmp_path / "x7").exists()


def _own_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is its stdin (the
    pty), where getpass asks."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest_twisted.ensureDeferred
async def test_a_user_without_a_password_is_asked_for_it(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """``--dest-creds alice`` asks for the password on the terminal, as skopeo does (an
    empty password was sent); without a terminal it is a usage error saying so."""
    source, host = await _image_and_locked_registry(start_registry, make_client, tmp_path)
    code, _, err = await txregistry(
        "copy", *NO_TLS, "--dest-creds", "alice", source, f"docker://{host}/a:v1"
    )
    assert code == 2
    assert err == (
        "txregistry copy: --dest-creds alice: no password, and no terminal to ask it on "
        "(give USER:PASSWORD)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DOCKER_CONFIG": "/nonexistent"}
    command = [sys.executable, "-m", "registry.cli", "copy", "-q", *NO_TLS]
    command += ["--dest-creds", "alice", source, f"docker://{host}/a:v1"]
    terminal, other_end = pty.openpty()
    asked = b""
    try:
        child = await deferToThread(
            subprocess.Popen,
            command,
            stdin=other_end,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=_own_terminal,
        )
        for _ in range(600):  # bounded: 60 s, waiting in a thread (the registries serve)
            if (await deferToThread(select.select, [terminal], [], [], 0.1))[0]:
                asked += os.read(terminal, 1024)
            if b"Password for alice at " in asked:
                break
        if not asked.startswith(f"Password for alice at {host}: ".encode()):
            child.kill()
            _, said = await deferToThread(child.communicate, timeout=30)
            raise AssertionError(f"asked {asked!r}; stderr {said!r}")
        os.write(terminal, b"alice-pw\n")
        out, err_bytes = await deferToThread(child.communicate, timeout=120)
    finally:
        os.close(terminal)
        os.close(other_end)
    assert child.returncode == 0, err_bytes
    assert "copied " in out.decode()
