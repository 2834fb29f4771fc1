"""
Start-up that cannot succeed stops the process: exit status 1 and exactly one line on stderr
naming the cause, no traceback anywhere, and "listening" never logged.  Each case runs a real
``twistd -n registry`` child.
"""

from __future__ import annotations

import datetime
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from registry.server.exit import StartupError, twistd_pidfile
from registry.server.workers import cores
from registry.tap import Options, makeService
from tests.e2e.harness import twistd_command, write_config
from tests.server.proc import Child, child_env

LOOPBACK = "tcp:0:interface=127.0.0.1"


def run_command(
    tmp_path: Path, command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``command`` (a `twistd_command`, changed or not) to its end, in ``tmp_path``."""
    return subprocess.run(
        command, cwd=tmp_path, env=child_env(env), capture_output=True, text=True, timeout=120
    )


def run_registry(
    tmp_path: Path, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_command(tmp_path, twistd_command(*arguments), env)


@contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A read-only tmpfs at ``path`` (made), unmounted at the end."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr)
    assert result.stderr.endswith("\n")
    lines = result.stderr.splitlines()
    assert lines == [expected], result.stderr
    assert "Traceback" not in result.stdout
    assert "listening" not in result.stdout


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use(tmp_path: Path, taken_port: int) -> None:
    description = f"tcp:{taken_port}:interface=127.0.0.1"
    result = run_registry(tmp_path, "--port", description, "--storage", str(tmp_path / "d"))
    assert_one_line(result, f"txregistry: cannot listen on {description}: address already in use")


def test_second_port_in_use_after_a_good_one(tmp_path: Path, taken_port: int) -> None:
    description = f"tcp:{taken_port}:interface=127.0.0.1"
    result = run_registry(
        tmp_path, "--port", LOOPBACK, "--port", description, "--storage", str(tmp_path / "d")
    )
    assert_one_line(result, f"txregistry: cannot listen on {description}: address already in use")


def test_debug_port_in_use(tmp_path: Path, taken_port: int) -> None:
    """The [debug] listener (metrics, health) is bound with the registry's ports."""
    description = f"tcp:{taken_port}:interface=127.0.0.1"
    config = tmp_path / "registry.cfg"
    config.write_text(f"[debug]\naddr = {description}\n")
    result = run_registry(
        tmp_path,
        "--config",
        str(config),
        "--port",
        LOOPBACK,
        "--storage",
        str(tmp_path / "d"),
    )
    assert_one_line(result, f"txregistry: cannot listen on {description}: address already in use")


def test_interface_not_on_this_host(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: bind() fails, nothing is sent.
    description = "tcp:0:interface=192.0.2.1"
    result = run_registry(tmp_path, "--port", description, "--storage", str(tmp_path / "d"))
    assert_one_line(
        result, f"txregistry: cannot listen on {description}: cannot assign requested address"
    )


@pytest.mark.parametrize(
    ("port", "line"),
    [
        ("99999", "configuration error: tcp:99999: port 99999 is out of range (0-65535)"),
        (
            "tcp:0:interfce=127.0.0.1",
            "configuration error: tcp:0:interfce=127.0.0.1: unknown tcp: option 'interfce'; "
            "did you mean interface?",
        ),
        ("floppy:5000", "configuration error: floppy:5000: Unknown endpoint type: 'floppy'"),
    ],
)
def test_bad_endpoint(tmp_path: Path, port: str, line: str) -> None:
    result = run_registry(tmp_path, "--port", port, "--storage", str(tmp_path / "d"))
    assert_one_line(result, f"txregistry: {line}")


def test_storage_is_a_regular_file(tmp_path: Path) -> None:
    storage = tmp_path / "not-a-folder"
    storage.write_text("x")
    result = run_registry(tmp_path, "--port", LOOPBACK, "--storage", str(storage))
    assert_one_line(result, f"txregistry: cannot use storage {storage}: not a directory")


def test_storage_cannot_be_written(tmp_path: Path) -> None:
    # Under /proc nothing can be created, whoever runs the test (root included).
    result = run_registry(tmp_path, "--port", LOOPBACK, "--storage", "/proc/txregistry-test")
    assert_one_line(
        result, "txregistry: cannot use storage /proc/txregistry-test: no such file or directory"
    )


def test_bad_configuration_value_prints_one_line_not_the_usage(tmp_path: Path) -> None:
    config = tmp_path / "bad.cfg"
    config.write_text("[storage]\nfsync = maybe\n")
    result = run_registry(tmp_path, "--config", str(config))
    assert_one_line(
        result,
        "txregistry: configuration error: [storage] fsync: not a boolean: 'maybe' "
        "(use true or false)",
    )


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"[http]\nport = 1\n\xff\xfe\n", "not UTF-8 text (invalid start byte)"),
        (
            b"port = 5000\n",
            "File contains no section headers. file: '{path}', line: 1 'port = 5000\\n'",
        ),
        (
            b"[http]\nport = 1\nport = 2\n",
            "While reading from '{path}' [line 3]: option 'port' in section 'http' already exists",
        ),
    ],
    ids=["binary", "no-section", "duplicate-key"],
)
def test_unreadable_configuration_file_is_one_line(
    tmp_path: Path, content: bytes, cause: str
) -> None:
    """A file configparser cannot read at all: its message (several lines of its own, or a
    decoding error) becomes one line, for twistd and for the txregistry command alike."""
    config = tmp_path / "registry.cfg"
    config.write_bytes(content)
    expected = f"txregistry: configuration error: config file {config}: " + cause.format(
        path=config
    )
    assert_one_line(run_registry(tmp_path, "--config", str(config)), expected)
    command = run_command(
        tmp_path, [sys.executable, "-m", "registry.cli", "gc", "--config", str(config)]
    )
    assert command.returncode == 2, command.stderr
    assert command.stderr.splitlines() == [expected]


