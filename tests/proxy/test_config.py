"""[proxy:NAME] sections: parsed values, and errors that name the section and the key."""

from __future__ import annotations

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
