"""A ``twistd -n registry`` child whose log is read as it runs, for start-up and stop tests."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.e2e.harness import LISTENING, REPO_ROOT, twistd_command


def child_env(extra: Mapping[str, str] | None = None, pythonpath: bool = True) -> dict[str, str]:
    """The test's environment without REGISTRY_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra or {})
    return env


class Child:
    """A running process whose stdout lines are collected by a thread."""

    def __init__(
        self, command: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env) if env is not None else child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        """The first log line matching ``pattern``; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = pattern.search(line)
            if match:
                return match
        raise AssertionError(f"no {pattern.pattern!r} in the log: {''.join(self.output)[-3000:]}")

    def wait_listening(self, timeout: float = 60) -> int:
        """The port the registry announced (after binding and probing the storage)."""
        return int(self.wait_for(LISTENING, timeout)["port"])

    def wait_for_file(self, path: Path, text: str, timeout: float = 60) -> str:
        """``path``'s content once it holds ``text`` (a ``--logfile``); fails if the process
        exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = path.read_text() if path.exists() else ""
            if text in content:
                return content
            assert self.process.poll() is None, content[-2000:]
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in {path}")

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)


def start_registry(workdir: Path, *arguments: str, env: Mapping[str, str] | None = None) -> Child:
    """``twistd -n registry ARGUMENTS`` on this interpreter, in ``workdir``."""
    return Child(twistd_command(*arguments), workdir, env=env)


def start_tls_registry(
    workdir: Path, http: Mapping[str, str], cert_pem: bytes, key_pem: bytes
) -> tuple[Child, str, str, str]:
    """
    ``twistd -n registry`` on an ``ssl:`` port of its own choosing, with this certificate and
    key written to ``workdir`` and these ``[http]`` keys: (child, the port's description,
    certificate path, key path).
    """
    from tests.auth import pki
    from tests.e2e.harness import write_config

    cert_path = pki.write(workdir / "server.pem", cert_pem)
    key_path = pki.write(workdir / "server.key", key_pem)
    config = write_config(workdir / "r.cfg", {"http": dict(http)})
    description = f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    child = start_registry(
        workdir, "--config", str(config), "--port", description,
        "--storage", str(workdir / "data"),
    )  # fmt: skip
    return child, description, cert_path, key_path
