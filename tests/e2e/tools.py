"""System tools driven by the interoperability tests (skopeo, registry:2)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from twisted.internet.threads import deferToThread

from tests.e2e.harness import free_port, wait_listening


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


class Registry2Process:
    """registry:2 (Debian's docker-registry, v2.8) on loopback over a given storage root."""

    CONFIG = (
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
        "  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )

    # The same, keeping its data in S3 (``S3_STORAGE.format(...)`` for ``storage``).
    S3_STORAGE = (
        "  s3:\n    accesskey: {access_key}\n    secretkey: {secret_key}\n"
        "    region: {region}\n    regionendpoint: {endpoint}\n    forcepathstyle: true\n"
        "    bucket: {bucket}\n    rootdirectory: {root}\n    secure: false\n"
        "    v4auth: true\n    chunksize: {chunksize}\n"
    )

    # Bearer tokens from a token service (``TOKEN_AUTH.format(...)`` for ``auth``).
    TOKEN_AUTH = (
        "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n"
        "    rootcertbundle: {bundle}\n"
    )

    def __init__(
        self,
        workdir: Path,
        root: Path | None = None,
        storage: str | None = None,
        auth: str = "",
    ) -> None:
        """``root``: a filesystem storage root; or ``storage``: the lines of another driver's
        section under ``storage:`` (see `S3_STORAGE`); ``auth``: an ``auth:`` section."""
        self.workdir = workdir
        self.root = root
        self.storage = storage
        self.auth = auth
        # registry:2 (third-party) is given its address in its config file: the port is
        # probed up front rather than read back from its log.
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = require("docker-registry")
        config = self.workdir / f"registry2-{self.port}.yml"
        text = self.CONFIG.format(root=self.root, port=self.port) + self.auth
        if self.storage is not None:
            text = text.replace(f"  filesystem:\n    rootdirectory: {self.root}\n", self.storage)
        config.write_text(text)
        log = open(self.workdir / "registry2.log", "ab")  # noqa: SIM115 - owned by the child
        # registry:2's AWS SDK panics reading a CA bundle named by AWS_CA_BUNDLE that it cannot
        # parse as it wants (this machine's system bundle); it needs none over plain HTTP.
        env = {name: value for name, value in os.environ.items() if name != "AWS_CA_BUNDLE"}
        self.process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=log, env=env
        )
        log.close()
        wait_listening(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None
