"""
Fail a test on any traceback a server logged while it ran, unless the test said it expects it.

A 500 or a traceback in normal operation is a defect, and many of them never reach the client
as a failed request (an error while answering early, a connection dropped after a TLS probe,
a failure in a background Deferred).  So every test is watched:

- in-process servers: an observer on Twisted's global log publisher collects every event that
  carries a failure, every critical event, every access event with status 500, and any text
  that reads as an unhandled error;
- child processes (``twistd -n registry``): their log files are registered with `watch_file`
  and scanned, from where the last scan stopped, for the same words.

A test that provokes a traceback on purpose declares it with
``@pytest.mark.expect_log(r"regex", ...)`` or ``log_watch.expect(r"regex")``; the pattern is
searched in the event's text, its failure's type and message, and its traceback.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable
from pathlib import Path

import attrs
from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from zope.interface import implementer

# What a log line looks like when something went wrong that nobody handled, or when the
# registry answered 500 (the access line: any 500 is a defect; 502/503 name a cause).
TROUBLE_TEXT = re.compile(
    r"Unhandled Error|Unhandled error in Deferred|Traceback \(most recent|#critical\]"
    r"|\baccess .*\bstatus=500\b"
)

# Child-process log files to scan, and how far each was scanned.
_files: dict[Path, int] = {}

# The scope (a test module) whose survivors are frozen: see `collect_garbage`.
_frozen_for: list[str | None] = [None]


def collect_garbage(scope: str | None = None) -> None:
    """
    Collect cyclic garbage, so that an unhandled error in a Deferred is logged now.

    A full collection walks every object alive (over 100,000 once the suite has imported
    everything): tens of milliseconds, each test.  So what survives a test's collection is
    frozen (`gc.freeze`), and the next test's collection walks only what was allocated since;
    at the first test of another ``scope`` (a module: its module fixtures were just torn
    down) everything is unfrozen and walked once more.  Garbage a test leaves is still found
    at its own end; garbage made of objects older than the test (a torn-down module fixture)
    is found at the next scope change at the latest.  ``None``: a plain collection.
    """
    if scope is None:
        gc.collect()
        return
    if scope != _frozen_for[0]:
        gc.unfreeze()
        _frozen_for[0] = scope
    gc.collect()
    gc.freeze()


def end_of_scope() -> None:
    """
    Collect everything once a scope (a test module) is over, its module fixtures torn down:
    an unhandled error in a Deferred that they kept alive is logged now, blamed on that module
    rather than on whichever module runs next (under pytest-xdist, not always the same one).
    """
    gc.unfreeze()
    _frozen_for[0] = None
    gc.collect()


def watch_file(path: Path) -> None:
    """Scan ``path`` (a server's log) at the end of the test running now, and of later ones."""
    _files.setdefault(path, path.stat().st_size if path.exists() else 0)


def _file_troubles() -> list[str]:
    troubles: list[str] = []
    for path, offset in list(_files.items()):
        try:
            with path.open("rb") as file:
                file.seek(offset)
                data = file.read()
        except FileNotFoundError:
            del _files[path]
            continue
        _files[path] = offset + len(data)
        troubles.extend(_blocks(data.decode("utf-8", "replace"), path))
    return troubles


def _blocks(text: str, path: Path) -> list[str]:
    """Each log entry that reads as trouble, with the indented lines (the traceback) after it."""
    found: list[str] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        if not TROUBLE_TEXT.search(lines[number]):
            number += 1
            continue
        start = number
        while start > 0 and lines[start].startswith(("\t", " ")):
            start -= 1  # the entry's first line says what failed
        end = number + 1
        while end < len(lines) and lines[end].startswith(("\t", " ")):
            end += 1
        found.append(f"{path}:\n" + "\n".join(lines[start:end]))
        number = end
    return found


def _describe(event: dict[str, object]) -> str:
    text = formatEventAsClassicLogText(event) or repr(event)
    failure = event.get("log_failure")
    if failure is not None and "Traceback" not in text:
        text += "\n" + str(getattr(failure, "getTraceback", lambda: failure)())
    return text


def is_trouble(event: dict[str, object]) -> bool:
    """An event that says something failed and nobody handled it."""
    if event.get("log_failure") is not None or event.get("isError"):
        return True
    if event.get("log_level") is LogLevel.critical:
        return True
    if event.get("access") and event.get("status") == 500:
        return True
    text = formatEventAsClassicLogText(event) or ""
    return bool(TROUBLE_TEXT.search(text))


@implementer(ILogObserver)
@attrs.define(eq=False)  # observers are told apart by identity (addObserver/removeObserver)
class LogWatch:
    """Collects troubling events between `start` and `finish`; allows the expected ones."""

    expected: list[re.Pattern[str]] = attrs.field(factory=list)
    troubles: list[str] = attrs.field(factory=list)
    # How many troubles each expected pattern matched (a test may assert it was seen).
    seen: dict[str, int] = attrs.field(factory=dict)
    # Passed to `collect_garbage` by `finish` (the test fixture names the test's module).
    scope: str | None = None

    def expect(self, *patterns: str) -> None:
        """Allow log entries matching any of ``patterns`` (regex, searched) in this test."""
        self.expected.extend(re.compile(p, re.S) for p in patterns)

    def __call__(self, event: dict[str, object]) -> None:
        if is_trouble(event):
            self.troubles.append(_describe(event))

    def start(self) -> None:
        globalLogPublisher.addObserver(self)

    def finish(self) -> list[str]:
        """Stop observing; the troubles no expected pattern allows."""
        # An unhandled error in a Deferred is logged when the Deferred is collected: collect
        # now, so it is blamed on the test that made it.
        collect_garbage(self.scope)
        globalLogPublisher.removeObserver(self)
        self.troubles.extend(_file_troubles())
        return list(self._unexpected(self.troubles))

    def _unexpected(self, troubles: Iterable[str]) -> Iterable[str]:
        for text in troubles:
            match = next((p for p in self.expected if p.search(text)), None)
            if match is None:
                yield text
            else:
                self.seen[match.pattern] = self.seen.get(match.pattern, 0) + 1
