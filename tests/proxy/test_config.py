"""Pure pieces: [proxy:NAME] parsing, the eviction plan."""

from __future__ import annotations

import pytest

from registry.config import ConfigError, load
from registry.proxy.config import parse_proxies
from registry.proxy.index import CacheIndex


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


def _index() -> CacheIndex:
    index = CacheIndex()
    index.add_manifest("r", "m1", 10, ["c1", "shared", "l1"], now=1)
    index.add_blob("r", "c1", 10, now=2)
    index.add_blob("r", "shared", 100, now=3)
    index.add_blob("r", "l1", 100, now=4)
    index.add_manifest("r", "m2", 10, ["c2", "shared", "l2"], now=5)
    index.add_blob("r", "c2", 10, now=6)
    index.add_blob("r", "l2", 100, now=7)
    return index


def test_plan_evicts_least_recently_used_image_but_keeps_shared_layer() -> None:
    index = _index()
    assert index.size == 340
    victims = index.plan(now=10, max_size=250, ttl=None)
    assert [(v.kind, v.digest) for v in victims] == [
        ("manifest", "m1"),
        ("blob", "c1"),
        ("blob", "l1"),
    ]


def test_plan_skips_what_is_in_use_and_ttl_spares_referenced_blobs() -> None:
    index = _index()
    index.use("m1")  # being served: the next least recently used image goes instead
    victims = index.plan(now=10, max_size=250, ttl=None)
    assert [v.digest for v in victims] == ["m2", "c2", "l2"]
    index.release("m1")
    index.touch_manifest("r", "m2", now=100)
    # Everything but m2 is older than the TTL; m2 keeps c2, shared and l2.
    victims = index.plan(now=101, max_size=None, ttl=50)
    assert {v.digest for v in victims} == {"m1", "c1", "l1"}


def test_index_round_trips_and_tolerates_garbage() -> None:
    index = _index()
    index.use("l2")
    again = CacheIndex.loads(index.dumps())
    assert again.size == index.size
    assert again.refcount["shared"] == 2
    assert [v.digest for v in again.plan(10, 250, None)] == ["m1", "c1", "l1"]
    assert CacheIndex.loads(b"not json").size == 0
