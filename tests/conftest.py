"""Shared fixtures: see tests/e2e/conftest.py for the running-server fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.python.threadpool import ThreadPool

from tests.logwatch import LogWatch, end_of_scope

# The SeaweedFS session fixture, defined here once: a test module importing it would get an
# instance of its own (pytest keys a fixture's cache by where it is defined), and each one
# costs seconds to start and hundreds of MiB until the session ends.
from tests.storage.s3server import s3_server  # noqa: F401 - fixture
from tests.threads import started_pool


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expect_log(*patterns): the test provokes server log failures matching these regexes",
    )


# The files that take longest (minutes of waiting on servers: worker processes, start-up
# failures, the CLI, the cache fleet), run first: `make test` runs files in several processes
# (pytest-xdist, by file, in this order), and one of these started last would run alone at
# the end while the other processes sit idle.  A file missing here only runs in its turn.
LONGEST_FIRST = (
    "tests/server/test_workers.py",
    "tests/server/test_startup_failures.py",
    "tests/ops/test_cli.py",
    "tests/proxy/test_fleet.py",
    "tests/proxy/test_fleet_outages.py",
    "tests/e2e/test_upload_resilience.py",
    "tests/client/test_copy_command.py",
    "tests/e2e/test_s3_outage.py",
    "tests/server/test_workers_signals.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: number for number, path in enumerate(LONGEST_FIRST)}
    # A stable sort: each file's tests keep their order, the other files theirs.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(autouse=True)
def log_watch(request: pytest.FixtureRequest) -> Iterator[LogWatch]:
    """
    Fails the test when a server it ran (in this process or a child) logged a traceback,
    an unhandled error or a critical event it did not declare (`tests.logwatch`).
    """
    watch = LogWatch(scope=request.node.nodeid.split("::")[0])
    for marker in request.node.iter_markers("expect_log"):
        watch.expect(*marker.args)
    watch.start()
    yield watch
    unexpected = watch.finish()
    if unexpected:
        shown = "\n\n".join(text[-4000:] for text in unexpected[:5])
        pytest.fail(
            f"{len(unexpected)} unexpected failure(s) in server logs:\n\n{shown}", pytrace=False
        )


@pytest.fixture(scope="module", autouse=True)
def module_log_watch() -> Iterator[None]:
    """
    Fails the module's last test (at teardown) when the module's own fixtures, torn down by
    then, leave an unhandled error or a traceback behind (`tests.logwatch.end_of_scope`).
    Autouse and defined here, it is set up before the module's other module fixtures, and so
    torn down after them.
    """
    yield
    watch = LogWatch()
    watch.start()
    end_of_scope()
    unexpected = watch.finish()
    if unexpected:
        shown = "\n\n".join(text[-4000:] for text in unexpected[:5])
        pytest.fail(
            f"{len(unexpected)} unexpected failure(s) in server logs after the module's tests:"
            f"\n\n{shown}",
            pytrace=False,
        )


@pytest.fixture
def thread_pool() -> Iterator[ThreadPool]:
    """A started pool of four threads: what a storage driver gets in the tests."""
    yield from started_pool("test-pool", 4)


@pytest.fixture
def one_thread_pool() -> Iterator[ThreadPool]:
    """A started pool of one thread: work queued behind a held thread waits, visibly."""
    yield from started_pool("test-one-thread", 1)
