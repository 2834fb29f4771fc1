"""
Fakes that speak the real wire protocol on 127.0.0.1, for tests that need a peer.

`tests.fakes.upstream` is a Docker-Hub-like registry (token service, CDN redirect, rate-limit
headers, failure switches; ``start_fake_upstream``, ``spawn_fake_upstream``);
`tests.fakes.content` builds what it serves; `tests.fakes.tls` makes a throw-away CA and a
server certificate.  Nothing is re-exported here so that ``python -m tests.fakes.upstream``
does not import its own module twice.
"""
