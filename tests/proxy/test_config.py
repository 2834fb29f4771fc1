"""[proxy:NAME] sections: parsed values, and errors that name the section and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.config import ConfigError, load
from registry.proxy.config import parse_proxies


def _config(tmp_path: object, text: str) -> object:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "c.cfg"
    path.write_text(text)
    return load(str(path), {})


def test_proxy_sections_parse(tmp_path: object) -> None:
    config = _config(
        tmp_path,
        "[proxy:dockerhub]\nremoteurl = https://registry-1.docker.io/\nprefix = docker.io\n"
        "default = true\nmax_size = 50GiB\nttl = 7d\ntag_freshness = 5m\ntimeout = 10s\n"
        "[proxy:quay]\nremoteurl = https://quay.io\nprefix = quay.io\nusername = u\n"
        "password = p\n",
    )
    hub, quay = parse_proxies(config)  # type: ignore[arg-type]
    assert hub.name == "dockerhub"
    assert hub.remoteurl == "https://registry-1.docker.io"
    assert hub.default
    assert hub.max_size == 50 * 1024**3
    assert hub.ttl == 7 * 86400
    assert hub.tag_freshness == 300
    assert hub.timeout == 10
    assert quay.max_size is None
    assert quay.ttl is None
    assert (quay.username, quay.password) == ("u", "p")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("remoteurl = ftp://x\nprefix = a", "[proxy:x] remoteurl: "),
        ("remoteurl = http://x\nprefix = a\nttl = soon", "[proxy:x] ttl: not a duration"),
        ("remoteurl = http://x\nprefix = a\nmax_size = big", "[proxy:x] max_size: not a size"),
        ("remoteurl = http://x\nprefix = a\ndefault = maybe", "[proxy:x] default: not a bool"),
        ("remoteurl = http://x\nprefix = a\ncolour = red", "[proxy:x] colour: unknown key"),
        ("remoteurl = http://x\nprefix = Bad Prefix", "[proxy:x] prefix: "),
        ("prefix = a", "[proxy:x] remoteurl: required"),
        ("remoteurl = http://x", "[proxy:x] prefix: required"),
        ("remoteurl = http://x\nprefix = a\ntimeout = 0", "[proxy:x] timeout: must be"),
    ],
)
def test_bad_proxy_values_name_section_and_key(tmp_path: object, body: str, message: str) -> None:
    config = _config(tmp_path, f"[proxy:x]\n{body}\n")
    with pytest.raises(ConfigError) as info:
        parse_proxies(config)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_two_defaults_or_one_prefix_twice_are_refused(tmp_path: object) -> None:
    config = _config(
        tmp_path,
        "[proxy:a]\nremoteurl = http://a\ndefault = true\n"
        "[proxy:b]\nremoteurl = http://b\ndefault = true\n",
    )
    with pytest.raises(ConfigError, match="only one upstream may be the default"):
        parse_proxies(config)  # type: ignore[arg-type]
    config = _config(
        tmp_path,
        "[proxy:a]\nremoteurl = http://a\nprefix = p\n"
        "[proxy:b]\nremoteurl = http://b\nprefix = p\n",
    )
    with pytest.raises(ConfigError, match="already used"):
        parse_proxies(config)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "[proxy:a]\nremoteurl = http://x\nprefix = docker.io/q\n"
            "[proxy:up]\nremoteurl = http://x\nprefix = docker.io\n",
            "[proxy:a] prefix: 'docker.io/q' lies inside the prefix 'docker.io' of [proxy:up]",
        ),
        (
            "[proxy:hub]\nremoteurl = https://registry-1.docker.io\ndefault = true\n"
            "[proxy:lib]\nremoteurl = http://x\nprefix = library/x\n",
            "[proxy:lib] prefix: 'library/x' is where [proxy:hub]",
        ),
    ],
)
def test_prefixes_that_would_share_local_names_are_refused(
    tmp_path: object, body: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_proxies(_config(tmp_path, body))  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_a_library_prefix_next_to_a_default_that_keeps_bare_names_is_taken(
    tmp_path: object,
) -> None:
    # The default (not Docker Hub, no library key) stores "alpine" as "alpine": no name of
    # its can be "library/...", which the prefix serves.
    body = (
        "[proxy:a]\nremoteurl = http://127.0.0.1:9\ndefault = true\n"
        "[proxy:b]\nremoteurl = http://127.0.0.1:9\nprefix = library\n"
    )
    assert [p.name for p in parse_proxies(_config(tmp_path, body))] == ["a", "b"]  # type: ignore[arg-type]


def test_the_start_up_line_names_what_each_cache_serves(tmp_path: Path) -> None:
    """A prefixless default cache's line reads as a sentence (no empty prefix before "and")."""
    from tests.e2e.harness import RegistryProcess

    registry = RegistryProcess(
        tmp_path,
        {
            "proxy:hub": {"remoteurl": "http://127.0.0.1:9", "default": "true"},
            "proxy:quay": {"remoteurl": "http://127.0.0.1:9", "prefix": "quay.io"},
        },
    )
    registry.start()
    registry.stop()
    log = registry.log_text()
    assert "proxy hub: http://127.0.0.1:9 for unprefixed names (default)\n" in log, log
    assert "proxy quay: http://127.0.0.1:9 for quay.io/*\n" in log, log