def test_more_workers_than_the_machine_can_use_is_refused(tmp_path: Path) -> None:
    wanted = 4 * cores() + 1
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": str(wanted)}})
    result = run_registry(tmp_path, "--config", str(config), "--port", LOOPBACK)
    assert_one_line(
        result,
        f"txregistry: configuration error: [http] workers = {wanted}: at most {wanted - 1} "
        "here (4 per core: a worker is one reactor on one core, more only cost memory)",
    )


def _exec_space(argv: list[str], env: dict[str, str]) -> int:
    """What an ``execve`` of ``argv`` with ``env`` uses of Linux's argument space: every
    string with its NUL, the pointer arrays, and the file name."""
    strings = sum(len(a.encode()) + 1 for a in argv)
    strings += sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())
    return strings + 8 * (len(argv) + len(env) + 2) + len(argv[0].encode()) + 1


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's execve argument space")
def test_supervisor_that_cannot_be_started_is_one_line(tmp_path: Path) -> None:
    """The supervisor is started by exec from twistd, with its settings in the environment:
    an exec that fails (here E2BIG: the environment fills all but a few hundred bytes of the
    argument space, so twistd starts and the supervisor's settings do not fit) is one line
    and exit 1, not a process idling with its ports bound."""
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "2"}})
    command = twistd_command(
        "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "d")
    )
    env = child_env(None)
    stack = 8 * 1024 * 1024  # the space is a quarter of the stack limit
    fill = stack // 4 - _exec_space(command, env) - 400
    count = fill // 100_000 + 1
    for i in range(count):  # each string under the 128 KiB a single one may have
        env[f"TXREGISTRY_TEST_FILL{i}"] = "x" * (fill // count - 40)

    def known_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (stack, stack))

    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=known_stack,
    )
    assert_one_line(result, "txregistry: cannot start the supervisor: argument list too long")


