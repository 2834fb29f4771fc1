"""
Fixtures for the UI tests: one registry per module in a child process (``twistd registry``),
with htpasswd, a policy and deletes enabled, filled with images, an index and referrers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import bcrypt
import pytest

from tests.e2e.harness import REPO_ROOT, RegistryProcess, write_config
from tests.ui import content

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
# alice may do everything; bob may pull team/** only (and never delete).
POLICY = """
[[rule]]
users = ["alice"]
repositories = ["**"]
actions = ["*"]

[[rule]]
users = ["bob"]
repositories = ["team/**"]
actions = ["pull"]
"""


@attrs.define
class Filled:
    registry: RegistryProcess
    image: content.Image
    index: str
    platforms: list[content.Image]
    sbom: str
    signature: str
    db: content.Image

    @property
    def url(self) -> str:
        return self.registry.url

    def client(self, user: str | None) -> content.Client:
        auth = content.basic(user, PASSWORDS[user]) if user else None
        return content.Client(self.url, auth)


def auth_sections(folder: Path, policy: str = POLICY) -> dict[str, dict[str, str]]:
    lines = [
        f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
        for user, pw in PASSWORDS.items()
    ]
    (folder / "htpasswd").write_text("\n".join(lines) + "\n")
    (folder / "policy.toml").write_text(policy)
    return {
        "auth": {"policy": str(folder / "policy.toml")},
        "auth.htpasswd": {"path": str(folder / "htpasswd"), "realm": "ui-test"},
        "storage": {"delete_enabled": "true"},
    }


SIGNATURE_ANNOTATIONS = {
    "org.opencontainers.image.created": "2026-01-02T00:00:00Z",
    "dev.example.signer": "release <bot>\u202e",
}


def fill(registry: RegistryProcess) -> Filled:
    alice = content.Client(registry.url, content.basic("alice", PASSWORDS["alice"]))
    image = content.push_image(alice, "team/app", "v1")
    index, platforms = content.push_index(alice, "team/app", "multi")
    sbom = content.push_referrer(alice, "team/app", image.digest, content.SBOM_TYPE, "sbom")
    signature = content.push_referrer(
        alice, "team/app", image.digest, content.SIGNATURE_TYPE, "sig", SIGNATURE_ANNOTATIONS
    )
    content.push_image(alice, "team/lib", "1.0")
    db = content.push_image(alice, "secret/db", "latest")
    return Filled(registry, image, index, platforms, sbom, signature, db)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    folder = tmp_path_factory.mktemp("ui")
    # One process: the storage page reports that process's memory (the tag dates read).
    registry = RegistryProcess(folder, {**auth_sections(folder), "http": {"workers": "1"}})
    registry.start()
    try:
        yield fill(registry)
        log = registry.log_text()
        assert "Traceback" not in log, log[-3000:]
        assert not re.search(r"status=5\d\d", log), log[-3000:]
    finally:
        registry.stop()


def run_gc(filled: Filled) -> None:
    """``txregistry gc --dry-run`` over the registry's data, as an operator runs it."""
    config = write_config(
        filled.registry.workdir / "gc.cfg",
        {"storage": {"rootdirectory": str(filled.registry.workdir / "data")}},
    )
    result = subprocess.run(
        [sys.executable, "-m", "registry.cli", "gc", "--config", str(config), "--dry-run"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
