"""How many workers a configuration gets (`registry.server.workers.resolve`), and each one's
share of the failed-login budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.config import ConfigError, load
from registry.server.workers import cores, failures_per_worker, resolve
from tests.e2e.harness import write_config


def config_of(tmp_path: Path, sections: dict[str, dict[str, str]]) -> object:
    return load(str(write_config(tmp_path / "r.cfg", sections)), {})


def test_auto_is_one_per_core(tmp_path: Path) -> None:
    assert resolve(config_of(tmp_path, {})) == cores()  # type: ignore[arg-type]
    assert resolve(config_of(tmp_path, {"http": {"workers": "3"}})) == 3  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sections", "reason"),
    [
        ({"storage": {"driver": "inmemory"}}, "inmemory"),
        ({"proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "hub"}}, "[proxy:NAME]"),
        (
            {
                "proxy:hub": {"remoteurl": "http://127.0.0.1:9", "prefix": "hub"},
                "redis": {"addr": "127.0.0.1:6379"},
            },
            "fleet",
        ),
        ({"http": {"port": "unix:/tmp/registry.sock"}}, "unix:"),
        ({"debug": {"addr": "unix:/tmp/debug.sock"}}, "unix:"),
    ],
)
def test_one_worker_where_state_is_not_shared(
    tmp_path: Path, sections: dict[str, dict[str, str]], reason: str
) -> None:
    assert resolve(config_of(tmp_path, sections)) == 1  # type: ignore[arg-type]
    explicit = {**sections, "http": {**sections.get("http", {}), "workers": "2"}}
    with pytest.raises(ConfigError, match="only 1 worker can serve") as error:
        resolve(config_of(tmp_path, explicit))  # type: ignore[arg-type]
    assert reason in str(error.value)


@pytest.mark.parametrize("text", ["0", "-1", "two", ""])
def test_workers_must_be_auto_or_a_count(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"\[http\] workers"):
        config_of(tmp_path, {"http": {"workers": text}})


def test_failed_login_budget_is_shared() -> None:
    assert failures_per_worker(10, 1) == 10
    assert failures_per_worker(10, 2) == 5
    assert failures_per_worker(10, 3) == 4  # rounded up: never 0
    assert failures_per_worker(1, 4) == 1
    assert failures_per_worker(0, 4) == 0  # off stays off
