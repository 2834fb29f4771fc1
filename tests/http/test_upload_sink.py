"""
UploadSink on its own: chunks queued while the upload opens, back-pressure while the writer is
behind, refusals, and what a client leaving mid-body keeps.  A stub writer whose writes finish
when the test says so stands in for storage; no reactor, no sockets.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from registry.api.errors import BLOB_UPLOAD_UNKNOWN, UNKNOWN, RegistryError
from registry.http.upload_sink import UploadSink


@attrs.define
class StubWriter:
    """Records what it was given; ``slow`` makes each write pending until `finish_write`."""

    name: str = "repo"
    upload_id: str = "u1"
    slow: bool = False
    fail_with: Exception | None = None
    written: list[bytes] = attrs.Factory(list)
    pending: list[Deferred[None]] = attrs.Factory(list)
    closed: int = 0

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.written)

    def write(self, data: bytes) -> Deferred[None] | None:
        if self.fail_with is not None:
            raise self.fail_with
        self.written.append(data)
        if not self.slow:
            return None
        waiter: Deferred[None] = Deferred()
        self.pending.append(waiter)
        return waiter

    def finish_write(self) -> None:
        self.pending.pop(0).callback(None)

    async def close(self) -> None:
        self.closed += 1


@attrs.define
class Watcher:
    ready: int = 0
    refused: list[RegistryError] = attrs.Factory(list)

    def on_ready(self) -> None:
        self.ready += 1

    def on_refused(self, error: RegistryError) -> None:
        self.refused.append(error)


def explain(exc: BaseException) -> RegistryError:
    if isinstance(exc, RegistryError):
        return exc
    return RegistryError(UNKNOWN, {"reason": str(exc)})


async def opened_by(gate: Deferred[StubWriter]) -> StubWriter:
    return await gate


def sink_opened_by(gate: Deferred[StubWriter]) -> tuple[UploadSink[StubWriter], Watcher]:
    prepare: Coroutine[Any, Any, StubWriter] = opened_by(gate)
    sink = UploadSink(prepare, explain)
    watcher = Watcher()
    sink.watch(watcher.on_ready, watcher.on_refused)
    return sink, watcher


def result_of(sink: UploadSink[StubWriter]) -> Deferred[StubWriter]:
    return Deferred.fromCoroutine(sink.result())


def test_chunks_that_arrive_while_the_upload_opens_are_written_in_order_once_it_is_open() -> None:
    gate: Deferred[StubWriter] = Deferred()
    sink, watcher = sink_opened_by(gate)
    paused = sink.feed(b"first")
    assert isinstance(paused, Deferred) and not paused.called  # socket paused meanwhile
    assert sink.feed(b"second") is paused
    assert watcher.ready == 0
    writer = StubWriter()
    gate.callback(writer)
    assert writer.written == [b"first", b"second"]
    assert paused.called
    assert watcher.ready == 1
    assert sink.received == len(b"firstsecond")


def test_a_writer_behind_pauses_the_socket_until_it_has_caught_up() -> None:
    writer = StubWriter(slow=True)
    sink, _ = sink_opened_by(Deferred.fromCoroutine(_value(writer)))
    paused = sink.feed(b"a")
    assert isinstance(paused, Deferred) and not paused.called
    assert sink.feed(b"b") is paused
    assert writer.written == [b"a"]  # one write at a time: "b" waits for "a"
    writer.finish_write()
    assert writer.written == [b"a", b"b"] and not paused.called
    writer.finish_write()
    assert paused.called
    assert sink.feed(b"c") is not None  # behind again: a new pause
    writer.finish_write()
    done = result_of(sink)
    assert done.called and done.result is writer
    assert writer.closed == 0  # the route decides what becomes of the upload


def test_a_fast_writer_never_pauses_the_socket() -> None:
    writer = StubWriter()
    sink, _ = sink_opened_by(Deferred.fromCoroutine(_value(writer)))
    assert sink.feed(b"a") is None
    assert sink.feed(b"b") is None
    assert writer.written == [b"a", b"b"]


def test_an_upload_that_cannot_be_opened_is_refused_at_once_and_its_body_dropped() -> None:
    gate: Deferred[StubWriter] = Deferred()
    sink, watcher = sink_opened_by(gate)
    assert isinstance(sink.feed(b"early"), Deferred)
    unknown = RegistryError(BLOB_UPLOAD_UNKNOWN, {"upload": "u1"})
    gate.errback(unknown)
    assert watcher.refused == [unknown]
    assert watcher.ready == 0
    assert sink.feed(b"late") is None  # read and dropped
    done = result_of(sink)
    assert isinstance(done.result, Failure) and done.result.value is unknown
    done.addErrback(lambda _: None)


def test_a_refusal_already_known_is_reported_to_a_late_watcher() -> None:
    gate: Deferred[StubWriter] = Deferred()
    sink = UploadSink(opened_by(gate), explain)
    gate.errback(OSError("disk gone"))
    watcher = Watcher()
    sink.watch(watcher.on_ready, watcher.on_refused)
    [error] = watcher.refused
    assert error.code is UNKNOWN and error.detail == {"reason": "disk gone"}


def test_a_failed_write_refuses_the_body_and_the_result_closes_the_upload() -> None:
    writer = StubWriter(fail_with=OSError("no space left"))
    sink, watcher = sink_opened_by(Deferred.fromCoroutine(_value(writer)))
    assert sink.feed(b"a") is None
    [error] = watcher.refused
    assert error.detail == {"reason": "no space left"}
    assert sink.feed(b"b") is None
    done = result_of(sink)
    # The same error the client was told (explained once: one log line per refusal).
    assert isinstance(done.result, Failure) and done.result.value is error
    done.addErrback(lambda _: None)
    assert writer.closed == 1  # what reached storage stays, resumable


def test_a_client_leaving_mid_body_keeps_what_it_sent_once_the_writes_in_flight_end() -> None:
    writer = StubWriter(slow=True)
    sink, _ = sink_opened_by(Deferred.fromCoroutine(_value(writer)))
    sink.feed(b"stored")
    sink.feed(b"received")
    sink.connection_lost(Failure(ConnectionError("client left")))
    assert writer.closed == 0  # not while a write is in flight
    writer.finish_write()
    assert writer.written == [b"stored", b"received"]  # every byte received is kept
    assert writer.closed == 0
    writer.finish_write()
    assert writer.closed == 1


def test_a_client_leaving_before_the_upload_opens_closes_it_once_open() -> None:
    gate: Deferred[StubWriter] = Deferred()
    sink, _ = sink_opened_by(gate)
    sink.feed(b"queued")
    sink.connection_lost(Failure(ConnectionError("client left")))
    writer = StubWriter()
    gate.callback(writer)
    assert writer.closed == 1


def test_a_client_leaving_after_the_route_took_the_body_is_the_route_s_business() -> None:
    writer = StubWriter()
    sink, _ = sink_opened_by(Deferred.fromCoroutine(_value(writer)))
    sink.feed(b"all")
    assert result_of(sink).result is writer
    sink.connection_lost(Failure(ConnectionError("client left")))
    assert writer.closed == 0


@pytest.mark.parametrize("leaves", [1, 2])
def test_connection_lost_closes_the_upload_once_however_often_it_is_told(leaves: int) -> None:
    writer = StubWriter()
    sink, _ = sink_opened_by(Deferred.fromCoroutine(_value(writer)))
    for _ in range(leaves):
        sink.connection_lost(Failure(ConnectionError("client left")))
    assert writer.closed == 1


async def _value(writer: StubWriter) -> StubWriter:
    return writer


def test_a_refusal_is_explained_once_however_many_report_it() -> None:
    """Explaining logs what is not the client's doing: the early answer and the route's
    result share one explanation, so a refused body is one log line."""
    explained: list[BaseException] = []

    def counting(exc: BaseException) -> RegistryError:
        explained.append(exc)
        return explain(exc)

    gate: Deferred[StubWriter] = Deferred()
    sink = UploadSink(opened_by(gate), counting)
    watcher = Watcher()
    sink.watch(watcher.on_ready, watcher.on_refused)
    gate.errback(OSError("disk gone"))
    done = result_of(sink)
    assert isinstance(done.result, Failure) and done.result.value is watcher.refused[0]
    done.addErrback(lambda _: None)
    assert len(explained) == 1


@pytest.mark.parametrize("closing", ["abandon", "close"])
def test_an_upload_gone_meanwhile_is_one_line_when_its_client_leaves(closing: str) -> None:
    """The upload was cancelled or purged while its body came: removing (or keeping) it then
    finds nothing, a designed-for case (a critical line with a traceback was logged; the log
    watch fails the test on one)."""
    gone = RegistryError(BLOB_UPLOAD_UNKNOWN, {"name": "repo", "upload": "u1"})

    async def abandon(writer: StubWriter) -> None:
        raise gone

    class Gone(StubWriter):
        async def close(self) -> None:
            raise gone

    writer = Gone() if closing == "close" else StubWriter()
    prepare: Coroutine[Any, Any, StubWriter] = _value(writer)
    sink = UploadSink(prepare, explain, abandon if closing == "abandon" else None)
    sink.feed(b"some")
    sink.connection_lost(Failure(ConnectionError("client left")))
    assert writer.written == [b"some"]


def test_a_refused_body_whose_connection_ends_is_not_said_to_be_the_clients_leaving() -> None:
    """The server refused the body (a storage write failed) and the connection then ended:
    the line says the body was refused, not that the client left."""
    from twisted.logger import formatEvent, globalLogPublisher

    texts: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        texts.append(formatEvent(event))

    writer = StubWriter(fail_with=OSError("no space left"))
    sink, watcher = sink_opened_by(Deferred.fromCoroutine(_value(writer)))
    globalLogPublisher.addObserver(observe)
    try:
        sink.feed(b"a")
        assert watcher.refused
        sink.connection_lost(Failure(ConnectionError("closed after the answer")))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert writer.closed == 1
    kept = [text for text in texts if "upload u1 kept at" in text]
    assert kept == ["body refused; repo upload u1 kept at 0 bytes"], texts
