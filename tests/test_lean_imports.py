"""
What each process of a ``twistd registry`` tree holds at rest (`registry.lean_imports`, the
split between `registry.tap`, `registry.server.supervisor` and `registry.server.build`): the
supervisor of ``[http] workers`` loads no web stack, storage or metrics library, and no process
loads pyOpenSSL, cryptography or h2 unless its configuration uses them; the supervisor loads
no Twisted at all (`registry.server.handoff`).  Each of these costs
resident memory in every process; this pins the import graph so that a new top-level import
cannot bring one back silently.

The tree runs as it does in production (twistd, a supervisor, workers it starts); a
``sitecustomize`` module on the children's path writes each process's ``sys.modules`` to a
file when it exits, which it does cleanly on SIGTERM.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import ssl
from pathlib import Path

import attrs
import pytest

from registry.config import Config, HttpConfig, StorageConfig, TokenConfig
from registry.lean_imports import unused, uses_http_client
from tests.auth import pki
from tests.e2e.harness import REPO_ROOT, write_config
from tests.server.proc import child_env, start_registry

# pyOpenSSL, and the standard library's ssl (a worker keeps it out before importing Twisted).
TLS = ["OpenSSL", "cryptography", "ssl", "_ssl"]
HTTP2 = ["h2", "hpack", "hyperframe"]
# What only a serving process needs.
WEB_STACK = [
    "twisted.web.server",
    "registry.app",
    "registry.storage.filesystem",
    "registry.server.build",
]
# Klein's routing, loaded by a worker at its first request outside the /v2/ API.
ROUTES = ["klein", "werkzeug", "registry.app_routes"]
# What a worker of the default configuration never loads: a metrics library (it has its own,
# registry.ops.prometheus), the supervisor's program, automat (TimerService's module), the
# access controllers, parsers and hashers the configuration does not use.
WORKER_NEVER = [
    "prometheus_client",
    "registry.server.supervisor",
    "twisted.application.internet",
    "automat",
    "registry.auth.controllers",
    "tomllib",
    "rehashes",
    "registry.handlers.debug_site",
    # Twisted's HTTP client (a filesystem registry is no HTTP client: registry.lean_imports).
    "twisted.web.client",
    "twisted.web._newclient",
    # What Twisted imports for what a worker never does, loaded at their first use only: the
    # debugger (twistd --debug), Perspective Broker's decimals, terminals.
    "bdb",
    "_decimal",
    "tty",
]

# What twistd's plugin search imports (trial's interfaces bring unittest).
OTHER_PLUGINS = ["twisted.plugins.twisted_web", "twisted.plugins.twisted_conch", "unittest"]
# What the supervisor, a standard-library program, never imports.
SUPERVISOR_NEVER = {"twisted", "attr", "attrs", "zope", "prometheus_client", "asyncio", "ssl"}

DUMP = """
import atexit, json, os, sys

def _dump():
    path = os.path.join(os.environ["MODULE_DUMP"], f"{os.getpid()}.json")
    with open(path, "w") as out:
        json.dump({
            "worker": "TXREGISTRY_WORKER" in os.environ,
            "modules": sorted(k for k, v in sys.modules.items() if v is not None),
        }, out)

atexit.register(_dump)
"""
LOOPBACK = "tcp:0:interface=127.0.0.1"
SERVING = re.compile(r"txregistry listening on .*\((?P<host>[0-9.]+):(?P<port>\d+)\).* 2 workers")


def _tree_modules(
    tmp_path: Path, http: dict[str, str], check: object = None, arguments: tuple[str, ...] = ()
) -> list[dict]:
    """
    Run a 2-worker tree configured with ``[http]`` ``http`` and more command-line
    ``arguments``; each process's modules.
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DUMP)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "2", **http}})
    env = child_env({"PYTHONPATH": f"{site}:{REPO_ROOT}", "MODULE_DUMP": str(dumps)})
    child = start_registry(
        tmp_path, "--config", str(config), "--storage", str(tmp_path / "data"), *arguments, env=env
    )
    try:
        port = int(child.wait_for(SERVING)["port"])
        if callable(check):
            check(port)
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(timeout=60) == 0
    finally:
        child.stop()
    found = [json.loads(path.read_text()) for path in sorted(dumps.glob("*.json"))]
    assert sorted(p["worker"] for p in found) == [False, True, True], found
    return found


def _present(modules: list[str], names: list[str]) -> list[str]:
    return [name for name in names if name in modules]


def test_default_tree_keeps_tls_http2_and_the_web_stack_out_of_the_supervisor(
    tmp_path: Path,
) -> None:
    scraped = []

    def scrape(port: int) -> None:
        """The supervisor merges the workers' metrics without a metrics library."""
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        scraped.append((response.status, response.read().decode()))
        connection.close()

    processes = _tree_modules(tmp_path, {"port": LOOPBACK}, scrape)

    [(status, text)] = scraped
    assert status == 200, text
    assert "txregistry_workers_scraped 2.0" in text.splitlines()
    supervisor = next(p["modules"] for p in processes if not p["worker"])
    assert _present(supervisor, TLS + HTTP2 + WEB_STACK + ROUTES) == []
    # The supervisor runs on the standard library: no Twisted, attrs or zope at all.
    heavy = [m for m in supervisor if m.split(".")[0] in SUPERVISOR_NEVER]
    assert heavy == []
    assert "registry.server.supervisor" in supervisor  # it did run
    workers = [p["modules"] for p in processes if p["worker"]]
    # One connection, to one worker: that one routed /metrics through Klein, the other
    # served nothing outside the API and never loaded it.
    assert sorted(_present(worker, ROUTES) for worker in workers) == [[], ROUTES]
    unrouted = next(worker for worker in workers if not _present(worker, ROUTES))
    assert "difflib" not in unrouted  # werkzeug's routing imports it; nothing else at rest
    for worker in workers:
        assert _present(worker, TLS + HTTP2) == []
        assert _present(worker, WORKER_NEVER) == []
        assert _present(worker, WEB_STACK) == WEB_STACK
        # Workers start without twistd's plugin search (registry.server.worker_twistd).
        assert _present(worker, OTHER_PLUGINS) == []
        assert "bcrypt" not in worker  # no htpasswd file configured
        assert "twisted.plugins.registry_plugin" in worker


