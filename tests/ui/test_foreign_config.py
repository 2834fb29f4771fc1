"""
An image config is shown through a repository only when that repository links it, as the API
serves blobs: a manifest may name any digest (sparse manifests are allowed with
``[validation] blobs_required = false``, and a cache may hold a manifest before its config),
and a config's environment, labels and history must not show through a repository whose
viewer may not pull the image it belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import RegistryProcess
from tests.ui import content
from tests.ui.conftest import PASSWORDS, auth_sections
from tests.ui.conftest import POLICY as UI_POLICY

# The UI tests' policy, where bob may push team/** too.
POLICY = UI_POLICY.replace('actions = ["pull"]', 'actions = ["pull", "push"]')
assert POLICY != UI_POLICY
SECRET = "DB_PASSWORD=only-alice-may-read-this"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    sections = {
        **auth_sections(tmp_path, POLICY),
        "validation": {"blobs_required": "false"},
        "http": {"workers": "1"},
    }
    process = RegistryProcess(tmp_path, sections)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _manifest(config_digest: str, config_size: int, layer_digest: str, size: int) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": content.OCI_MANIFEST,
        "config": {"mediaType": content.OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": content.OCI_LAYER, "digest": layer_digest, "size": size}],
    }


def test_a_manifest_naming_another_repositorys_config_does_not_show_it(
    registry: RegistryProcess,
) -> None:
    alice = content.Client(registry.url, content.basic("alice", PASSWORDS["alice"]))
    bob = content.Client(registry.url, content.basic("bob", PASSWORDS["bob"]))
    config = json.dumps(
        {
            "architecture": "arm64",
            "os": "linux",
            "config": {"Env": [SECRET]},
            "history": [{"created_by": "RUN echo only-alice-history"}],
        }
    ).encode()
    layer = content.layer("secret")
    config_digest = alice.push_blob("secret/db", config)
    layer_digest = alice.push_blob("secret/db", layer)
    document = _manifest(config_digest, len(config), layer_digest, len(layer))
    alice.push_manifest("secret/db", "latest", document)

    # bob knows the config's digest (an image ID, as CI logs print them) and names it.
    status, _, _ = bob.request("GET", f"/v2/team/x/blobs/{config_digest}")
    assert status == 404
    bob.push_manifest("team/x", "leak", document)

    for path in ("/ui/r/team/x/-/manifest/leak", f"/ui/r/team/x/-/layer/{layer_digest}"):
        query = "?manifest=" + content.sha256(json.dumps(document).encode())
        status, _, body = bob.request("GET", path + (query if "/layer/" in path else ""))
        assert status in (200, 404), body
        page = body.decode()
        assert "only-alice" not in page, path
    status, _, body = bob.request("GET", "/ui/r/team/x")
    assert status == 200, body
    assert "linux/arm64" not in body.decode()

    # The same page of alice's own repository shows them: the check above can fail.
    status, _, body = alice.request("GET", "/ui/r/secret/db/-/manifest/latest")
    assert status == 200, body
    assert SECRET in body.decode() and "only-alice-history" in body.decode()
    status, _, body = alice.request("GET", "/ui/r/secret/db")
    assert "linux/arm64" in body.decode()


def test_a_refused_request_names_its_caller_in_the_access_log(registry: RegistryProcess) -> None:
    """bob is known, only not granted: his 403s (API and UI) are his in the access log."""
    bob = content.Client(registry.url, content.basic("bob", PASSWORDS["bob"]))
    for path in ("/v2/secret/db/tags/list", "/ui/r/secret/db"):
        status, _, body = bob.request("GET", path)
        assert status == 403, body
        lines = [line for line in registry.log_text().splitlines() if f"path={path} " in line]
        assert len(lines) == 1, lines
        assert "status=403" in lines[0] and " user=bob " in lines[0], lines[0]


def test_an_error_page_says_who_is_signed_in(registry: RegistryProcess) -> None:
    bob = content.Client(registry.url, content.basic("bob", PASSWORDS["bob"]))
    for path, status in (("/ui/r/secret/db", 403), ("/ui/r/team/none", 404)):
        answered, _, body = bob.request("GET", path)
        assert answered == status, body
        assert "Signed in as bob" in body.decode(), path
        assert "Anonymous" not in body.decode(), path
