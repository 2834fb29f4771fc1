"""The fleet's peer listener logs one structured line per request, as the registry does, not
twisted.web's Apache-style line."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.pages import notFound

from registry.proxy.fleet.peer import PeerSite


@pytest_twisted.ensureDeferred
async def test_a_peer_request_is_one_structured_line() -> None:
    port = reactor.listenTCP(0, PeerSite(notFound()), interface="127.0.0.1")  # type: ignore[attr-defined]
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/fills/hub/sha256:ab?offset=0"
        response = await treq.get(url)
        body = await response.content()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await port.stopListening()
    assert response.code == 404
    assert not response.headers.hasHeader(b"server")  # no framework name and version
    lines = [formatEvent(e) for e in events if e.get("peer")]
    assert lines == [
        f"peer access method=GET path=/fills/hub/sha256:ab?offset=0 status=404 bytes={len(body)}"
        " client=127.0.0.1"
    ], lines
    assert not [e for e in events if "HTTP/1.1" in formatEvent(e)]  # no Apache-style line
