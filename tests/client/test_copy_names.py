"""
``txregistry copy``'s command line: image names as skopeo reads them, and option values.  A
value no copy could run with (a negative or non-finite timeout, a negative retry count, a port
out of range, a host with a query string, a user name or password in an image name) is a bad
command line: exit 2 with one line, before anything is asked of a registry, and a password is
never repeated.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from registry.client import Credentials, RegistryClient
from registry.client.copy import RegistryImage
from registry.client.errors import BadResponse, without_userinfo
from registry.copy_command import ImageName, UsageError, add_parser, open_endpoint, parse_image
from tests.client import images
from tests.client.conftest import ClientFactory
from tests.client.test_copy_command import txregistry
from tests.e2e.harness import InProcessRegistry

BAD_OPTIONS = [
    (["--timeout", "-1"], "--timeout must be a number of seconds above 0, not -1.0"),
    (["--timeout", "nan"], "--timeout must be a number of seconds above 0, not nan"),
    (["--timeout", "inf"], "--timeout must be a number of seconds above 0, not inf"),
    (["--timeout", "0"], "--timeout must be a number of seconds above 0, not 0.0"),
    (["--retry-times", "-1"], "--retry-times must be 0 or more, not -1"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
@pytest_twisted.ensureDeferred
async def test_an_option_value_no_copy_runs_with_is_a_bad_command_line(
    options: list[str], message: str
) -> None:
    code, out, err = await txregistry(
        "copy", *options, "docker://127.0.0.1:27099/demo/app:v1", "oci:/nonexistent/out"
    )
    assert (code, out, err) == (2, "", f"txregistry copy: {message}\n")


BAD_NAMES = [
    ("docker://127.0.0.1:99999/demo/app:v1", "port 99999 is out of range (1 to 65535)"),
    ("docker://127.0.0.1:0/demo/app:v1", "port 0 is out of range (1 to 65535)"),
    (
        "docker://127.0.0.1:25000?x=/demo/app:v1",
        "'127.0.0.1:25000?x=' is not a registry host (HOST[:PORT], [IPv6][:PORT])",
    ),
    ("docker://[zz]:5000/demo/app:v1", "'[zz]:5000' is not a registry host (HOST[:PORT], [IPv6][:PORT])"),
    ("docker://[1::2::3]:5000/demo/app:v1", "'[1::2::3]' is not an IPv6 address"),
    ("docker://reg.example/demo/app?x=1", "'demo/app?x=1' is not a repository name"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "message"), BAD_NAMES)
@pytest_twisted.ensureDeferred
async def test_a_host_no_registry_has_is_a_bad_command_line(name: str, message: str) -> None:
    code, out, err = await txregistry("copy", name, "oci:/nonexistent/out")
    assert (code, out) == (2, ""), err
    assert err.startswith(f"txregistry copy: {name}: {message}"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "name",
    [
        "docker://alice:s3cret@127.0.0.1:25001/demo/app:v1",
        "docker://alice:s3cret@127.0.0.1:25001",
        "docker://alice:s3cret@registry.example/app",
        "docker://alice@registry.example/app",
    ],
)
@pytest_twisted.ensureDeferred
async def test_credentials_in_an_image_name_are_refused_never_shown(name: str) -> None:
    """A password in an image name would show in process lists and logs: refused (exit 2),
    pointing to the options that take credentials, with neither it nor the user repeated."""
    code, out, err = await txregistry("copy", "oci:/nonexistent/in", name)
    assert (code, out) == (2, "")
    assert err == (
        "txregistry copy: the destination image name holds a user name or password "
        "(USER:PASSWORD@HOST); image names take none: give them with --dest-creds or "
        "--authfile\n"
    )
    assert "s3cret" not in err and "alice" not in err
    code, out, err = await txregistry("copy", name, "oci:/nonexistent/out")
    assert code == 2 and "--src-creds or --authfile" in err and "s3cret" not in err


def test_a_digest_after_an_at_sign_is_no_user_name() -> None:
    digest = "sha256:" + "a" * 64
    assert parse_image(f"docker://reg.example:5000/app@{digest}") == ImageName(
        "docker", "reg.example:5000", "app", digest
    )
    with pytest.raises(UsageError, match="holds a user name or password"):
        parse_image("docker://user:pw@reg.example:5000")


def test_the_client_never_shows_a_urls_userinfo() -> None:
    """The library refuses a registry URL with userinfo without repeating it, and takes
    userinfo out of every URL in an error message."""
    with pytest.raises(ValueError) as info:
        RegistryClient(None, "http://alice:s3cret@127.0.0.1:5000", credentials=None)
    assert "s3cret" not in str(info.value) and "alice" not in str(info.value)
    assert str(info.value) == (
        "the registry URL holds a user name or password (USER:PASSWORD@HOST): "
        "pass credentials= instead"
    )
    error = BadResponse(None, "redirect to 'https://u:pw@cdn.example/x?y=a@b': refused")
    assert str(error) == "redirect to 'https://cdn.example/x?y=a@b': refused"
    assert without_userinfo("http://h/p@q and HTTPS://a:b@c:1/") == "http://h/p@q and HTTPS://c:1/"
    assert repr(Credentials("alice", "s3cret")) == "Credentials(username='alice', password=***)"


HUB_NAMES = [
    ("docker://myorg/app:v1", "myorg/app", "v1"),
    ("docker://library/alpine:3", "library/alpine", "3"),
    ("docker://alpine", "library/alpine", None),
    ("docker://alpine:3.20", "library/alpine", "3.20"),
    (f"docker://alpine@sha256:{'a' * 64}", "library/alpine", f"sha256:{'a' * 64}"),
    ("docker://docker.io/nginx:1", "library/nginx", "1"),
    ("docker://index.docker.io/myorg/app", "myorg/app", None),
    ("docker://a/b/c:v", "a/b/c", "v"),
]


@pytest.mark.parametrize(("text", "name", "reference"), HUB_NAMES)
def test_a_name_without_a_host_is_docker_hubs(text: str, name: str, reference: str | None) -> None:
    """As skopeo reads it: a first component without ``.`` or ``:`` that is not
    ``localhost`` is part of a Docker Hub name; one component alone is an official image."""
    image = parse_image(text)
    assert image == ImageName("docker", "docker.io", name, reference)
    assert image.api_host == "registry-1.docker.io"


HOST_NAMES = [
    ("docker://localhost:5000/x", "localhost:5000", "x"),
    ("docker://localhost/x:v", "localhost", "x"),
    ("docker://127.0.0.1:5000/x", "127.0.0.1:5000", "x"),
    ("docker://[::1]:5000/a/b", "[::1]:5000", "a/b"),
    ("docker://reg.example/app", "reg.example", "app"),
    ("docker://registry-1.docker.io/library/alpine", "registry-1.docker.io", "library/alpine"),
]


@pytest.mark.parametrize(("text", "host", "name"), HOST_NAMES)
def test_a_first_component_with_a_dot_or_a_port_or_localhost_is_the_host(
    text: str, host: str, name: str
) -> None:
    image = parse_image(text)
    assert (image.location, image.api_host, image.name) == (host, host, name)


@pytest_twisted.ensureDeferred
async def test_a_docker_hub_name_asks_its_api_host_with_its_stored_credentials(
    tmp_path: Path,
) -> None:
    """The client for ``docker://myorg/app`` talks to registry-1.docker.io over https, with
    what ``docker login`` stored for Docker Hub (nothing is sent: no network here)."""
    authfile = tmp_path / "config.json"
    secret = base64.b64encode(b"hubuser:hubpw").decode()
    authfile.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": secret}}}))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["copy", "--authfile", str(authfile), "docker://myorg/app:v1", "oci:x"]
    )
    endpoint = await open_endpoint(reactor, parse_image(args.source), args, "src", False)
    assert isinstance(endpoint, RegistryImage)
    try:
        assert endpoint.client.url == "https://registry-1.docker.io"
        assert endpoint.name == "myorg/app" and endpoint.reference == "v1"
        assert endpoint.client.session.credentials == Credentials("hubuser", "hubpw")
    finally:
        await endpoint.client.close()


@pytest_twisted.ensureDeferred
async def test_localhost_and_an_address_with_a_port_still_go_to_that_host(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    body, blobs = images.image("amd64", [b"layer"])
    client = make_client(registry.url)
    for data in blobs.values():
        await client.upload_blob("x", data)
    await client.put_manifest("x", "v1", body)
    port = registry.url.rpartition(":")[2]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        target = tmp_path / host.replace(":", "-")
        code, out, err = await txregistry(
            "copy",
            "--tls-verify=false",
            "--timeout=2",
            "-q",
            f"docker://{host}/x:v1",
            f"oci:{target}",
        )
        assert (code, err) == (0, ""), err
        assert out.startswith(f"copied {images.digest(body)}: 1 manifests, 2 blobs")


@pytest_twisted.ensureDeferred
async def test_a_manifest_asked_by_digest_is_named_name_at_digest(
    registry: InProcessRegistry, tmp_path: Path
) -> None:
    """Errors write a manifest reference as image references are written: ``name:tag``,
    ``name@sha256:...`` (never ``name:sha256:...``)."""
    digest = "sha256:" + "a" * 64
    host = registry.url.removeprefix("http://")
    code, out, err = await txregistry(
        "copy", "--tls-verify=false", "-q", f"docker://{host}/no/such@{digest}", f"oci:{tmp_path}/o"
    )
    assert (code, out) == (1, "")
    assert err.startswith(f"txregistry copy: failed: registry 404: manifest no/such@{digest}: "), (
        err
    )
    code, out, err = await txregistry(
        "copy", "--tls-verify=false", "-q", f"docker://{host}/no/such:v9", f"oci:{tmp_path}/o"
    )
    assert err.startswith("txregistry copy: failed: registry 404: manifest no/such:v9: "), err


@pytest_twisted.ensureDeferred
async def test_tls_to_a_plain_http_registry_says_which_option_uses_http(
    registry: InProcessRegistry, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Without --tls-verify=false a plain http registry fails the TLS handshake ("wrong
    version number"): the line adds the option of that side that makes the copy use http."""
    body, blobs = images.image("amd64", [b"layer"])
    client = make_client(registry.url)
    for data in blobs.values():
        await client.upload_blob("x", data)
    await client.put_manifest("x", "v1", body)
    host = registry.url.removeprefix("http://")
    code, out, err = await txregistry("copy", "-q", f"docker://{host}/x:v1", f"oci:{tmp_path}/o")
    assert (code, out) == (1, "")
    assert "wrong version number" in err
    assert err.endswith(
        f" (the registry at https://{host} answers in plain http, not TLS: "
        "--src-tls-verify=false or --tls-verify=false uses http with it)\n"
    ), err
    code, _, err = await txregistry(
        "copy", "-q", "--src-tls-verify=false", f"docker://{host}/x:v1", f"oci:{tmp_path}/o:v1"
    )
    assert code == 0, err
    code, _, err = await txregistry("copy", "-q", f"oci:{tmp_path}/o:v1", f"docker://{host}/y:v1")
    assert code == 1
    assert err.endswith(
        f" (the registry at https://{host} answers in plain http, not TLS: "
        "--dest-tls-verify=false or --tls-verify=false uses http with it)\n"
    ), err
