"""
The README's commands work as written once the venv is set up (``make venv``): its
``.venv/bin/twistd -n registry ...`` line and ``make run``'s command, run with this venv's
``twistd`` and no PYTHONPATH, find the plugin, listen and serve ``/v2/``.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT
from tests.server.proc import Child, child_env

VENV_BIN = Path(sys.executable).parent
LOOPBACK_PORT = "tcp:0:interface=127.0.0.1"


def readme_twistd_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    return re.findall(r"^(\.venv/bin/twistd -n registry .*)$", text, flags=re.MULTILINE)


@pytest.fixture
def venv_of_this_checkout(tmp_path: Path) -> None:
    """
    This venv's ``twistd`` serves the checkout its .pth names: this one after ``make venv``
    here (as in CI), another one when the venv was made in another checkout.
    """
    served = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import registry; print(registry.__file__)"],
        cwd=tmp_path,
        env=child_env(pythonpath=False),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    if not served.startswith(str(REPO_ROOT) + os.sep):
        reason = f"this venv serves {served or 'no checkout'}, not {REPO_ROOT}"
        if os.environ.get("CI") == "true":
            raise AssertionError(reason)
        pytest.skip(reason)


def check_serves(child: Child) -> None:
    try:
        port = child.wait_listening()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/v2/")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Docker-Distribution-API-Version") == "registry/2.0"
        assert response.read() == b"{}"
        connection.close()
    finally:
        child.stop()
    assert "Traceback" not in "".join(child.output)


def test_readme_has_the_command() -> None:
    assert ".venv/bin/twistd -n registry --port tcp:5000 --storage /srv/registry" in (
        readme_twistd_commands()
    )


@pytest.mark.usefixtures("venv_of_this_checkout")
def test_readme_twistd_command_without_pythonpath(tmp_path: Path) -> None:
    command = ".venv/bin/twistd -n registry --port tcp:5000 --storage /srv/registry"
    assert command in readme_twistd_commands()
    arguments = shlex.split(command)
    arguments[0] = str(VENV_BIN / "twistd")
    arguments[arguments.index("tcp:5000")] = LOOPBACK_PORT
    arguments[arguments.index("/srv/registry")] = str(tmp_path / "data")
    arguments[2:2] = ["--pidfile="]  # the README's form writes twistd.pid in the cwd
    child = Child(arguments, tmp_path, env=child_env(pythonpath=False))
    check_serves(child)
    assert (tmp_path / "data" / "docker" / "registry" / "v2").is_dir()


@pytest.mark.usefixtures("venv_of_this_checkout")
def test_make_run_command_without_pythonpath(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("make is not installed")
        pytest.skip("make is not installed")
    stamp = tmp_path / "stamp"
    stamp.touch()
    # What `make run` runs, with this venv in place of the checkout's .venv.
    printed = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", f"BIN={VENV_BIN}", f"STAMP={stamp}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert printed.startswith(f"{VENV_BIN}/twistd "), printed
    assert "PYTHONPATH" not in printed
    environment = child_env(
        {
            "REGISTRY_HTTP_PORT": LOOPBACK_PORT,
            "REGISTRY_STORAGE_ROOTDIRECTORY": str(tmp_path / "data"),
        },
        pythonpath=False,
    )
    child = Child(shlex.split(printed), REPO_ROOT, env=environment)
    check_serves(child)
    assert (tmp_path / "data" / "docker" / "registry" / "v2").is_dir()