@pytest.mark.parametrize(
    ("sections", "line"),
    [
        (
            {
                "proxy:hub": {
                    "remoteurl": "https://127.0.0.1:9",
                    "default": "true",
                    "cabundle": "{d}/no.pem",
                }
            },
            "[proxy:hub] cabundle: cannot read {d}/no.pem: no such file or directory",
        ),
        (
            {
                "proxy:hub": {
                    "remoteurl": "https://127.0.0.1:9",
                    "default": "true",
                    "cabundle": "{d}/r.cfg",
                }
            },
            "[proxy:hub] cabundle: no PEM certificate in {d}/r.cfg",
        ),
        (
            {"sync:a": {"remote": "https://127.0.0.1:9", "certfile": "{d}/r.cfg"}},
            "[sync:a] certfile: {d}/r.cfg: ",
        ),
        (
            # A character no name has: every run would copy nothing and call it a success.
            {"sync:a": {"remote": "https://127.0.0.1:9", "repositories": "team/[ab]pp"}},
            "[sync:a] repositories: 'team/[ab]pp' is not a repository glob",
        ),
        (
            {
                "notifications": {"queuedir": "/proc/txregistry-test"},
                "notifications:x": {"url": "http://127.0.0.1:9/"},
            },
            "[notifications] queuedir: cannot write in /proc/txregistry-test: no such file or"
            " directory",
        ),
        (
            {
                "notifications": {"queuedir": "/sys/kernel"},  # there, but not writable by root
                "notifications:x": {"url": "http://127.0.0.1:9/"},
            },
            "[notifications] queuedir: cannot write in /sys/kernel: permission denied",
        ),
        (
            {"auth.htpasswd": {"path": "{d}/missing"}},
            "[auth.htpasswd] path: cannot read {d}/missing: no such file or directory",
        ),
        (
            # Two upstreams' repositories would share local names (docker.io/q/app).
            {
                "proxy:a": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io/q"},
                "proxy:up": {"remoteurl": "http://127.0.0.1:9", "prefix": "docker.io"},
            },
            "[proxy:a] prefix: 'docker.io/q' lies inside the prefix 'docker.io' of [proxy:up]",
        ),
        (
            {
                "proxy:hub": {
                    "remoteurl": "http://127.0.0.1:9",
                    "default": "true",
                    "library": "true",
                },
                "proxy:lib": {"remoteurl": "http://127.0.0.1:9", "prefix": "library"},
            },
            "[proxy:lib] prefix: 'library' is where [proxy:hub] (the default, without a prefix)",
        ),
    ],
    ids=[
        "proxy-ca-missing",
        "proxy-ca-not-pem",
        "sync-cert-not-pem",
        "sync-glob",
        "queuedir",
        "queuedir-unwritable",
        "htpasswd",
        "proxy-prefix-nested",
        "proxy-prefix-library",
    ],
)
def test_files_the_configuration_names_are_checked_at_start_up(
    tmp_path: Path, sections: dict[str, dict[str, str]], line: str
) -> None:
    """A file or folder a key names that cannot be used stops start-up with one line naming
    the key, not a traceback from the first request or the first connection."""
    resolved = {
        name: {key: value.format(d=tmp_path) for key, value in values.items()}
        for name, values in sections.items()
    }
    config = write_config(tmp_path / "r.cfg", resolved)
    result = run_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "d")
    )
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    [printed] = result.stderr.splitlines()
    expected = "txregistry: configuration error: " + line.format(d=tmp_path)
    assert printed.startswith(expected), printed


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("ftp://alice:s3cr3tpw@127.0.0.1/x", "'ftp://127.0.0.1/x' is not an http(s) URL"),
        (
            "http://alice:s3cr3tpw@[zz]:80/x",
            "'http://[zz]:80/x' is not a URL: 'zz' does not appear to be an IPv4 or IPv6 address",
        ),
    ],
    ids=["scheme", "unsplittable"],
)
def test_a_bad_webhook_url_is_shown_without_its_password(
    tmp_path: Path, url: str, line: str
) -> None:
    config = write_config(tmp_path / "r.cfg", {"notifications:x": {"url": url}})
    result = run_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "d")
    )
    assert "s3cr3tpw" not in result.stdout + result.stderr
    assert_one_line(result, f"txregistry: configuration error: [notifications:x] url: {line}")


def test_a_log_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    command = twistd_command("--port", LOOPBACK, "--storage", str(tmp_path / "d"))
    log = "/proc/txregistry-test/registry.log"
    command.insert(command.index("registry"), f"--logfile={log}")
    result = run_command(tmp_path, command)
    assert_one_line(
        result, f"txregistry: cannot open the log file {log}: no such file or directory"
    )


def test_misspelt_environment_variable_is_refused(tmp_path: Path) -> None:
    result = run_registry(
        tmp_path,
        "--port",
        LOOPBACK,
        env={"REGISTRY_STORAGE_ROOTDIRECTROY": str(tmp_path / "d")},
    )
    assert_one_line(
        result,
        "txregistry: configuration error: environment variable REGISTRY_STORAGE_ROOTDIRECTROY: "
        "no such key; did you mean REGISTRY_STORAGE_ROOTDIRECTORY?",
    )


