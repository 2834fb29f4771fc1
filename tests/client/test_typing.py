"""
The client's annotations reach users' type checkers: the package carries ``py.typed`` and
exports every type its API hands out (a script under ``mypy --strict`` imports nothing
internal).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest_twisted

from registry.client import Digest
from tests.client.conftest import ClientFactory
from tests.e2e.harness import InProcessRegistry

USER_SCRIPT = """\
from registry.client import Digest, Manifest, RegistryClient


async def pushed(client: RegistryClient) -> str:
    manifest: Manifest = await client.get_manifest("a/b", "v1")
    digest: Digest = manifest.digest
    uploaded: Digest = await client.upload_blob("a/b", b"bytes")
    return f"{digest.algorithm}:{digest.hex} {uploaded}"
"""


def test_a_user_script_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    """Run from outside the checkout, mypy finds the installed package: without ``py.typed``
    it refuses it ("missing library stubs or py.typed marker")."""
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(script),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout


@pytest_twisted.ensureDeferred
async def test_manifest_digest_is_the_exported_digest(
    registry: InProcessRegistry, make_client: ClientFactory
) -> None:
    client = make_client(registry.url)
    config = b'{"architecture": "amd64", "os": "linux"}'
    uploaded = await client.upload_blob("typed/app", config)
    body = (
        '{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
        f' "config": {{"mediaType": "application/vnd.oci.image.config.v1+json",'
        f' "digest": "{uploaded}", "size": {len(config)}}}, "layers": []}}'
    ).encode()
    await client.put_manifest("typed/app", "v1", body)
    manifest = await client.get_manifest("typed/app", "v1")
    assert isinstance(manifest.digest, Digest) and isinstance(uploaded, Digest)
    assert str(manifest.digest) == f"sha256:{manifest.digest.hex}"
    assert Digest.parse(str(manifest.digest)) == manifest.digest


def test_the_checkout_ships_py_typed() -> None:
    import registry

    assert (Path(registry.__file__).parent / "py.typed").is_file()
    # Installed with the package (the setuptools package data).
    assert (
        '"registry" = ["py.typed"]'
        in (Path(registry.__file__).parent.parent / "pyproject.toml").read_text()
    )
