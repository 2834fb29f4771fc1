"""
Listening endpoints, with TLS we control.

Plain descriptions (``tcp:``, ``unix:``, ...) go to Twisted's ``serverFromString``.  ``ssl:``
descriptions are parsed here (same syntax as Twisted's: ``ssl:5443:privateKey=key.pem:
certKey=cert.pem:extraCertChain=chain.pem:interface=127.0.0.1:backlog=50``, ``\\:`` escapes a
colon) because Twisted's ``ssl:`` parser cannot ask for client certificates, and because ALPN
must follow configuration rather than what is installed: twisted.web's ``Site`` offers ``h2``
whenever the h2 package is importable, and its HTTP/2 is several times slower than HTTP/1.1
for large bodies, so ``h2`` is advertised only when ``http2 = true``.  The TLS layer is built
here too, so that plain HTTP sent to a TLS port gets an HTTP 400 that says so
(`registry.http.misdirected`) instead of a dropped connection.

Unlike Twisted, ``privateKey`` is required: a bare ``ssl:5000`` would read ``server.pem`` from
the working directory, which is never what an operator meant.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import sys
from typing import Any

import attrs
from twisted.internet import interfaces
from twisted.logger import Logger

log = Logger()

CLIENT_AUTH = ("none", "optional", "required")


class TLSMaterialError(ValueError):
    """A key or certificate file of an ``ssl:`` listener cannot be used (names option and file)."""


class ListenerError(ValueError):
    """A listener that cannot be set up; the message is the whole line (``cannot listen on``)."""


@attrs.frozen
class TLSSettings:
    """``[http] clientcas``, ``clientauth`` and ``http2``."""

    clientcas: str | None = None
    clientauth: str = attrs.field(default="none", validator=attrs.validators.in_(CLIENT_AUTH))
    http2: bool = False

    def __attrs_post_init__(self) -> None:
        if self.clientauth != "none" and not self.clientcas:
            raise ValueError(f"[http] clientauth = {self.clientauth} needs clientcas (a CA bundle)")
        if self.clientcas and self.clientauth == "none":
            # registry:2 requires a client certificate as soon as clientcas is set: a
            # configuration brought from it must not serve everyone without a word.
            raise ValueError(
                "[http] clientcas is set but clientauth = none asks for no client certificate:"
                " set clientauth = required (what registry:2 does with clientcas) or optional"
            )


def split_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """``(type, positional args, keyword args)`` of an endpoint description, with escapes."""
    fields: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, "\\"))
        elif c == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
    fields.append("".join(current))
    # Twisted's old form: a bare port number means tcp.
    kind = "tcp" if fields[0].isdigit() else fields.pop(0).lower()
    args: list[str] = []
    kwargs: dict[str, str] = {}
    # Keyword detection must ignore escaped '=', so re-split on the raw text.
    for field in fields:
        key, sep, value = field.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(field)
    return kind, args, kwargs


_SSL_KEYS = {"port", "privateKey", "certKey", "extraCertChain", "interface", "backlog"}
# Keyword options of the endpoint types checked here (Twisted's parsers raise a TypeError with
# a traceback for a misspelt one); other types go to Twisted unchecked.
_KNOWN_KEYS = {
    "tcp": {"port", "interface", "backlog"},
    "tcp6": {"port", "interface", "backlog"},
    "unix": {"address", "mode", "backlog", "lockfile", "wantPID"},
    "ssl": _SSL_KEYS,
}
# Connections the kernel queues while the reactor is busy, unless ``backlog=`` says otherwise.
# Twisted's default (50) overflows when hundreds of clients connect at once: each dropped SYN
# is sent again 1 s, then 3 s later, which clients see as timeouts.  Linux caps the value at
# net.core.somaxconn (4096 by default since 5.4).
DEFAULT_BACKLOG = 1024
# registry:2's ``addr`` forms: ``5000``, ``:5000``, ``127.0.0.1:5000``, ``[::1]:5000``,
# ``localhost:5000``.
_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[0-9.]+|localhost)?:(?P<port>\d+)")


def normalize_description(description: str) -> str:
    """
    Accept what registry:2 users type for ``--port`` as the TCP endpoint they mean:
    ``5000`` and ``:5000`` are ``tcp:5000``, ``127.0.0.1:5000`` is
    ``tcp:5000:interface=127.0.0.1``, ``[::1]:5000`` is ``tcp6:5000:interface=\\:\\:1``.
    Anything else is an endpoint string and is returned as it is.
    """
    text = description.strip()
    if text.isdigit():
        return f"tcp:{text}"
    match = _ADDRESS.fullmatch(text)
    if match is None:
        return text
    host, port = match["host"], match["port"]
    if not host:
        return f"tcp:{port}"
    if host.startswith("["):
        return f"tcp6:{port}:interface=" + host.strip("[]").replace(":", "\\:")
    return f"tcp:{port}:interface={host}"


def check_description(description: str) -> None:
    """
    Raise ValueError (one line, naming the problem) for an endpoint string whose options or
    port number are wrong, before Twisted's parser turns them into a traceback.
    """
    kind, args, kwargs = split_description(description)
    known = _KNOWN_KEYS.get(kind)
    if known is None:
        return
    for key in kwargs:
        if key not in known:
            import difflib  # only for a mistake: a hint to the nearest name

            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {near[0]}?" if near else f"; known: {', '.join(sorted(known))}"
            raise ValueError(f"{description}: unknown {kind}: option {key!r}{hint}")
    if kind == "unix":
        return
    port_text = kwargs.get("port") or (args[0] if args else "")
    if not port_text.isdigit() or len(args) > 1:
        raise ValueError(f"{description}: needs one port number ({kind}:5000)")
    if int(port_text) > 65535:
        raise ValueError(f"{description}: port {port_text} is out of range (0-65535)")
    backlog = kwargs.get("backlog")
    if backlog is not None and not (backlog.isdigit() and int(backlog) > 0):
        raise ValueError(f"{description}: backlog is a number of connections, not {backlog!r}")


def connection_factory(
    endpoint: interfaces.IStreamServerEndpoint, factory: interfaces.IProtocolFactory
) -> interfaces.IProtocolFactory:
    """
    What a port bound for ``endpoint`` elsewhere (a socket adopted from another process)
    must run to serve ``factory`` as ``endpoint.listen`` would: TLS for ``ssl:``, nothing
    added otherwise.
    """
    # No ssl: endpoint exists unless its module was loaded (and then importing it is free).
    if "registry.http._tls_layer" in sys.modules:
        from registry.http._tls_layer import TLSServerEndpoint

        if isinstance(endpoint, TLSServerEndpoint):
            return endpoint.wrap(factory)
    return factory


def server_endpoint(
    reactor: Any,
    description: str,
    tls: TLSSettings | None = None,
    *,
    warn: bool = True,
    refuse_expired: bool = False,
) -> interfaces.IStreamServerEndpoint:
    """An endpoint for ``--port`` ``description``; ``tls`` applies to ``ssl:`` ones (an
    expired certificate is said in a warning unless ``warn`` is False, refused with
    ``refuse_expired``)."""
    check_description(description)
    kind, args, kwargs = split_description(description)
    if kind != "ssl":
        from twisted.internet.endpoints import serverFromString

        if kind in _KNOWN_KEYS and "backlog" not in kwargs:
            description = f"{description}:backlog={DEFAULT_BACKLOG}"
        try:
            endpoint: interfaces.IStreamServerEndpoint = serverFromString(reactor, description)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{description}: {exc}") from None
        return endpoint
    tls = tls or TLSSettings()
    unknown = set(kwargs) - _SSL_KEYS
    if unknown:
        raise ValueError(f"unknown ssl: options {sorted(unknown)}; known: {sorted(_SSL_KEYS)}")
    port_text = kwargs.get("port") or (args[0] if args else "")
    if not port_text.isdigit() or len(args) > 1:
        raise ValueError(f"ssl: endpoint needs one port number: {description!r}")
    # pyOpenSSL and cryptography are imported only here: a registry without an ssl: listener
    # never loads them (see registry.lean_imports).
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web import http

    from registry.http._tls_layer import TLSServerEndpoint, certificate_options, expired

    if tls.http2 and not http.H2_ENABLED:
        raise ValueError("http2 = true needs the h2 package (pip install 'twisted[http2]')")
    protocols = [b"h2", b"http/1.1"] if tls.http2 else [b"http/1.1"]
    tcp_endpoint = TCP4ServerEndpoint(
        reactor,
        int(port_text),
        backlog=int(kwargs.get("backlog", DEFAULT_BACKLOG)),
        interface=kwargs.get("interface", ""),
    )
    try:
        options = certificate_options(kwargs, tls)
    except TLSMaterialError as exc:
        raise ListenerError(f"cannot listen on {description}: {exc}") from None
    if (warn or refuse_expired) and expired(options, datetime.datetime.now(datetime.UTC)):
        assert options.expires is not None
        if refuse_expired:
            raise ListenerError(
                f"cannot listen on {description}: {options.certificate_file}: the certificate "
                f"expired on {options.expires:%Y-%m-%d %H:%M} UTC"
            )
        # Served anyway (a client told not to verify still connects), but said: a verifying
        # client only reports a failed handshake.
        log.warn(
            "{listener}: {file}: the certificate expired on {date} UTC; clients that verify "
            "it refuse every connection",
            listener=description,
            file=options.certificate_file,
            date=f"{options.expires:%Y-%m-%d %H:%M}",
        )
    return TLSServerEndpoint(tcp_endpoint, options, protocols)


def _is_loopback(interface: str) -> bool:
    if interface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def is_tls_description(description: str) -> bool:
    """Whether ``--port`` ``description`` is a TLS (``ssl:``) listener, the only kind on which
    a client certificate can arrive.  A malformed one is not (start-up refuses it anyway)."""
    try:
        kind, _, _ = split_description(normalize_description(description))
    except ValueError:
        return False
    return kind == "ssl"


def warn_if_plain_public(description: str, auth_enabled: bool) -> str | None:
    """
    A warning for a clear-text TCP listener reachable from other hosts while authentication
    is on: Basic passwords and bearer tokens would cross the network readable by anyone on
    the path.  None when there is nothing to warn about.
    """
    if not auth_enabled:
        return None
    kind, _, kwargs = split_description(description)
    if kind not in ("tcp", "tcp6"):
        return None
    interface = kwargs.get("interface", "")
    if interface and _is_loopback(interface):
        return None
    where = f"interface {interface}" if interface else "all interfaces"
    return (
        f"listening on {description} ({where}) without TLS while authentication is on: "
        "passwords and tokens would cross the network in clear text. Use an ssl: endpoint "
        "(see docs/tls.md) or bind to 127.0.0.1 behind a TLS-terminating proxy."
    )