@pytest.mark.parametrize("where", ["file", "environment"])
def test_empty_storage_root_is_refused(tmp_path: Path, where: str) -> None:
    # Started in tmp_path: an empty root would have put docker/ and .trash/ there.
    config = tmp_path / "empty-root.cfg"
    env: dict[str, str] = {}
    if where == "file":
        config.write_text("[storage]\nrootdirectory =\n")
    else:
        config.write_text("[storage]\nrootdirectory = /nonexistent/from-file\n")
        env["REGISTRY_STORAGE_ROOTDIRECTORY"] = ""
    result = run_registry(tmp_path, "--config", str(config), "--port", LOOPBACK, env=env)
    expected = (
        "txregistry: configuration error: [storage] rootdirectory: empty (the filesystem"
        " driver needs a folder; without one it would store in the current directory)"
    )
    if where == "environment":
        expected += " (from the environment variable REGISTRY_STORAGE_ROOTDIRECTORY)"
    assert_one_line(result, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-root.cfg"]


def test_unknown_option(tmp_path: Path) -> None:
    result = run_registry(tmp_path, "--prot", "tcp:5000")
    assert_one_line(result, "txregistry: option --prot not recognized")


def test_version(tmp_path: Path) -> None:
    result = run_registry(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("txregistry ")
    assert result.stderr == ""


def bounded(d: Deferred[None]) -> Deferred[None]:
    return d.addTimeout(30, reactor)


@pytest_twisted.ensureDeferred
async def test_embedding_caller_is_told_why_start_up_failed(tmp_path: Path) -> None:
    """Started without twistd (``startService`` only), a start-up that fails ends in
    `when_ready` failing with the same one line, whenever it is asked; nothing is accepted."""
    storage = tmp_path / "not-a-folder"
    storage.write_text("x")
    options = Options()
    options.parseOptions(["--port", LOOPBACK, "--storage", str(storage)])
    service: Any = makeService(options)
    service.startService()
    try:
        with pytest.raises(StartupError) as early:
            await bounded(service.when_ready())
        with pytest.raises(StartupError) as late:  # asked again after the outcome
            await service.when_ready()
        assert str(early.value) == str(late.value)
        assert str(early.value) == f"cannot use storage {storage}: not a directory"
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_embedding_caller_is_told_when_the_registry_serves(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--port", LOOPBACK, "--storage", str(tmp_path / "data")])
    service: Any = makeService(options)
    service.startService()
    try:
        await bounded(service.when_ready())
        port = service.listeners.ports[0].getHost().port
        response = await treq.get(f"http://127.0.0.1:{port}/v2/")
        assert response.code == 200
        assert await response.json() == {}
        await service.when_ready()  # asked again: still a success
    finally:
        await service.stopService()


@pytest.mark.parametrize(
    ("listen", "http", "line"),
    [
        (
            LOOPBACK,
            {},
            "[auth] client_certificate_users = true, but no listener asks for client "
            "certificates (needs an ssl: listener and [http] clientauth = optional or required) "
            "and neither [auth.htpasswd] nor [auth.token] is set: nobody could log in",
        ),
        (
            "ssl:0:interface=127.0.0.1:privateKey={d}/server.key:certKey={d}/server.pem",
            {"clientauth": "none"},
            "[auth] client_certificate_users = true, but no listener asks for client "
            "certificates (needs an ssl: listener and [http] clientauth = optional or required) "
            "and neither [auth.htpasswd] nor [auth.token] is set: nobody could log in",
        ),
    ],
    ids=["plain-tcp", "tls-without-clientauth"],
)
def test_certificate_users_where_no_certificate_can_arrive_are_refused(
    tmp_path: Path, listen: str, http: dict[str, str], line: str
) -> None:
    """docs/auth.md: client_certificate_users with no way to log in is refused at start-up."""
    from tests.auth import pki

    key = pki.new_key("ec")
    cert = pki.certificate("127.0.0.1", key, server=True)
    pki.write(tmp_path / "server.pem", pki.pem_cert(cert))
    pki.write(tmp_path / "server.key", pki.pem_key(key))
    config = write_config(
        tmp_path / "r.cfg", {"auth": {"client_certificate_users": "true"}, "http": http}
    )
    result = run_registry(
        tmp_path, "--config", str(config), "--port", listen.format(d=tmp_path),
        "--storage", str(tmp_path / "d"),
    )  # fmt: skip
    assert_one_line(result, f"txregistry: configuration error: {line}")


def test_a_jwks_of_only_hmac_keys_is_refused(tmp_path: Path) -> None:
    """A JWKS holding only ``oct`` keys can never verify a token: one line, no raw warning."""
    jwks = tmp_path / "keys.json"
    jwks.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac-1"}]}')
    config = write_config(
        tmp_path / "r.cfg",
        {
            "auth.token": {
                "realm": "https://auth.example.test/token",
                "service": "test-registry",
                "issuer": "test-issuer",
                "jwks": str(jwks),
            }
        },
    )
    result = run_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "d")
    )
    assert_one_line(
        result,
        f"txregistry: configuration error: [auth.token] jwks: {jwks}: holds no RSA, EC or OKP "
        "key (only oct); tokens are verified with public keys, so HMAC (oct) keys can never "
        "verify one",
    )


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("files", "cause"),
    [
        (
            "privateKey={d}/other.key:certKey={d}/server.pem",
            "privateKey {d}/other.key does not match certKey {d}/server.pem",
        ),
        (
            "privateKey={d}/encrypted.key:certKey={d}/server.pem",
            "privateKey {d}/encrypted.key is encrypted; the registry needs an unencrypted key "
            "(openssl pkey -in {d}/encrypted.key -out key.pem)",
        ),
        (
            "privateKey={d}/garbage.pem:certKey={d}/server.pem",
            "privateKey {d}/garbage.pem holds no PEM private key",
        ),
        (
            "privateKey={d}/server.key:certKey={d}/garbage.pem",
            "certKey {d}/garbage.pem holds no PEM certificate",
        ),
        (
            "privateKey={d}/server.key:certKey={d}/server.pem:extraCertChain={d}/garbage.pem",
            "extraCertChain {d}/garbage.pem holds no PEM certificate",
        ),
        (
            "privateKey={d}/missing.key:certKey={d}/server.pem",
            "privateKey {d}/missing.key: no such file or directory",
        ),
    ],
    ids=["mismatch", "encrypted", "garbage-key", "garbage-cert", "garbage-chain", "missing"],
)
def test_tls_material_that_cannot_serve_is_refused_at_start_up(
    tmp_path: Path, files: str, cause: str, workers: str
) -> None:
    """A key that does not match its certificate used to start, log "listening" and fail
    every handshake with a traceback (and kill each worker's listener); an encrypted key was
    a traceback, a garbage file a PEM error naming no file.  Now: one line naming the option
    and the file, exit status 1."""
    from cryptography.hazmat.primitives import serialization

    from tests.auth import pki

    key = pki.new_key("ec")
    cert = pki.certificate("127.0.0.1", key, server=True)
    pki.write(tmp_path / "server.pem", pki.pem_cert(cert))
    pki.write(tmp_path / "server.key", pki.pem_key(key))
    pki.write(tmp_path / "other.key", pki.pem_key(pki.new_key("ec")))
    pki.write(
        tmp_path / "encrypted.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    )
    pki.write(tmp_path / "garbage.pem", b"not a PEM file\n")
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": workers}})
    description = "ssl:0:interface=127.0.0.1:" + files.format(d=tmp_path)
    result = run_registry(
        tmp_path, "--config", str(config), "--port", description, "--storage", str(tmp_path / "d")
    )
    assert_one_line(
        result, f"txregistry: cannot listen on {description}: {cause.format(d=tmp_path)}"
    )


def s3_config_with_spool(tmp_path: Path, spool: Path) -> Path:
    """An S3 configuration (nothing listens at its endpoint) spooling parts in ``spool``."""
    return write_config(
        tmp_path / "s3.cfg",
        {
            "storage": {
                "driver": "s3",
                "bucket": "registry",
                "regionendpoint": "http://127.0.0.1:9",
                "accesskey": "key",
                "secretkey": "secret",
                "spooldirectory": str(spool),
            }
        },
    )


def test_an_s3_spool_folder_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    """It started, then answered every upload with a 500 (the part files had no folder)."""
    taken = tmp_path / "a-file"
    taken.write_text("x")
    spool = taken / "spool"
    config = s3_config_with_spool(tmp_path, spool)
    result = run_registry(tmp_path, "--port", LOOPBACK, "--config", str(config))
    assert_one_line(
        result,
        f"txregistry: configuration error: [storage] spooldirectory {spool}: not a directory",
    )


def test_a_missing_s3_spool_folder_is_made(tmp_path: Path) -> None:
    from registry.config import load
    from registry.storage.factory import build_driver

    spool = tmp_path / "not-yet" / "spool"
    config = load(str(s3_config_with_spool(tmp_path, spool)), environ={})
    build_driver(config, reactor, None)  # type: ignore[arg-type]
    assert spool.is_dir()


@pytest.mark.parametrize("pidfile", [None, "run/registry.pid"])
def test_a_failed_start_leaves_no_pid_file(
    tmp_path: Path, taken_port: int, pidfile: str | None
) -> None:
    """twistd's own pid file (``twistd.pid`` by default) goes with a start that failed: left
    naming a process that is gone, a later process given that pid makes the next start
    refuse as "Another twistd server is running"."""
    (tmp_path / "run").mkdir()
    description = f"tcp:{taken_port}:interface=127.0.0.1"
    command = twistd_command("--port", description, "--storage", str(tmp_path / "d"))
    command.remove("--pidfile=")
    if pidfile is not None:
        command[command.index("registry") : command.index("registry")] = ["--pidfile", pidfile]
    result = run_command(tmp_path, command)
    assert_one_line(result, f"txregistry: cannot listen on {description}: address already in use")
    assert sorted(p.name for p in tmp_path.rglob("*.pid")) == []


def test_a_pid_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """twistd writes its pid file once the application runs, and failed there with twenty
    lines of traceback; the cause is named first, in one line, with exit status 1."""
    with read_only_folder(tmp_path / "ro") as readonly:
        cases = [
            (tmp_path / "none" / "x.pid", f"no folder {tmp_path / 'none'}"),
            (readonly / "x.pid", f"{readonly} is on a read-only file system"),
            (tmp_path, "a folder is there"),
        ]
        for pidfile, why in cases:
            command = with_pidfile(twistd_command("--port", LOOPBACK, "--storage", "d"), pidfile)
            assert_one_line(
                run_command(tmp_path, command),
                f"txregistry: cannot write the pid file {pidfile}: {why} (give --pidfile a path "
                "this user may write, or --pidfile= for none)",
            )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_start_up_failure_is_in_the_log_file_too(tmp_path: Path, workers: str) -> None:
    """A daemon's log (``--logfile``) says why it stopped, not only its stderr, which a
    service manager may not keep: the supervisor's file and the worker's alike."""
    with read_only_folder(tmp_path / "ro") as storage:
        config = write_config(tmp_path / "r.cfg", {"http": {"workers": workers}})
        command = twistd_command(
            "--config", str(config), "--port", LOOPBACK, "--storage", str(storage)
        )
        at = command.index("registry")
        command[at:at] = ["--logfile", str(tmp_path / "registry.log")]
        line = f"cannot use storage {storage}: read-only file system"
        assert_one_line(run_command(tmp_path, command), f"txregistry: {line}")
        logs = {p.name: p.read_text() for p in tmp_path.glob("registry.log*")}
        assert "registry.log" in logs, sorted(logs)
        assert f"start-up failed: {line}" in logs["registry.log"], logs


def with_pidfile(command: list[str], path: Path) -> list[str]:
    """``command`` (`twistd_command`'s) writing the pid file ``path``."""
    return [f"--pidfile={path}" if word == "--pidfile=" else word for word in command]


def serving_with(tmp_path: Path, command: list[str], pidfile: Path) -> None:
    """``command`` starts and serves, then owns ``pidfile``; the stale one was removed in words."""
    child = Child(command, tmp_path)
    try:
        port = child.wait_listening()
        assert pidfile.read_text().strip() == str(child.process.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        assert "removed the stale pid file" in "".join(child.output)
    finally:
        child.stop()
    assert "Another twistd server" not in "".join(child.output) + child.stderr()


def test_a_pid_file_naming_this_very_process_is_stale(tmp_path: Path) -> None:
    """
    kill -9 leaves twistd's pid file; in a container the restarted registry often gets the
    same pid (PID 1), so the file names the process reading it.  That is no other server.
    """
    pidfile = tmp_path / "registry.pid"
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "1"}})
    registry = twistd_command("--config", str(config), "--port", LOOPBACK, "--storage", "d")
    # The shell writes its own pid, then becomes twistd: the pid reuse of a restart.
    command = ["sh", "-c", f'echo $$ > {pidfile}; exec "$@"', "sh"]
    serving_with(tmp_path, command + with_pidfile(registry, pidfile), pidfile)


