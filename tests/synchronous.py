"""
Running a coroutine to its end without a reactor, for unit tests whose collaborators answer at
once (`MemoryDriver`, stubs): the test stays synchronous and never touches the global reactor.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """The coroutine's result (or its exception, raised); a coroutine still waiting on
    something once it has run as far as it can is a test failure."""
    results: list[T] = []
    failures: list[Failure] = []
    Deferred.fromCoroutine(coroutine).addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert results, "the coroutine waited on something that never came"
    return results[0]
