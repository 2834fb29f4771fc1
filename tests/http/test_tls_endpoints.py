"""``--port`` forms: registry:2's addresses read as TCP, endpoint mistakes named in one line."""

from __future__ import annotations

import pytest

from registry.http.tls import check_description, normalize_description


@pytest.mark.parametrize(
    ("typed", "endpoint"),
    [
        ("5000", "tcp:5000"),
        (":5000", "tcp:5000"),
        ("127.0.0.1:5000", "tcp:5000:interface=127.0.0.1"),
        ("localhost:5000", "tcp:5000:interface=localhost"),
        ("[::1]:5000", "tcp6:5000:interface=\\:\\:1"),
        ("tcp:5000", "tcp:5000"),
        ("ssl:5443:privateKey=k.pem", "ssl:5443:privateKey=k.pem"),
        ("unix:/run/registry.sock", "unix:/run/registry.sock"),
    ],
)
def test_registry2_addresses_are_tcp(typed: str, endpoint: str) -> None:
    assert normalize_description(typed) == endpoint
    check_description(endpoint)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("tcp:99999", "tcp:99999: port 99999 is out of range (0-65535)"),
        ("tcp:5000:interfce=::1", "unknown tcp: option 'interfce'; did you mean interface?"),
        ("tcp:5000:bakclog=5", "unknown tcp: option 'bakclog'; did you mean backlog?"),
        ("tcp:http", "tcp:http: needs one port number (tcp:5000)"),
        (
            "tcp:5000:backlog=abc",
            "tcp:5000:backlog=abc: backlog is a number of connections, not 'abc'",
        ),
        ("tcp:5000:backlog=0", "backlog is a number of connections, not '0'"),
        ("unix:/x:mdoe=600", "unknown unix: option 'mdoe'; did you mean mode?"),
        ("ssl:5443:privatekey=k.pem", "unknown ssl: option 'privatekey'; did you mean privateKey?"),
    ],
)
def test_endpoint_mistakes_are_named(description: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_description(description)
    assert message in str(caught.value)