def test_a_pid_file_naming_another_program_is_stale(tmp_path: Path) -> None:
    """The pid was given to some other program meanwhile: not a registry, not a refusal."""
    pidfile = tmp_path / "registry.pid"
    other = subprocess.Popen(["sleep", "300"])
    try:
        pidfile.write_text(f"{other.pid}\n")
        config = write_config(tmp_path / "r.cfg", {"http": {"workers": "1"}})
        registry = twistd_command("--config", str(config), "--port", LOOPBACK, "--storage", "d")
        serving_with(tmp_path, with_pidfile(registry, pidfile), pidfile)
    finally:
        other.kill()
        other.wait()


def test_an_empty_pid_file_is_stale(tmp_path: Path) -> None:
    """What a crash or a full disk leaves while twistd writes it: it names nobody."""
    pidfile = tmp_path / "registry.pid"
    pidfile.write_text("")
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "1"}})
    registry = twistd_command("--config", str(config), "--port", LOOPBACK, "--storage", "d")
    serving_with(tmp_path, with_pidfile(registry, pidfile), pidfile)


def test_a_pid_file_holding_no_number_is_stale(tmp_path: Path) -> None:
    """A damaged file names nobody either; twistd refused every start over it (a restart
    loop under a service manager)."""
    pidfile = tmp_path / "registry.pid"
    pidfile.write_text("garbage\n")
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "1"}})
    registry = twistd_command("--config", str(config), "--port", LOOPBACK, "--storage", "d")
    serving_with(tmp_path, with_pidfile(registry, pidfile), pidfile)


