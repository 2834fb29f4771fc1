"""The accept board's rule (registry.server.balance), on a real shared memfd."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock

from registry.server import board
from registry.server.balance import AcceptBoard, slack

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
    first.connections_changed(2)
    second.connections_changed(0)
    assert not first.may_accept()
    assert second.may_accept()
    first.connections_changed(1)  # within `slack` of the other again
    assert first.may_accept()


def test_slack_grows_with_the_load(boards: tuple[int, AcceptBoard, AcceptBoard]) -> None:
    _, first, second = boards
    assert slack(0) == slack(8) == 1 and slack(800) == 100
    first.connections_changed(800)
    second.connections_changed(700)
    assert first.may_accept()
    second.connections_changed(699)
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
