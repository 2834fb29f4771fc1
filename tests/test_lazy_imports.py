"""
What a registry holds in memory at rest: the modules of features its configuration does not use
are never imported (token auth, the pull-through cache, webhooks, S3, the web UI's pages, the
garbage collector).  Each one costs resident memory in every process; this pins the import
graph down so that a new top-level import cannot bring one back silently.

Each case starts the service from a configuration in a fresh interpreter (`makeService`, the
reactor, the listening port) and reads ``sys.modules`` once it is ready.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT

# Loaded only by the features that need them (registry.proxy.config and .errors are small
# and always loaded: the configuration is validated at start-up).
FEATURE_MODULES = {
    "token auth": ["registry.auth.token", "joserfc"],
    "pull-through cache": [
        "registry.proxy.routing",
        "registry.proxy.cache",
        "registry.proxy.upstream",
        "registry.proxy.service",
        # TimerService's module brings automat (the upload purge uses registry.server.periodic)
        "twisted.application.internet",
        "automat",
    ],
    "notifications": ["registry.ops.notifications.service", "registry.ops.notifications.delivery"],
    "HTTP client": ["treq"],
    "S3": ["registry.storage.s3", "botocore", "boto3"],
    "web UI pages": ["registry.ui._app", "registry.ui._pages", "registry.ui._data"],
    "garbage collector": ["registry.ops.gc"],
    # Klein's routing: only requests outside the /v2/ API (health, metrics, UI) need it.
    "routes outside /v2/": ["registry.app_routes", "klein", "werkzeug"],
    "[debug] addr listener": ["registry.handlers.debug_site"],
    "authentication": [
        "registry.auth.controllers",
        "registry.auth.htpasswd",
        "registry.auth.policy",
    ],
    "access policy file": ["tomllib"],
    # sha512 hashers, or sha256 where libcrypto cannot be loaded.
    "portable hashers": ["rehashes"],
    "spelling hints for mistakes": ["difflib"],
    # Never: registry.ops.prometheus writes the metrics; the supervisor's program is not a worker's.
    "nothing": ["prometheus_client", "registry.server.supervisor"],
}

# Run in the child: start the service, wait until it serves, optionally GET one path, and
# print the imported modules (at rest, and after that request).
CHILD = r"""
import json, os, socket, sys
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from registry.tap import Options, makeService

config, path = sys.argv[1], sys.argv[2]
options = Options()
options.parseOptions(["--config", config])
service = makeService(options)
found = {}

def get(address):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.split(b" ", 2)[1].decode()

def ready(_):
    found["rest"] = sorted(sys.modules)
    if not path:
        return None
    d = deferToThread(get, service.listeners.addresses()[0])
    def got(status):
        found["status"] = status
        found["after"] = sorted(sys.modules)
    return d.addCallback(got)

def report(result):
    print(json.dumps(found if result is None else {"error": str(result)}), flush=True)
    os._exit(0)  # the service's thread pools are not stopped: nothing to wait for

service.startService()
service.ready.addCallback(ready).addBoth(report)
reactor.run()
"""


def _start(tmp_path: Path, extra: str = "", path: str = "") -> dict[str, object]:
    """Start a registry configured by tap.cfg (plus ``extra``) in a child; what it imported."""
    defaults = (REPO_ROOT / "tap.cfg").read_text()
    defaults = defaults.replace("port = tcp:5000", "port = tcp:0:interface=127.0.0.1", 1)
    defaults = defaults.replace("./registry-data", str(tmp_path / "data"), 1)
    config = tmp_path / "registry.cfg"
    config.write_text(defaults + "\n" + extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), path],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    found: dict[str, object] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert "error" not in found, found
    return found


def _loaded(modules: object, names: list[str]) -> list[str]:
    assert isinstance(modules, list)
    return [n for n in names if n in modules]


def test_default_configuration_imports_no_unused_feature(tmp_path: Path) -> None:
    """Nothing unused at rest, nor after a ``/v2/`` request (which is not routed by Klein)."""
    found = _start(tmp_path, path="/v2/")

    assert found["status"] == "200"
    loaded = {
        feature: _loaded(found[moment], names)
        for feature, names in FEATURE_MODULES.items()
        for moment in ("rest", "after")
        if _loaded(found[moment], names)
    }
    assert loaded == {}
    # The basics are there (the check above would pass on a child that imported nothing).
    assert _loaded(found["rest"], ["registry.app", "registry.ui", "twisted.web.server"]) == [
        "registry.app",
        "registry.ui",
        "twisted.web.server",
    ]


def test_web_ui_is_imported_by_its_first_request(tmp_path: Path) -> None:
    found = _start(tmp_path, path="/ui/")

    assert _loaded(found["rest"], FEATURE_MODULES["web UI pages"]) == []
    assert found["status"] == "200"
    assert _loaded(found["after"], FEATURE_MODULES["web UI pages"]) == [
        "registry.ui._app",
        "registry.ui._pages",
        "registry.ui._data",
    ]
    # The pages do not bring the pull-through cache (and its HTTP client, TLS) along.
    cache = FEATURE_MODULES["pull-through cache"] + FEATURE_MODULES["HTTP client"]
    assert _loaded(found["after"], cache) == []


def test_klein_is_imported_by_the_first_request_outside_the_api(tmp_path: Path) -> None:
    found = _start(tmp_path, path="/health/live")

    assert _loaded(found["rest"], FEATURE_MODULES["routes outside /v2/"]) == []
    assert found["status"] == "200"
    routes = FEATURE_MODULES["routes outside /v2/"]
    assert _loaded(found["after"], routes) == routes


@pytest.mark.parametrize(
    ("extra", "feature"),
    [
        ("[proxy:hub]\nremoteurl = http://127.0.0.1:9\nprefix = hub\n", "pull-through cache"),
        ("[notifications:ci]\nurl = http://127.0.0.1:9/events\n", "notifications"),
    ],
)
def test_configured_features_are_imported(tmp_path: Path, extra: str, feature: str) -> None:
    """The lazy wiring still builds what the configuration asks for."""
    found = _start(tmp_path, extra)

    assert _loaded(found["rest"], FEATURE_MODULES[feature]) == FEATURE_MODULES[feature]
    assert _loaded(found["rest"], ["treq"]) == ["treq"]