@pytest.mark.skipif(sys.platform != "linux", reason="a process's command line from /proc")
def test_a_pid_file_naming_a_running_registry_is_one_line(tmp_path: Path) -> None:
    """A registry serving with that pid file (its supervisor, with workers) is a refusal, in
    one line rather than twistd's five, and its pid file stays."""
    pidfile = tmp_path / "registry.pid"
    config = write_config(tmp_path / "r.cfg", {"http": {"workers": "2"}})
    first = Child(
        with_pidfile(twistd_command("--config", str(config), "--port", LOOPBACK), pidfile),
        tmp_path,
    )
    try:
        first.wait_listening()
        running = first.process.pid
        assert pidfile.read_text().strip() == str(running)
        second = run_command(
            tmp_path,
            with_pidfile(twistd_command("--config", str(config), "--port", LOOPBACK), pidfile),
        )
        assert_one_line(
            second,
            f"txregistry: another twistd server is running, PID {running} (pid file {pidfile}): "
            "stop it, or give this one a pid file of its own (--pidfile)",
        )
        assert pidfile.read_text().strip() == str(running)
        assert first.process.poll() is None
    finally:
        first.stop()


def test_the_pid_file_is_read_from_twistds_own_options() -> None:
    assert twistd_pidfile(["twistd", "-n", "registry", "--pidfile", "x"]) == "twistd.pid"
    assert twistd_pidfile(["twistd", "--pidfile=", "registry"]) == ""
    assert twistd_pidfile(["twistd", "-n", "--pidfile", "/run/r.pid", "registry"]) == "/run/r.pid"
    assert twistd_pidfile(["-c", "-n", "--pidfile=a.pid", "registry"]) == "a.pid"


