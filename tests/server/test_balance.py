"""The accept board's rule (registry.server.balance), on a real shared memfd."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock

from registry.server import board
from registry.server.balance import AcceptBoard, holds_back, slack

pytestmark = pytest.mark.skipif(not board.available(), reason="no memfd on this platform")


class _Port:
    """Stands in for a BalancedPort: the board only calls `recheck` on it."""

    def __init__(self) -> None:
        self.rechecks = 0

    def recheck(self) -> None:
        self.rechecks += 1


@pytest.fixture
def boards() -> Iterator[tuple[int, AcceptBoard, AcceptBoard]]:
    fd = board.create_board(2)
    clock = Clock()
    first = AcceptBoard(os.dup(fd), 2, 0, clock)
    second = AcceptBoard(os.dup(fd), 2, 1, clock)
    first.join(_Port())  # type: ignore[arg-type]
    second.join(_Port())  # type: ignore[arg-type]
    try:
        yield fd, first, second
    finally:
        os.close(fd)


def test_equal_loads_both_accept(boards: tuple[int, AcceptBoard, AcceptBoard]) -> None:
    _, first, second = boards
    first.connections_changed(3)
    second.connections_changed(3)
    assert first.may_accept() and second.may_accept()


def test_the_busier_worker_holds_back(boards: tuple[int, AcceptBoard, AcceptBoard]) -> None:
    _, first, second = boards
    first.connections_changed(1)
    second.connections_changed(0)
    assert not first.may_accept()  # one more would put it 2 ahead: more than `slack`
    assert second.may_accept()
    second.connections_changed(1)  # level again
    assert first.may_accept()


def test_slack_grows_with_the_load(boards: tuple[int, AcceptBoard, AcceptBoard]) -> None:
    _, first, second = boards
    assert slack(0) == slack(8) == 1 and slack(800) == 100
    first.connections_changed(800)
    second.connections_changed(701)
    assert first.may_accept()  # 801 would be 100 ahead: as far as `slack` lets it
    second.connections_changed(700)
    assert not first.may_accept()


def test_a_closed_connection_rechecks_the_ports() -> None:
    fd = board.create_board(2)
    port = _Port()
    view = AcceptBoard(fd, 2, 0, Clock())
    view.join(port)  # type: ignore[arg-type]
    view.connections_changed(5)
    assert port.rechecks == 0
    view.connections_changed(4)
    assert port.rechecks == 1


def test_a_cleared_or_departed_worker_is_ignored(
    boards: tuple[int, AcceptBoard, AcceptBoard],
) -> None:
    fd, first, second = boards
    first.connections_changed(5)
    second.connections_changed(0)
    assert not first.may_accept()
    board.clear_slot(fd, 1)  # the supervisor, once worker 1 exited
    assert first.may_accept()
    second.connections_changed(0)  # a live worker writes its slot again
    assert not first.may_accept()
    second.leave(second._ports[0])  # stopped listening (draining): out of the turns
    assert first.may_accept()


@pytest.mark.parametrize("workers", [2, 4, 8])
@pytest.mark.parametrize("busiest_first", [True, False])
def test_no_worker_gets_more_than_slack_ahead(workers: int, busiest_first: bool) -> None:
    """
    Connections arriving one at a time, each taken by a worker that does not hold back (the
    busiest of them, or the idlest): at no point is a worker more than `slack` ahead of
    another, as configuration.md says.  Holding back only once another had fewer by more than
    `slack` let 8 connections over 4 workers end up as [3, 3, 1, 1].
    """
    counts = [0] * workers
    for _ in range(40 * workers):
        willing = [
            slot
            for slot in range(workers)
            if not holds_back(counts[slot], counts[:slot] + counts[slot + 1 :])
        ]
        assert willing, counts  # somebody always accepts
        take = max if busiest_first else min
        counts[take(willing, key=lambda slot: (counts[slot], slot))] += 1
        assert max(counts) - min(counts) <= slack(max(counts)), counts
    assert sum(counts) == 40 * workers
