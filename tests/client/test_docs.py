"""
docs/client.md's examples run as written: every ``python`` block as a script (in order, in one
directory, ``REGISTRY`` naming a registry on loopback), every ``$ .venv/bin/txregistry`` line of the
``console`` blocks as a command (``localhost:5000`` replaced by that registry's address).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import Starter
from tests.e2e.harness import REPO_ROOT

DOC = REPO_ROOT / "docs" / "client.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), re.S)


async def run(
    command: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )

    return await deferToThread(call)


@pytest_twisted.ensureDeferred
async def test_the_examples_run(start_registry: Starter, tmp_path: Path) -> None:
    registry = await start_registry({"storage": {"delete_enabled": "true"}})
    host = registry.url.removeprefix("http://")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "REGISTRY": registry.url,
        "DOCKER_CONFIG": str(tmp_path / "docker"),
        "REGISTRY_AUTH_FILE": "",
    }
    python = blocks("python")
    assert len(python) >= 5
    for number, code in enumerate(python):
        script = tmp_path / f"example{number}.py"
        script.write_text(code)
        result = await run([sys.executable, str(script)], tmp_path, env)
        assert result.returncode == 0, f"example {number}:\n{code}\n{result.stderr}"
    assert (tmp_path / "layer.bin").stat().st_size == 1024 * 1024
    assert (tmp_path / "backup" / "index.json").is_file()
    commands = [
        line.removeprefix("$ ")
        for block in blocks("console")
        for line in block.splitlines()
        if line.startswith("$ .venv/bin/txregistry ")
    ]
    assert len(commands) >= 3
    for line in commands:
        argv = shlex.split(line.replace("localhost:5000", host))
        result = await run([sys.executable, "-m", "registry.cli", *argv[1:]], tmp_path, env)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert result.stdout.startswith("copied sha256:")
    assert (tmp_path / "backup-dir" / "index.json").is_file()