def test_a_fill_spool_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """A pull-through cache on S3 spools its fills under spooldirectory too, even with
    ``spoolparts = false``: a folder that cannot be made stopped start-up with a traceback."""
    taken = tmp_path / "a-file"
    taken.write_text("x")
    spool = taken / "spool"
    config = s3_config_with_spool(tmp_path, spool)
    with open(config, "a") as file:
        file.write(
            "spoolparts = false\n\n[proxy:up]\nremoteurl = http://127.0.0.1:9\nprefix = up\n"
        )
    result = run_registry(tmp_path, "--port", LOOPBACK, "--config", str(config))
    assert_one_line(
        result,
        "txregistry: configuration error: [storage] spooldirectory: cannot make the "
        f"pull-through fill spool {spool}: not a directory",
    )


def _dsa_certificate(path: Path) -> None:
    key = dsa.generate_private_key(2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dsa token signer")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    ("token", "line"),
    [
        (
            # Everything but the realm: authentication would be off, the registry open.
            {"service": "reg", "issuer": "iss", "rootcertbundle": "{d}/dsa.pem"},
            "[auth.token] needs realm (set: service, issuer, rootcertbundle)",
        ),
        ({"jwks": "{d}/keys.json"}, "[auth.token] needs realm (set: jwks)"),
        (
            # A continued line in the file: every challenge would fail to be sent.
            {
                "realm": "http://127.0.0.1:9/token\nv2",
                "service": "reg",
                "issuer": "iss",
                "rootcertbundle": "{d}/dsa.pem",
            },
            "[auth.token] realm: contains a control character: 'http://127.0.0.1:9/token\\nv2'",
        ),
        (
            {
                "realm": "http://127.0.0.1:9/token",
                "service": "reg\x01",
                "issuer": "iss",
                "rootcertbundle": "{d}/dsa.pem",
            },
            "[auth.token] service: contains a control character: 'reg\\x01'",
        ),
        (
            # DSA keys verify no token, as a token's key or as a chain's root.
            {
                "realm": "http://127.0.0.1:9/token",
                "service": "reg",
                "issuer": "iss",
                "rootcertbundle": "{d}/dsa.pem",
            },
            "[auth.token] rootcertbundle: {d}/dsa.pem: holds no certificate with an RSA, EC or "
            "Ed25519 key (only DSA); tokens can be verified with none of them",
        ),
    ],
    ids=["no-realm", "jwks-only", "realm-newline", "service-control", "dsa-only"],
)
def test_token_settings_that_cannot_work_are_refused(
    tmp_path: Path, token: dict[str, str], line: str
) -> None:
    _dsa_certificate(tmp_path / "dsa.pem")
    (tmp_path / "keys.json").write_text('{"keys": []}')
    section = {key: value.replace("{d}", str(tmp_path)) for key, value in token.items()}
    config = tmp_path / "r.cfg"
    lines = ["[auth.token]"]
    for key, value in section.items():
        assert "\n" not in key
        # A value with a line break is written as an indented continuation line, as an
        # operator's editor would leave it.
        lines.append(f"{key} = " + value.replace("\n", "\n  "))
    config.write_text("\n".join(lines) + "\n")
    result = run_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "d")
    )
    assert_one_line(
        result, "txregistry: configuration error: " + line.replace("{d}", str(tmp_path))
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_client_certificates_asked_for_where_no_handshake_can_ask_are_refused(
    tmp_path: Path, workers: str
) -> None:
    """``clientauth = required`` with only plain listeners would serve every connection
    without a certificate: refused with one line, with one process or a supervisor."""
    from tests.auth import pki

    key = pki.new_key("ec")
    ca = pki.write(tmp_path / "ca.pem", pki.pem_cert(pki.certificate("test ca", key, ca=True)))
    config = write_config(
        tmp_path / "r.cfg",
        {"http": {"clientauth": "required", "clientcas": ca, "workers": workers}},
    )
    result = run_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", str(tmp_path / "d")
    )
    assert_one_line(
        result,
        "txregistry: configuration error: [http] clientauth = required: no listener is ssl: "
        f"({LOOPBACK}), so no client certificate can be asked for",
    )


