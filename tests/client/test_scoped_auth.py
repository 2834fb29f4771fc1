"""
Credentials in an ``auth.json`` scoped to a repository or a namespace (containers-auth.json(5):
``"HOST/ns/app"``, ``"HOST/ns"``): the most specific key matching the image's host and path
is used, the host's own key otherwise.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest_twisted

from registry.client import Credentials, credentials_from_config
from tests.client.conftest import ClientFactory
from tests.client.test_copy_command import NO_TLS, _image_and_locked_registry, txregistry
from tests.e2e.conftest import Starter


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_most_specific_key_wins(tmp_path: Path) -> None:
    config = tmp_path / "auth.json"
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "reg.example:5000": _auth("host", "h"),
                    "reg.example:5000/team": _auth("team", "t"),
                    "reg.example:5000/team/app": _auth("app", "a"),
                    "docker.io/myorg": _auth("hub-org", "o"),
                    "https://index.docker.io/v1/": _auth("hub", "x"),
                }
            }
        )
    )

    def found(host: str, repository: str | None) -> Credentials | None:
        return credentials_from_config(host, config, repository)

    assert found("reg.example:5000", "team/app") == Credentials("app", "a")
    assert found("reg.example:5000", "team/app/sub") == Credentials("app", "a")
    assert found("reg.example:5000", "team/web") == Credentials("team", "t")
    assert found("reg.example:5000", "teamx/app") == Credentials("host", "h")
    assert found("reg.example:5000", None) == Credentials("host", "h")
    assert found("docker.io", "myorg/app") == Credentials("hub-org", "o")
    assert found("docker.io", "library/alpine") == Credentials("hub", "x")
    assert found("other.example", "team/app") is None


@pytest_twisted.ensureDeferred
async def test_txregistry_copy_uses_the_key_scoped_to_the_repository(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The registry takes alice only; the file has wrong credentials for the host and
    alice's for the ``ok`` namespace: a copy into ``ok/app`` succeeds, one into ``no/app``
    is refused with the host's."""
    source, host = await _image_and_locked_registry(start_registry, make_client, tmp_path)
    authfile = tmp_path / "auth.json"
    authfile.write_text(
        json.dumps(
            {"auths": {host: _auth("alice", "wrong"), f"{host}/ok": _auth("alice", "alice-pw")}}
        )
    )
    code, out, err = await txregistry(
        "copy", *NO_TLS, "-q", "--authfile", str(authfile), source, f"docker://{host}/ok/app:v1"
    )
    assert (code, err) == (0, ""), err
    assert out.startswith("copied ")
    code, out, err = await txregistry(
        "copy", *NO_TLS, "-q", "--authfile", str(authfile), source, f"docker://{host}/no/app:v1"
    )
    assert (code, out) == (1, "") and "UNAUTHORIZED" in err, err
