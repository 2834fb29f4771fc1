"""The log watch (tests/logwatch.py) itself: what it catches, what a test may allow."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from tests import logwatch
from tests.logwatch import LogWatch

log = Logger()


def _failure(message: str) -> Failure:
    try:
        raise ValueError(message)
    except ValueError:
        return Failure()


@pytest.mark.expect_log(r"ValueError: (one|two)", r"something critical")
def test_failures_critical_events_and_unhandled_errors_are_caught() -> None:
    watch = LogWatch()
    watch.start()
    log.failure("handler broke", _failure("one"))
    log.critical("something critical")
    legacy_log.err(_failure("two"), "Unhandled Error")
    log.info("an ordinary line")
    log.error("a storage failure on PUT /v2/x: No space left on device")
    troubles = watch.finish()
    assert len(troubles) == 3, troubles
    assert "ValueError: one" in troubles[0]
    assert "something critical" in troubles[1]
    assert "ValueError: two" in troubles[2]


@pytest.mark.expect_log(r"ValueError: (expected|surprise)")
def test_expected_patterns_are_allowed_and_counted() -> None:
    watch = LogWatch()
    watch.expect(r"ValueError: expected")
    watch.start()
    log.failure("handler broke", _failure("expected"))
    log.failure("handler broke", _failure("surprise"))
    troubles = watch.finish()
    assert len(troubles) == 1 and "surprise" in troubles[0]
    assert watch.seen == {"ValueError: expected": 1}


@pytest.mark.expect_log(r"ValueError: declared by the marker")
def test_the_marker_allows_a_failure() -> None:
    log.failure("on purpose", _failure("declared by the marker"))


def test_child_logs_are_scanned_from_where_the_last_scan_stopped(tmp_path: Path) -> None:
    path = tmp_path / "registry.log"
    path.write_text("2026-01-01T00:00:00+0000 [-] old line\n")
    logwatch.watch_file(path)
    with path.open("a") as file:
        file.write(
            "2026-01-01T00:00:01+0000 [_GenericHTTPChannelProtocol,0,127.0.0.1] Unhandled Error\n"
            "\tTraceback (most recent call last):\n"
            "\tbuiltins.AttributeError: oops\n"
            "2026-01-01T00:00:02+0000 [registry.tap#critical] upload purge failed\n"
            "\tTraceback (most recent call last):\n"
            "\tbuiltins.OSError: disk\n"
            "2026-01-01T00:00:03+0000 [-] fine again\n"
        )
    watch = LogWatch()
    watch.expect(r"AttributeError: oops", r"OSError: disk")
    watch.start()
    assert watch.finish() == []
    assert watch.seen == {"AttributeError: oops": 1, "OSError: disk": 1}
    watch = LogWatch()
    watch.start()
    assert watch.finish() == []  # already scanned


@pytest.mark.expect_log(r"status=500")
def test_a_500_answer_is_caught_and_other_statuses_are_not(tmp_path: Path) -> None:
    """Any 500 is a defect; 502 and 503 name their cause (upstream down, full disk)."""
    watch = LogWatch()
    watch.start()
    for status in (200, 404, 502, 503, 500):
        log.info("access {line}", line=f"method=GET status={status}", access=True, status=status)
    troubles = watch.finish()
    assert len(troubles) == 1 and "status=500" in troubles[0], troubles
    path = tmp_path / "registry.log"
    path.write_text("")
    logwatch.watch_file(path)
    path.write_text(
        "2026-01-01T00:00:01+0000 [registry.http.request#info] access method=GET path=/v2/ "
        "status=503 bytes=0\n"
        "2026-01-01T00:00:02+0000 [registry.http.request#info] access method=PUT path=/v2/a "
        "status=500 bytes=0\n"
    )
    watch = LogWatch()
    watch.start()
    troubles = watch.finish()
    assert len(troubles) == 1 and "status=500" in troubles[0], troubles


def _drop_a_failed_deferred_in_a_cycle() -> None:
    class Holder:
        deferred: Deferred[None]
        itself: object

    holder = Holder()
    holder.deferred = fail(ValueError("lost in a cycle"))
    holder.itself = holder  # only the cyclic collector frees it, and the Deferred with it


@pytest.mark.expect_log(r"Unhandled error in Deferred", r"ValueError: lost in a cycle")
def test_a_failed_deferred_dropped_in_a_cycle_is_caught_at_the_end_of_its_test() -> None:
    """Survivors are frozen between tests (`logwatch.collect_garbage`): a test's own garbage
    is still collected, and its unhandled error reported, at that test's end."""
    for _ in range(2):  # the first collection of the scope, then one over frozen survivors
        watch = LogWatch(scope="tests/test_logwatch.py::cycle")
        watch.start()
        _drop_a_failed_deferred_in_a_cycle()
        troubles = watch.finish()
        assert any("ValueError: lost in a cycle" in text for text in troubles), troubles
