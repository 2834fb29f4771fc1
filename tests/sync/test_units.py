"""The pure parts of replication: filters, semantic-version order, the throttle, the config."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from zope.interface import implementer

from registry import config
from registry.config import ConfigError
from registry.storage.filesystem import FilesystemDriver
from registry.sync.config import parse_sync, parse_syncs
from registry.sync.filters import RepositoryFilter, TagFilter, map_name, semver_key
from registry.sync.throttle import Throttle, ThrottledBody


def test_repository_globs() -> None:
    globs = RepositoryFilter(("library/*", "team/**", "exact/name"))
    assert globs.matches("library/alpine")
    assert not globs.matches("library/a/b")  # * stays within one component
    assert globs.matches("team/a/b/c") and globs.matches("team/x")
    assert globs.matches("exact/name") and not globs.matches("exact/names")
    assert globs.literal_names is None
    assert RepositoryFilter(("a/b", "c")).literal_names == ("a/b", "c")
    assert map_name("library/alpine", "library", "mirror") == "mirror/alpine"
    assert map_name("library/alpine", "", "mirror") == "mirror/library/alpine"
    assert map_name("library", "library", "") == "library"


def test_tag_filters_and_semver_order() -> None:
    tags = ["v1.9.0", "1.10.0", "1.10.0-rc.2", "1.10.0-rc.10", "latest", "2", "2.0.1+build"]
    assert TagFilter(newest=3).select(tags) == ["1.10.0", "2", "2.0.1+build"]
    order = sorted((t for t in tags if semver_key(t)), key=semver_key)  # type: ignore[arg-type,return-value]
    assert order == ["v1.9.0", "1.10.0-rc.2", "1.10.0-rc.10", "1.10.0", "2", "2.0.1+build"]
    assert semver_key("latest") is None and semver_key("01.2.3") is None
    assert TagFilter(globs=("v*", "la*")).select(tags) == ["latest", "v1.9.0"]
    chosen = TagFilter(regex=re.compile(r"1\..*"), exclude=re.compile(r".*-rc.*")).select(tags)
    assert chosen == ["1.10.0"]


def test_throttle_holds_a_transfer_to_its_rate() -> None:
    clock = Clock()
    throttle = Throttle(clock, 1000)
    assert throttle.debit(1000) == 0  # one second's burst
    assert throttle.debit(500) == pytest.approx(0.5)
    clock.advance(0.5)
    assert throttle.debit(0) == 0
    sent, elapsed = 0, 0.0
    for _ in range(100):  # 10 kB in 100-byte writes: never more than rate * time + burst
        delay = throttle.debit(100)
        sent += 100
        clock.advance(delay)
        elapsed += delay
    assert elapsed == pytest.approx(10.0, rel=0.01)
    assert Throttle(clock, 0).debit(10**9) == 0


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    good = parse_sync("hub", {"remote": "https://r.example/", "bandwidth": "50MB/s"})
    assert good.remote == "https://r.example" and good.bandwidth == 50_000_000
    assert good.direction == "pull" and good.repositories.globs == ("**",)
    assert good.first_run_within == 5.0
    assert parse_sync("hub", {"remote": "http://x", "first_run_within": "0s"}).first_run_within == 0
    cases = {
        "remote: required": {},
        "unknown key": {"remote": "http://x", "remotes": "y"},
        "tags_regex: not a regular expression": {"remote": "http://x", "tags_regex": "("},
        "direction": {"remote": "http://x", "direction": "both"},
        "concurrency: must be between 1 and 64: '0'": {"remote": "http://x", "concurrency": "0"},
        "concurrency: must be between": {"remote": "http://x", "concurrency": "1000"},
        "password: needs a username": {"remote": "http://x", "password": "p"},
        "authfile: give": {"remote": "http://x", "username": "u", "authfile": "/etc/hosts"},
        "authfile: /nonexistent": {"remote": "http://x", "authfile": "/nonexistent"},
        "repositories": {"remote": "http://x", "repositories": "/abs"},
        "interval": {"remote": "http://x", "interval": "0"},
        "first_run_within: not a duration": {"remote": "http://x", "first_run_within": "soon"},
    }
    for expected, values in cases.items():
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse_sync("hub", values)
    with pytest.raises(ConfigError, match="name"):
        parse_sync("..", {"remote": "http://x"})
    authfile = tmp_path / "config.json"
    authfile.write_text('{"auths": {"r.example:5000": {"username": "u", "password": "p"}}}')
    found = parse_sync("a", {"remote": "https://r.example:5000", "authfile": str(authfile)})
    assert found.credentials is not None and found.credentials.username == "u"
    # Named for a sync, a file without its remote's entry is refused, not run anonymously.
    with pytest.raises(ConfigError) as refused:
        parse_sync("a", {"remote": "https://other.example", "authfile": str(authfile)})
    assert str(refused.value) == (
        f"[sync:a] authfile: {authfile} has no credentials for other.example"
    )


def test_sections_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "registry.cfg"
    path.write_text("[sync:up]\nremote = https://r.example\nusername = mirror\n")
    loaded = config.load(str(path), environ={"REGISTRY_SYNC_UP_PASSWORD": "from-env"})
    (sync,) = parse_syncs(loaded)
    assert sync.name == "up" and sync.credentials is not None
    assert (sync.credentials.username, sync.credentials.password) == ("mirror", "from-env")
    path.write_text("[sync:up]\nremote = https://r.example\nintervall = 5m\n")
    with pytest.raises(ConfigError, match=r"\[sync:up\] intervall: unknown key"):
        parse_syncs(config.load(str(path), environ={}))


@pytest_twisted.ensureDeferred
async def test_a_throttled_push_reads_its_file_in_small_chunks(
    tmp_path: Path, thread_pool: Any
) -> None:
    """A storage reader's chunk is passed on whole before the throttle can pause it: a push's
    body is read in sixteenths of a second's worth, not the reader's 2 MiB (four pushes of
    2 MiB chunks at 5 MB/s ran 1.6 s ahead of the budget)."""
    from twisted.internet import reactor

    rate = 16_000_000
    data = os.urandom(4 * 1024 * 1024)
    (tmp_path / "blob").write_bytes(data)
    driver = FilesystemDriver(str(tmp_path), reactor, thread_pool)
    body = ThrottledBody(await driver.reader("blob"), Throttle(reactor, rate))
    writes: list[bytes] = []

    @implementer(IConsumer)
    class Collect:
        def registerProducer(self, producer: object, streaming: bool) -> None:
            pass

        def unregisterProducer(self) -> None:
            pass

        def write(self, chunk: bytes) -> None:
            writes.append(chunk)

    await body.startProducing(Collect())
    assert b"".join(writes) == data
    assert max(len(w) for w in writes) == rate // 16
