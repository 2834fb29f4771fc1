"""
Text a remote chooses (an error body's message, a name in its catalog) reaches the sync's log
lines and the ``error_messages`` of ``/sync/status`` with its control characters and line
separators escaped: a 403 whose message held a line break and a made-up log line used to
write that line into the log as if the registry had.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from registry.logtext import one_line
from tests.e2e.conftest import Starter
from tests.fakes.upstream import Switches, start_fake_upstream
from tests.sync.helpers import wait_runs

FORGED = "2026-12-07T00:00:00+0000 [registry.sync.service#info] sync evil: FORGED LINE"
# Every kind of line end a log reader may split on, then the forged line.
MESSAGE = "denied\n" + FORGED + "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x1b[31m\u202eend"
# A catalog name with a carriage return in it (never a valid name: refused, and said so).
NAME = "x\r" + FORGED


@pytest.fixture
def sync_lines() -> Iterator[list[str]]:
    """The sync log lines of the in-process registries, as a log file gets their text."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("sync"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_one_line_escapes_what_ends_or_hides_a_line() -> None:
    assert (
        one_line("team/app: registry 404: NAME_UNKNOWN") == "team/app: registry 404: NAME_UNKNOWN"
    )
    escaped = one_line(MESSAGE)
    assert escaped.splitlines() == [escaped] and escaped.isprintable()
    assert escaped == (
        "denied\\n" + FORGED + "\\r\\x0b\\x0c\\x1c\\x1d\\x1e\\x85\\u2028\\u2029\\x1b[31m\\u202eend"
    )
    assert one_line("é ünïcödé 名前 ok") == "é ünïcödé 名前 ok"  # printable text stays
    assert one_line("a" * 10 + "\n", limit=5) == "aaaaa…"


@pytest_twisted.ensureDeferred
async def test_text_from_the_remote_cannot_write_log_lines(
    start_registry: Starter, sync_lines: list[str]
) -> None:
    switches = Switches(auth="none", repository_errors={"team/app": (403, MESSAGE)})
    fake = await start_fake_upstream(reactor, switches=switches)
    try:
        fake.content.add_image("team/app", "v1", [1000])
        fake.content.add_image(NAME, "v1", [1000])
        local = await start_registry(
            {
                "sync:evil": {
                    "remote": fake.url,
                    "first_run_within": "0s",
                    "repositories": "**",
                    "interval": "1h",
                }
            }
        )
        status = await wait_runs(local.url, "evil")
        messages = status["last"]["error_messages"]
        assert len(messages) == 2, messages
        for text in [*messages, *sync_lines]:
            assert text.splitlines() == [text] and text.isprintable(), repr(text)
        errors = [line for line in sync_lines if "FORGED" in line]
        assert len(errors) == 2, sync_lines
        assert sorted(messages) == sorted(line.removeprefix("sync evil: ") for line in errors)
        denied = next(m for m in messages if m.startswith("team/app:"))
        assert "denied\\n2026-12-07T00:00:00+0000 [registry.sync.service#info]" in denied
        assert "\\u2028\\u2029" in denied
        refused = next(m for m in messages if not m.startswith("team/app:"))
        assert refused.startswith("x\\r2026-12-07T00:00:00+0000 [registry.sync.service#info]")
        assert "not a valid repository name" in refused
    finally:
        await fake.stop()