@pytest.mark.parametrize(
    ("http", "line"),
    [
        (
            {"clientcas": "{ca}"},
            "[http] clientcas is set but clientauth = none asks for no client certificate: "
            "set clientauth = required (what registry:2 does with clientcas) or optional",
        ),
        (
            {"clientauth": "optional"},
            "[http] clientauth = optional needs clientcas (a CA bundle)",
        ),
    ],
    ids=["clientcas-alone", "clientauth-alone"],
)
def test_client_certificate_settings_that_would_ask_nothing_are_refused(
    tmp_path: Path, http: dict[str, str], line: str
) -> None:
    """registry:2 requires a client certificate as soon as ``clientcas`` is set: the same
    configuration here, with ``clientauth`` left at ``none``, would serve everyone without a
    word.  Refused, as a ``clientauth`` without CAs is, each in one line."""
    from tests.auth import pki

    key = pki.new_key("ec")
    ca = pki.write(tmp_path / "ca.pem", pki.pem_cert(pki.certificate("test ca", key, ca=True)))
    cert = pki.certificate("127.0.0.1", key, server=True)
    pki.write(tmp_path / "server.pem", pki.pem_cert(cert))
    pki.write(tmp_path / "server.key", pki.pem_key(key))
    config = write_config(
        tmp_path / "r.cfg", {"http": {k: v.format(ca=ca) for k, v in http.items()}}
    )
    listen = (
        f"ssl:0:interface=127.0.0.1:privateKey={tmp_path}/server.key:certKey={tmp_path}/server.pem"
    )
    result = run_registry(
        tmp_path, "--config", str(config), "--port", listen, "--storage", str(tmp_path / "d")
    )
    assert_one_line(result, f"txregistry: configuration error: {line}")


@pytest.mark.parametrize(
    ("sections", "variable", "value", "expected"),
    [
        (
            {"notifications:ci": {"url": "http://127.0.0.1:9/hook", "timeout": "1s"}},
            "REGISTRY_NOTIFICATIONS_CI_TIMEOUT",
            "abc",
            "[notifications:ci] timeout: not a duration: 'abc'",
        ),
        ({}, "REGISTRY_HTTP_WORKERS", "9999", "[http] workers = 9999: at most"),
    ],
)
def test_a_value_from_the_environment_checked_after_loading_names_its_variable(
    tmp_path: Path, sections: dict[str, dict[str, str]], variable: str, value: str, expected: str
) -> None:
    """Open sections ([notifications:NAME], [proxy:NAME], [sync:NAME]) are parsed by their
    owners, and the number of workers once the machine's cores are known: a value refused
    there named its key but not the variable that set it."""
    config = write_config(tmp_path / "r.cfg", sections)
    result = run_registry(
        tmp_path, "--config", str(config), "--port", LOOPBACK, "--storage", "d",
        env={variable: value},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"txregistry: configuration error: {expected}"), line
    assert line.endswith(f" (from the environment variable {variable})"), line