def test_tls_and_http2_load_where_configured(tmp_path: Path) -> None:
    """
    An ``ssl:`` listener with HTTP/2: the workers load both and serve TLS as before.  The
    listener is on the command line (``--port``), which workers do not get: each counts the
    listeners its supervisor hands it (`registry.lean_imports.inherited_listeners`).
    """
    key = pki.new_key("ec")
    cert = pki.certificate("127.0.0.1", key, server=True)
    key_file = pki.write(tmp_path / "key.pem", pki.pem_key(key))
    cert_file = pki.write(tmp_path / "cert.pem", pki.pem_cert(cert))
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key_file}:certKey={cert_file}"
    statuses = []

    def get(port: int) -> None:
        context = ssl.create_default_context(cafile=cert_file)
        context.check_hostname = False
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        connection.request("GET", "/v2/")
        statuses.append(connection.getresponse().status)
        connection.close()

    processes = _tree_modules(tmp_path, {"http2": "true"}, get, ("--port", listen))

    assert statuses == [200]
    for worker in (p["modules"] for p in processes if p["worker"]):
        assert _present(worker, TLS + HTTP2) == TLS + HTTP2


def _config(**sections: object) -> Config:
    return attrs.evolve(Config(), **sections)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "kept_out"),
    [
        (_config(), ("OpenSSL", "ssl", "h2")),
        (_config(http=HttpConfig(port=("tcp:5000", "ssl:5443:privateKey=k.pem"))), ("h2",)),
        (_config(http=HttpConfig(http2=True)), ("OpenSSL", "ssl")),
        (_config(http=HttpConfig(clientcas="ca.pem")), ("h2",)),
        (_config(auth_token=TokenConfig(realm="https://auth.example/token")), ("h2",)),
        (_config(storage=StorageConfig(driver="s3")), ("h2",)),
        (_config(storage=StorageConfig(driver="s3", regionendpoint="minio:9000")), ("h2",)),
        (
            _config(storage=StorageConfig(driver="s3", regionendpoint="HTTPS://s3.example")),
            ("h2",),
        ),
        (
            _config(storage=StorageConfig(driver="s3", regionendpoint="http://127.0.0.1:8333")),
            ("OpenSSL", "ssl", "h2"),
        ),
        (
            _config(storage=StorageConfig(driver="s3", regionendpoint="minio:9000", secure=False)),
            ("OpenSSL", "ssl", "h2"),
        ),
        (_config(extra={"proxy:hub": {"remoteurl": "https://registry-1.docker.io"}}), ()),
        (_config(extra={"notifications:ci": {"url": "https://ci.example/events"}}), ()),
        (_config(extra={"sync:mirror": {}}), ()),
    ],
)
def test_only_what_nothing_can_reach_is_kept_out(config: Config, kept_out: tuple[str, ...]) -> None:
    assert unused(config) == kept_out


def test_a_worker_counts_the_listeners_it_inherits() -> None:
    """A TLS listener handed over by the supervisor (``--port ssl:...`` on its command line,
    which workers do not see) keeps TLS in, as one in the configuration does."""
    assert unused(Config(), ["tcp:5000"]) == ("OpenSSL", "ssl", "h2")
    assert unused(Config(), ["tcp:5000", "ssl:5443:privateKey=k.pem"]) == ("h2",)


@pytest.mark.parametrize(
    ("config", "client"),
    [
        (_config(), False),
        (_config(http=HttpConfig(port=("ssl:5443:privateKey=k.pem",))), False),
        (_config(auth_token=TokenConfig(realm="https://auth.example/token")), False),
        (_config(storage=StorageConfig(driver="s3", regionendpoint="http://127.0.0.1:8333")), True),
        (_config(extra={"proxy:hub": {"remoteurl": "https://registry-1.docker.io"}}), True),
        (_config(extra={"notifications:ci": {"url": "https://ci.example/events"}}), True),
        (_config(extra={"sync:mirror": {}}), True),
    ],
)
def test_twisteds_http_client_is_checked_where_the_registry_is_one(
    config: Config, client: bool
) -> None:
    assert uses_http_client(config) is client


LOADED_ON_USE = """
import sys
from registry.lean_imports import load_on_use

assert load_on_use(("pdb",)) == ("pdb",)
import importlib.util
assert importlib.util.find_spec("pdb").name == "pdb" and "bdb" not in sys.modules
import pdb  # what twisted.application.app does
from twisted.application import app  # noqa: F401
assert "bdb" not in sys.modules, "imported before its first use"
assert not hasattr(pdb, "__file__") and "bdb" not in sys.modules  # scanners load nothing
assert pdb.Pdb.__name__ == "Pdb" and "bdb" in sys.modules  # the first use loads it
assert sys.modules["pdb"] is not pdb and sys.modules["pdb"].Pdb is pdb.Pdb
assert app.pdb.runcall is sys.modules["pdb"].runcall
assert load_on_use(("pdb",)) == ()  # imported now: left alone
print("ok")
"""


def test_a_module_loaded_on_use_is_imported_at_its_first_attribute_read() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LOADED_ON_USE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
