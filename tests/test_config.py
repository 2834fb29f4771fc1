"""Configuration: tap.cfg documents every key with its default; bad values stop start-up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import attrs
import pytest

from registry import config
from tests.e2e.harness import REPO_ROOT, twistd_command


def test_tap_cfg_documents_every_key_with_its_default() -> None:
    documented = config.load(str(REPO_ROOT / "tap.cfg"), environ={})
    assert attrs.evolve(documented, extra={}) == config.Config()
    text = (REPO_ROOT / "tap.cfg").read_text()
    for section, cls in config.SECTIONS.items():
        assert f"[{section}]" in text
        for field in attrs.fields(cls):
            assert f"\n{field.name} =" in text, f"[{section}] {field.name} not in tap.cfg"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "r.cfg"
    path.write_text("[storage]\nrootdirectory = /from/file\ndelete_enabled = false\n")
    loaded = config.load(
        str(path),
        environ={"REGISTRY_STORAGE_DELETE_ENABLED": "true", "REGISTRY_HTTP_PORT": "tcp:1 tcp:2"},
    )
    assert loaded.storage.rootdirectory == "/from/file"
    assert loaded.storage.delete_enabled is True
    assert loaded.http.port == ("tcp:1", "tcp:2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[storage]\ndelete_enabled = perhaps\n", "[storage] delete_enabled: not a boolean"),
        ("[storage]\nmax_manifest_size = lots\n", "[storage] max_manifest_size: not a size"),
        ("[storage]\ndriver = floppy\n", "[storage] driver:"),
        ("[storage]\nrootdir = /x\n", "[storage] rootdir: unknown key"),
        ("[storrage]\n", "[storrage]: unknown section"),
        ("[uploads]\npurge_age = soon\n", "[uploads] purge_age: not a duration"),
        ("[validation]\nindex_platforms = all linux/amd64\n", "[validation] index_platforms:"),
        ("[validation]\nindex_platforms = linux\n", "not an os/architecture platform"),
        ("[validation]\nindex_platforms = linux/arm/v7\n", "'linux/arm/v7' is not an os/arch"),
        ("[http]\nsendfile = sometimes\n", "[http] sendfile: not auto, true or false"),
        ("[redis]\ndb = -1\n", "[redis] db: not a whole number of at least 0: '-1'"),
        ("[redis]\npool_maxactive = 0\n", "[redis] pool_maxactive: not a whole number of at "),
        ("[auth]\nmax_failures = -5\n", "[auth] max_failures: not a whole number of at least 0"),
        ("[auth]\nmax_failures = 1e3\n", "[auth] max_failures: not a whole number"),
        # Zero would run the purge (the queue flush) at every reactor turn, or drop every
        # connection as it opens, or fail every health probe at once.
        ("[uploads]\npurge_interval = 0\n", "[uploads] purge_interval: must be more than 0: '0'"),
        (
            "[notifications]\nflush_interval = 0s\n",
            "[notifications] flush_interval: must be more than 0: '0s'",
        ),
        ("[http]\ntimeout = 0\n", "[http] timeout: must be more than 0: '0'"),
        ("[health]\ntimeout = 0\n", "[health] timeout: must be more than 0: '0'"),
        # Would listen on nothing, and say it listens.
        ("[http]\nport =\n", "[http] port: no listening address"),
        ("[DEFAULT]\ntimeout = 1s\n[http]\n", "[DEFAULT]: not supported"),
        # Each of these started the registry (or failed later naming no key).
        (
            "[auth]\nanonymous_pull = Bad[x\n",
            "[auth] anonymous_pull: repository pattern 'Bad[x' may only use",
        ),
        ("[auth.token]\nrealm = notaurl\n", "[auth.token] realm: 'notaurl' is not an http(s) URL"),
        ("[auth.htpasswd]\nrealm =\n", "[auth.htpasswd] realm: empty"),
        ("[fleet]\nadvertise = notaurl\n", "[fleet] advertise: 'notaurl' is not an http(s) URL"),
        ("[fleet]\ninstance = a b/c\n", "[fleet] instance: 'a b/c': use 1 to 64 letters"),
        # Ignored without Redis: the instance ran as a cache of its own.
        ("[fleet]\nlisten = tcp:5002\n", "[fleet] listen: needs [redis] addr"),
        ("[fleet]\nlease = 30s\n", "[fleet] lease: needs [redis] addr"),
        (
            "[storage]\nregionendpoint = ftp://x\n",
            "[storage] regionendpoint: 'ftp://x' is not an http(s) URL",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        config.load(str(path), environ={})
    assert message in str(caught.value)


def test_bad_value_stops_twistd_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.cfg"
    path.write_text("[storage]\nfsync = maybe\n")
    result = subprocess.run(
        twistd_command("--config", str(path)),
        capture_output=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode != 0
    assert b"configuration error: [storage] fsync: not a boolean" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("168h", 604800), ("1h30m", 5400), ("12", 12)]
)
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("4MiB", 4 << 20), ("50GiB", 50 << 30), ("10MB", 10_000_000), ("7", 7)]
)
def test_sizes(text: str, size: int) -> None:
    assert config.parse_size(text) == size


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [
        ("REGISTRY_STORAGE_ROOTDIRECTROY", "REGISTRY_STORAGE_ROOTDIRECTORY"),
        ("REGISTRY_HTTP_DRAINTIMOUT", "REGISTRY_HTTP_DRAINTIMEOUT"),
        ("REGISTRY_AUTH_HTPASWD_PATH", "REGISTRY_AUTH_HTPASSWD_PATH"),
    ],
)
def test_misspelt_environment_variable_names_the_nearest_key(variable: str, nearest: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ={variable: "x"})
    assert str(caught.value) == (
        f"environment variable {variable}: no such key; did you mean {nearest}?"
    )


def test_a_value_refused_from_the_environment_names_its_variable(tmp_path: Path) -> None:
    """The file may not have the key at all: the error says where the value came from."""
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ={"REGISTRY_HTTP_WORKERS": "zz"})
    assert str(caught.value) == (
        "[http] workers: 'zz' is not auto or a number of processes (1, 2, ...) "
        "(from the environment variable REGISTRY_HTTP_WORKERS)"
    )
    path = tmp_path / "r.cfg"
    path.write_text("[http]\nworkers = zz\n")
    with pytest.raises(config.ConfigError) as caught:
        config.load(str(path), environ={})
    assert "environment" not in str(caught.value)


def test_other_tools_registry_variables_are_left_alone() -> None:
    """``REGISTRY_AUTH_FILE`` is podman's, skopeo's and buildah's credentials file (and
    ``txregistry copy`` reads it): set in a shell or CI, it must not stop the registry."""
    loaded = config.load(None, environ={"REGISTRY_AUTH_FILE": "/run/containers/0/auth.json"})
    assert loaded.http.port == ("tcp:5000",)
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ={"REGISTRY_HTTP_PORT": ""})
    assert str(caught.value).startswith("[http] port: no listening address")


def test_environment_sets_keys_of_open_sections(tmp_path: Path) -> None:
    path = tmp_path / "r.cfg"
    path.write_text("[proxy:hub]\nremoteurl = https://registry-1.docker.io\n")
    loaded = config.load(
        str(path), environ={"REGISTRY_PROXY_HUB_TTL": "1h", "HOME": "/root", "REGISTRYX": "1"}
    )
    assert loaded.extra["proxy:hub"] == {"remoteurl": "https://registry-1.docker.io", "ttl": "1h"}
    with pytest.raises(config.ConfigError, match="REGISTRY_PROXY_HUP_TTL: no such key"):
        config.load(str(path), environ={"REGISTRY_PROXY_HUP_TTL": "1h"})


def test_draintimeout_takes_registry2_durations() -> None:
    loaded = config.load(None, environ={"REGISTRY_HTTP_DRAINTIMEOUT": "1m30s"})
    assert loaded.http.draintimeout == 90
    assert config.Config().http.draintimeout == 60


def test_worker_timeout_is_0_or_at_least_2s() -> None:
    assert config.Config().http.worker_timeout == 30
    loaded = config.load(None, environ={"REGISTRY_HTTP_WORKER_TIMEOUT": "1m"})
    assert loaded.http.worker_timeout == 60
    assert config.load(None, environ={"REGISTRY_HTTP_WORKER_TIMEOUT": "0"}).http.worker_timeout == 0
    with pytest.raises(config.ConfigError, match="must be 0 \\(never\\) or at least 2s"):
        config.load(None, environ={"REGISTRY_HTTP_WORKER_TIMEOUT": "500ms"})


def test_index_platforms_words(tmp_path: Path) -> None:
    path = tmp_path / "sparse.cfg"
    for text, words in [
        ("", ("all",)),
        ("none", ("none",)),
        ("ALL", ("all",)),
        ("linux/amd64, linux/arm64", ("linux/amd64", "linux/arm64")),
    ]:
        path.write_text(f"[validation]\nindex_platforms = {text}\n")
        assert config.load(str(path), environ={}).validation.index_platforms == words


@pytest.mark.parametrize(
    ("text", "mode"),
    [("auto", "auto"), ("AUTO", "auto"), ("true", "always"), ("on", "always"), ("false", "never")],
)
def test_sendfile_words(tmp_path: Path, text: str, mode: str) -> None:
    """``[http] sendfile``: auto (the default), or a boolean for always / never; the environment
    takes the same words."""
    assert config.Config().http.sendfile == "auto"
    path = tmp_path / "r.cfg"
    path.write_text(f"[http]\nsendfile = {text}\n")
    assert config.load(str(path), environ={}).http.sendfile == mode
    from_environment = config.load(None, environ={"REGISTRY_HTTP_SENDFILE": text})
    assert from_environment.http.sendfile == mode


def _commented_example(header: str) -> str:
    """tap.cfg's commented-out ``# [header]`` section, uncommented as a reader would."""
    lines = (REPO_ROOT / "tap.cfg").read_text().splitlines()
    start = lines.index(f"# [{header}]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    return "\n".join(block) + "\n"


def test_tap_cfg_commented_sections_load_as_written(tmp_path: Path) -> None:
    """Uncommenting an example section of tap.cfg, every listed value included, is accepted
    and gives the documented defaults (an empty ``library`` is automatic; an empty
    username and password are no credentials, in [proxy:NAME] and [sync:NAME] alike)."""
    from registry.ops.notifications.config import parse_endpoints
    from registry.proxy.config import parse_proxies
    from registry.sync.config import parse_syncs

    path = tmp_path / "examples.cfg"
    path.write_text(
        _commented_example("proxy:dockerhub")
        + _commented_example("notifications:ci")
        + _commented_example("sync:upstream")
    )
    loaded = config.load(str(path), environ={})
    (proxy,) = parse_proxies(loaded)
    assert proxy.library is None
    assert (proxy.username, proxy.password) == (None, None)
    (endpoint,) = parse_endpoints(loaded)
    assert endpoint.url == "https://ci.example.com/registry-events"
    (sync,) = parse_syncs(loaded)
    assert sync.credentials is None
    assert sync.first_run_within == 5.0


def _tap_cfg_keys() -> dict[str, list[str]]:
    """Every key tap.cfg lists, commented-out example sections included, by section."""
    import re

    keys: dict[str, list[str]] = {}
    section = ""
    for line in (REPO_ROOT / "tap.cfg").read_text().splitlines():
        line = line.removeprefix("# ") if line.startswith("# [") or section.count(":") else line
        if match := re.fullmatch(r"\[([^\]]+)\]", line):
            section = match.group(1)
            keys[section] = []
        elif match := re.fullmatch(r"([a-z_0-9]+) =.*", line):
            keys[section].append(match.group(1))
    return keys


def test_configuration_md_names_every_key_of_tap_cfg() -> None:
    keys = _tap_cfg_keys()
    assert "evict_interval" in keys["proxy:dockerhub"] and "tls_verify" in keys["sync:upstream"]
    text = (REPO_ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"[{section}] {key}"
        for section, names in keys.items()
        for key in names
        if f"`{key}`" not in text and f"`[{section}] {key}`" not in text
    ]
    assert not missing, f"keys of tap.cfg that docs/configuration.md does not name: {missing}"


def test_fleet_keys_load_with_redis_and_name_their_variable_without(tmp_path: Path) -> None:
    path = tmp_path / "fleet.cfg"
    path.write_text("[redis]\naddr = localhost:6379\n[fleet]\nlisten = tcp:5002\n")
    assert config.load(str(path), environ={}).fleet.listen == "tcp:5002"
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ={"REGISTRY_FLEET_SECRET": "s" * 16})
    assert "REGISTRY_FLEET_SECRET" in str(caught.value)
    assert "needs [redis] addr" in str(caught.value)


@pytest.mark.parametrize(
    ("section", "key"), [("http", "max_body_size"), ("storage", "max_manifest_size")]
)
def test_a_body_limit_of_nothing_is_refused(section: str, key: str) -> None:
    """A limit of 0 refused every manifest (or every small body) the registry is sent."""
    variable = f"REGISTRY_{section.upper()}_{key.upper()}"
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, environ={variable: "0"})
    assert str(caught.value) == (
        f"[{section}] {key}: must be at least 1KiB: '0' (from the environment variable {variable})"
    )
    assert getattr(getattr(config.load(None, environ={variable: "1KiB"}), section), key) == 1024
