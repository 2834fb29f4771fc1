"""
A pull's ``bandwidth`` holds with several transfers sharing it: a blob whose body starts while
the budget is spent is paused from its first bytes on (those that came with the headers), and
stays paused until the throttle releases it.  Measured on the throttle's own accounting and on
the order of events, not on a clock.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from registry.storage.uploads import UploadAppender, UploadStore
from registry.sync.throttle import PausingGate, Throttle
from tests.client.conftest import ClientFactory
from tests.e2e.conftest import Starter
from tests.e2e.tools import Registry2Process
from tests.sync.helpers import assert_same_image, push_image, wait_fresh_run, wait_runs

RATE = 1_000_000
# How far the bytes passed may run ahead of the budget: by the socket reads (64 KiB each, one
# per transfer) that emptied it, not by seconds' worth as a body read while paused does.
OVERDRAW = RATE // 2


def _record_deficits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """How far behind its budget each throttle is after each debit, from now on."""
    deficits: list[float] = []
    debit = Throttle.debit

    def recording_debit(self: Throttle, amount: int) -> float:
        delay = debit(self, amount)
        deficits.append(-self._allowance)
        return delay

    monkeypatch.setattr(Throttle, "debit", recording_debit)
    return deficits


@pytest_twisted.ensureDeferred
async def test_a_pull_with_concurrent_transfers_keeps_to_its_bandwidth(
    registry2: Registry2Process,
    start_registry: Starter,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = make_client(f"http://{registry2.host}")
    # More layers than transfers in flight, each half a second's worth: most start while the
    # others have spent the budget.
    await push_image(remote, "team/app", "v1", layers=8, layer_size=RATE // 2)

    deficits = _record_deficits(monkeypatch)
    closed_reads: list[int] = []
    passed = PausingGate.passed

    def recording_passed(self: PausingGate, amount: int) -> None:
        if self._held_by_throttle:
            closed_reads.append(amount)
        passed(self, amount)

    monkeypatch.setattr(PausingGate, "passed", recording_passed)

    # Storage that answers on a later reactor turn (S3, a worker thread), as a local disk does
    # not: the remote's first body bytes wait in Twisted's buffer until the body is asked for.
    opening = UploadStore.open

    async def later_open(self: UploadStore, *args: Any, **kwargs: Any) -> UploadAppender:
        await deferLater(reactor, 0)
        return await opening(self, *args, **kwargs)

    monkeypatch.setattr(UploadStore, "open", later_open)

    registry = await start_registry(
        {
            "sync:mirror": {
                "remote": f"http://{registry2.host}",
                "first_run_within": "0s",
                "repositories": "team/app",
                "interval": "1h",
                "concurrency": "4",
                "bandwidth": str(RATE),
            }
        }
    )
    status = await wait_runs(registry.url, "mirror")
    assert status["last"]["result"] == "ok", status
    assert status["last"]["blobs"] == 9
    await assert_same_image(remote, "team/app", make_client(registry.url), "team/app", "v1")

    # No body bytes came through a gate the throttle held closed, so the budget never ran
    # further behind than the reads that emptied it.
    assert closed_reads == []
    assert max(deficits) <= OVERDRAW, max(deficits)


SMALL_RATE = 200_000
SMALL_LAYERS = 30
CONCURRENCY = 3


@pytest.mark.parametrize("direction", ["pull", "push"])
@pytest_twisted.ensureDeferred
async def test_small_blobs_keep_to_the_bandwidth_and_are_counted(
    registry2: Registry2Process,
    start_registry: Starter,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
) -> None:
    """
    Blobs that pass in one read each: a transfer's pauses come after its bytes, so such blobs
    went one after the other at the network's speed (a reviewer's 1.6 MB at ``200KB``: 0.25
    s), and a push counted none of them in ``bytes_transferred`` (its last chunk was neither
    counted nor owed).  Each transfer now starts once the bytes before it are within the
    rate: the budget never runs further behind than the transfers in flight at once.
    """
    deficits = _record_deficits(monkeypatch)
    sync = {
        "remote": f"http://{registry2.host}",
        "first_run_within": "0s",
        "repositories": "team/many",
        "interval": "1h",
        "concurrency": str(CONCURRENCY),
        "bandwidth": str(SMALL_RATE),
    }
    layer = 16_000
    if direction == "pull":
        source = make_client(f"http://{registry2.host}")
        await push_image(source, "team/many", "v1", layers=SMALL_LAYERS, layer_size=layer)
        registry = await start_registry({"sync:small": sync})
        target = make_client(registry.url)
    else:
        # Runs every second: the one after the image is pushed sends it.
        pushing = {**sync, "direction": "push", "interval": "1s"}
        registry = await start_registry({"sync:small": pushing})
        source = make_client(registry.url)
        await push_image(source, "team/many", "v1", layers=SMALL_LAYERS, layer_size=layer)
        target = make_client(f"http://{registry2.host}")
    if direction == "pull":
        status = await wait_runs(registry.url, "small")
    else:
        status = await wait_fresh_run(registry.url, "small")
    last = status["last"]
    assert last["result"] == "ok", status
    assert last["blobs"] == SMALL_LAYERS + 1
    assert last["bytes_transferred"] == last["bytes"] > SMALL_LAYERS * layer
    await assert_same_image(source, "team/many", target, "team/many", "v1")
    largest = layer + 1000 * (SMALL_LAYERS - 1)  # (push_image's sizes grow by 1000 a layer)
    assert max(deficits) <= CONCURRENCY * largest, max(deficits)
