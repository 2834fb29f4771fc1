"""System tools driven by the interoperability tests (skopeo, registry:2)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from twisted.internet.threads import deferToThread


def require(tool: str) -> str:
    """The tool's path; skip with a reason when missing locally, fail under CI."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required under CI=true (make tools installs it)")
        pytest.skip(f"{tool} is not installed (make tools installs it)")
    return path


async def run(*command: str, limit: float = 300) -> str:
    """Run a command in a thread (the reactor keeps serving); fail with its output."""

    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=limit)

    result = await deferToThread(call)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


async def skopeo(*args: str) -> str:
    return await run(require("skopeo"), "--insecure-policy", *args)
