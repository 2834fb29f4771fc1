"""
`twisted_internals.h2_hold_while_window_shut` on a twisted.web HTTP/2 connection in memory
(no socket; a reactor whose turns the test runs one by one), where what happens inside one
read can be arranged exactly: the sending loop, woken by twisted.web amid a read's events,
runs after them.  (The end-to-end behaviour is tests/e2e/test_h2_flow_control.py's.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet.testing import StringTransport
from twisted.web import resource, server
from twisted.web._http2 import H2Connection

from registry.http import twisted_internals

WINDOW = 65535  # the connection's window: h2's default


class Turns:
    """A reactor for the connection: calls run a turn at a time (those due when it starts)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def seconds(self) -> float:
        return 0.0

    def callLater(self, delay: float, call: Callable[..., object], *args: object) -> None:
        self.calls.append((call, args))

    def run(self, turns: int = 50) -> None:
        for _ in range(turns):
            due, self.calls = self.calls, []
            for call, args in due:
                call(*args)


class Paused:
    """A response's producer: paused by the spent window; resumed, it ends the response."""

    def __init__(self, request: server.Request) -> None:
        self.request = request

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        self.request.unregisterProducer()
        self.request.finish()

    def stopProducing(self) -> None:
        pass


class OneWindow(resource.Resource):
    """Answers with exactly the connection's window, and its end once that opens again."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> Any:
        request.registerProducer(Paused(request), True)
        request.write(bytes(WINDOW))
        return server.NOT_DONE_YET


class Held(server.Request):
    def gotLength(self, length: int | None) -> None:
        twisted_internals.h2_hold_while_window_shut(self.channel)
        super().gotLength(length)


def test_the_loop_woken_amid_a_reads_events_runs_after_them() -> None:
    """
    A download that spent the connection's window exactly, its producer paused: a
    WINDOW_UPDATE on the connection resumes the producer, which ends the response, as
    twisted.web walks the connection's streams.  The sending loop, waiting, is woken there;
    run at once (as twisted.web alone runs it), it wrote the END_STREAM and forgot the stream
    amid that walk: "dictionary changed size during iteration" out of the read, whose other
    events were lost.  Holds make the loop wait more often, so this came more often.
    """
    reactor = Turns()
    site = server.Site(OneWindow())
    site.requestFactory = Held
    connection: Any = H2Connection(reactor)
    connection.timeOut = None
    connection.site, connection.factory, connection.requestFactory = site, site, Held
    transport = StringTransport()
    connection.makeConnection(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16 * 1024 * 1024})
    request = [(":method", "GET"), (":path", "/"), (":scheme", "https")]
    client.send_headers(1, [*request, (":authority", "localhost")], end_stream=True)
    body, ended = bytearray(), False

    def exchange(data: bytes) -> None:
        nonlocal ended
        connection.dataReceived(data)
        reactor.run()
        for event in client.receive_data(transport.value()):
            if isinstance(event, h2.events.DataReceived):
                body.extend(event.data)
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        transport.clear()

    exchange(client.data_to_send())
    assert (len(body), ended) == (WINDOW, False)
    assert connection._sendingDeferred is not None  # the loop waits: nothing it can send
    client.increment_flow_control_window(1024)  # on the connection
    exchange(client.data_to_send())
    assert (len(body), ended) == (WINDOW, True)
