"""
``txregistry copy SRC DST``: copy an image between registries and OCI layout directories.

    txregistry copy docker://registry.example/app:v1 docker://mirror.example/app:v1
    txregistry copy --referrers docker://localhost:5000/app:v1 oci:/backups/app:v1
    txregistry copy --dest-tls-verify=false oci:/backups/app:v1 docker://localhost:5000/app:v1

Image names use skopeo's transports: ``docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`` (without a
host, Docker Hub's: ``docker://alpine`` is ``docker.io/library/alpine``) and ``oci:DIR[:TAG]``.
An index is copied with all its platforms; ``--referrers`` brings the signatures, SBOMs and
attestations that refer to each manifest.  Progress goes to stderr (one updating line on a
terminal, one line per item otherwise), the summary to stdout.

Exit status: 0 copied, 1 the copy failed (the message says why), 2 bad command line, 130/143
interrupted by SIGINT/SIGTERM (after the copy's own cleanup: temporary files removed, open
uploads cancelled, a layout directory the copy created removed).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import math
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import IO, Any, NoReturn

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall, react

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.api.names import TAG_RE, is_valid_name
from registry.client import ClientError, Credentials, RegistryClient, TLSOptions
from registry.client._streams import in_thread
from registry.client.auth import credentials_from_config
from registry.client.copy import CopyEvent, Endpoint, LayoutImage, RegistryImage, copy_image
from registry.client.errors import without_userinfo
from registry.client.layout import OCILayout
from registry.client.walk import CopyError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# The shell's convention: 128 + the signal's number.
INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


class UsageError(Exception):
    """A bad image name or option: exit status 2."""


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``copy`` to the ``txregistry`` sub-commands."""
    text = "copy an image between registries and OCI layouts (skopeo's image names)"
    sub: argparse.ArgumentParser = commands.add_parser("copy", help=text, description=text)
    sub.add_argument("source", metavar="SRC", help="docker://[HOST/]NAME:TAG, oci:DIR:TAG ...")
    sub.add_argument("destination", metavar="DST", help="docker://[HOST/]NAME:TAG, oci:DIR:TAG ...")
    for side, name in (("src", "source"), ("dest", "destination")):
        sub.add_argument(
            f"--{side}-tls-verify",
            type=_bool,
            default=None,
            metavar="BOOL",
            help=f"verify the {name} registry's certificate (false: also allows plain http)",
        )
        sub.add_argument(f"--{side}-creds", metavar="USER[:PASSWORD]", help=f"{name} login")
        sub.add_argument(f"--{side}-authfile", metavar="PATH", help=f"{name} config.json")
        sub.add_argument(
            f"--{side}-cert-dir",
            metavar="DIR",
            help=f"{name} TLS files: *.crt (CAs), *.cert and *.key (client certificate)",
        )
        sub.add_argument(
            f"--{side}-no-creds", action="store_true", help=f"access the {name} anonymously"
        )
    sub.add_argument("--tls-verify", type=_bool, default=None, metavar="BOOL", help="both sides")
    sub.add_argument("--authfile", metavar="PATH", help="config.json for both sides")
    sub.add_argument(
        "--referrers", action="store_true", help="also copy signatures, SBOMs, attestations"
    )
    sub.add_argument("--all", "-a", action="store_true", help="all platforms (the default)")
    sub.add_argument("--preserve-digests", action="store_true", help="always the case")
    sub.add_argument(
        "--concurrency", type=int, default=4, help="blobs in flight at once (default 4)"
    )
    sub.add_argument("--retry-times", type=int, default=3, help="retries per call (default 3)")
    sub.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per exchange (default 60)"
    )
    sub.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    sub.add_argument(
        "--progress-interval",
        type=float,
        default=LOG_SECONDS,
        metavar="SECONDS",
        help=f"off a terminal, seconds between lines of bytes moved (default {LOG_SECONDS:g})",
    )
    return sub


# Docker Hub: the registry of image names without a host (``alpine``, ``myorg/app``), as
# skopeo and docker read them; its API is served from another host than its name.
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# A registry host as image names write it: a DNS name or a bracketed IPv6 address, then an
# optional port.
_HOST_RE = re.compile(
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]+))?"
)


@attrs.frozen
class ImageName:
    transport: str  # "docker" or "oci"
    location: str  # HOST[:PORT] (docker.io for Docker Hub) or DIR
    name: str  # repository (docker only)
    reference: str | None

    @property
    def api_host(self) -> str:
        """Where the registry's API is: HOST[:PORT], Docker Hub's API host for docker.io."""
        return DOCKER_HUB_API if self.location == DOCKER_HUB else self.location


def _host_problem(host: str) -> str | None:
    """Why ``host`` (HOST[:PORT] of an image name) names no registry, or None."""
    match = _HOST_RE.fullmatch(host)
    if match is None:
        return f"{host!r} is not a registry host (HOST[:PORT], [IPv6][:PORT])"
    address, port = match["host"], match["port"]
    if address.startswith("["):
        try:
            ipaddress.IPv6Address(address[1:-1])
        except ValueError:
            return f"{address!r} is not an IPv6 address"
    if port is not None and not 0 < int(port) <= 65535:
        return f"port {port} is out of range (1 to 65535)"
    return None


def _has_userinfo(rest: str) -> bool:
    """Whether the text after ``docker://`` starts with ``USER[:PASSWORD]@`` (an ``@``
    before the first ``/``, or one that no digest follows)."""
    first, slash, _ = rest.partition("/")
    if "@" not in first:
        return False
    if slash:
        return True
    try:
        Digest.parse(first.rpartition("@")[2])
    except RegistryError:
        return True
    return False


def parse_image(text: str, side: str = "src") -> ImageName:
    """Parse skopeo's ``docker://`` and ``oci:`` image names (UsageError otherwise).  A name
    whose first component is no host (no ``.`` or ``:``, not ``localhost``) is Docker Hub's
    (``docker://alpine`` is ``docker.io/library/alpine``).  ``side`` (``src``, ``dest``)
    names the options to give credentials with, for a name that holds some."""
    if text.startswith("docker://"):
        rest = text.removeprefix("docker://")
        if _has_userinfo(rest):
            # Never echoed: it would show the password on the terminal and in CI logs.
            which = "source" if side == "src" else "destination"
            raise UsageError(
                f"the {which} image name holds a user name or password (USER:PASSWORD@HOST); "
                f"image names take none: give them with --{side}-creds or --authfile"
            )
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            host, path = first, remainder
            problem = _host_problem(host)
            if problem is not None:
                raise UsageError(f"{text}: {problem}")
            if host == "index.docker.io":
                host = DOCKER_HUB
        else:
            host, path = DOCKER_HUB, rest
        if not path:
            raise UsageError(f"{text}: expected docker://[HOST/]NAME[:TAG|@DIGEST]")
        reference: str | None = None
        if "@" in path:
            path, _, reference = path.partition("@")
            try:
                Digest.parse(reference)
            except RegistryError as exc:
                raise UsageError(f"{text}: {reference!r} is not a digest ({exc.message})") from None
        else:
            head, sep, tail = path.rpartition(":")
            if sep and "/" not in tail:
                path, reference = head, tail
                if TAG_RE.fullmatch(reference) is None:
                    raise UsageError(
                        f"{text}: {reference!r} is not a tag (1 to 128 of [A-Za-z0-9_.-], "
                        "not starting with . or -)"
                    )
        if host == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"  # Docker Hub's official images
        if not is_valid_name(path):
            raise UsageError(
                f"{text}: {path!r} is not a repository name (lowercase letters, digits and "
                "separators . _ __ - between them, components joined by /)"
            )
        return ImageName("docker", host, path, reference)
    if text.startswith("oci:"):
        rest = text.removeprefix("oci:")
        directory, sep, tag = rest.rpartition(":")
        if not sep or "/" in tag or not directory:
            directory, tag = rest, ""
        if not directory:
            raise UsageError(f"{text}: expected oci:DIR[:TAG]")
        return ImageName("oci", directory, "", tag or None)
    raise UsageError(f"{text}: unknown transport (use docker://HOST/NAME:TAG or oci:DIR:TAG)")


def _tls(cert_dir: str | None, verify: bool) -> TLSOptions:
    if cert_dir is None:
        return TLSOptions(verify=verify)
    folder = Path(cert_dir)
    cas = sorted(folder.glob("*.crt"))
    certs, keys = sorted(folder.glob("*.cert")), sorted(folder.glob("*.key"))
    return TLSOptions(
        ca_file=tuple(cas) if cas else None,
        cert_file=certs[0] if certs else None,
        key_file=keys[0] if keys else None,
        verify=verify,
    )


async def open_endpoint(
    reactor: Any, image: ImageName, args: argparse.Namespace, side: str, create: bool
) -> Endpoint:
    """The endpoint for one side: a layout, or a client for the registry (plain http when
    TLS verification is off and the registry does not speak TLS, as skopeo does)."""
    if image.transport == "oci":
        try:
            if create:
                layout = await OCILayout.create(reactor, image.location)
            else:
                layout = await OCILayout.open(reactor, image.location)
        except ValueError as exc:  # not a layout: its index.json is not an OCI index
            raise UsageError(str(exc)) from None
        return LayoutImage(layout, image.reference)
    verify = getattr(args, f"{side}_tls_verify")
    if verify is None:
        verify = args.tls_verify if args.tls_verify is not None else True
    creds_text = getattr(args, f"{side}_creds")
    credentials = None
    if creds_text:
        try:
            credentials = Credentials.parse(creds_text)
        except ValueError as exc:
            raise UsageError(f"--{side}-creds: {exc}") from None
        if ":" not in creds_text:
            # USER alone: the password is asked for on the terminal, as skopeo does (an
            # empty one was sent instead).
            if not sys.stdin.isatty():
                raise UsageError(
                    f"--{side}-creds {creds_text}: no password, and no terminal to ask it on "
                    "(give USER:PASSWORD)"
                )
            prompt = f"Password for {credentials.username} at {image.location}: "
            password = await in_thread(reactor, getpass.getpass, prompt)
            credentials = Credentials(credentials.username, password)
    elif not getattr(args, f"{side}_no_creds"):
        authfile = getattr(args, f"{side}_authfile") or args.authfile
        try:
            credentials = credentials_from_config(image.location, authfile, image.name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    tls = _tls(getattr(args, f"{side}_cert_dir"), verify)

    def client(scheme: str, retries: int) -> RegistryClient:
        return RegistryClient(
            reactor,
            f"{scheme}://{image.api_host}",
            credentials=credentials,
            tls=tls,
            timeout=args.timeout,
            retries=retries,
        )

    if not verify:
        probe = client("https", 0)
        try:
            await probe.ping()
        except ClientError:
            await probe.close()
            return RegistryImage(client("http", args.retry_times), image.name, image.reference)
        await probe.close()
    return RegistryImage(client("https", args.retry_times), image.name, image.reference)


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"


# On a terminal, the bytes moved are shown at most this often, once at least TICK_BYTES
# more have moved (a large blob shows movement, small ones add no rewrites), or once the
# count has stood still for a tick (a stalled transfer shows where it stands).
TICK_SECONDS = 0.25
TICK_BYTES = 1024 * 1024
# Off a terminal (a CI log), a line with the bytes moved this often while they move: a large
# layer is otherwise silent until it is done.
LOG_SECONDS = 10.0


@attrs.define
class Progress:
    """One updating line on a terminal (with the bytes moved while a large blob travels);
    one line per item otherwise."""

    stream: IO[str]
    tty: bool
    quiet: bool = False
    blobs: int = 0
    skipped: int = 0
    manifests: int = 0
    size: int = 0
    shown_moved: int = 0
    last_moved: int = 0  # at the last tick

    def _line(self) -> str:
        return (
            f"\rcopying: {self.blobs} blobs ({format_bytes(self.size)}), "
            f"{self.skipped} already there, {self.manifests} manifests"
        )

    def tick(self, moved: int) -> None:
        """``moved`` bytes have travelled so far (every TICK_SECONDS, on a terminal)."""
        still, self.last_moved = moved == self.last_moved, moved
        if self.quiet or not self.tty or moved == self.shown_moved:
            return
        if moved - self.shown_moved < TICK_BYTES and not (still and moved >= TICK_BYTES):
            return
        self.shown_moved = moved
        self.stream.write(f"{self._line()}; {format_bytes(moved)} moved\x1b[K")
        self.stream.flush()

    def log(self, moved: int, interval: float) -> None:
        """Off a terminal, every ``interval`` seconds: a line when bytes moved since the
        last one, with the rate over the interval."""
        if self.quiet or self.tty or moved == self.shown_moved:
            return
        rate = (moved - self.shown_moved) / interval
        self.shown_moved = moved
        self.stream.write(f"moving: {format_bytes(moved)} so far, {format_bytes(int(rate))}/s\n")
        self.stream.flush()

    def __call__(self, event: CopyEvent) -> None:
        if event.what == "blob":
            if event.kind == "copied":
                self.blobs += 1
                self.size += event.size
            else:
                self.skipped += 1
        else:
            self.manifests += 1
        if self.quiet:
            return
        if self.tty:
            self.stream.write(self._line() + "\x1b[K")
        else:
            self.stream.write(
                f"{event.kind} {event.what} {event.digest} ({format_bytes(event.size)})\n"
            )
        self.stream.flush()

    def end(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def _moved(endpoints: list[Endpoint]) -> int:
    """Bytes that have travelled: what a source registry sent us, else what we sent a
    destination registry (counting both would count a registry-to-registry byte twice)."""
    source, target = endpoints
    if isinstance(source, RegistryImage):
        return source.client.session.bytes_received
    if isinstance(target, RegistryImage):
        return target.client.session.bytes_sent
    return 0


def _plain_http_hint(exc: Exception, endpoints: list[Endpoint]) -> str:
    """For a TLS handshake that got a plain http answer (OpenSSL's "wrong version number"),
    the option that makes the copy use http with that registry."""
    message = str(exc)
    if not isinstance(exc, ClientError) or "wrong version number" not in message:
        return ""
    for endpoint, side in zip(endpoints, ("src", "dest"), strict=False):
        url = endpoint.client.url if isinstance(endpoint, RegistryImage) else ""
        if url.startswith("https://") and url in message:
            return (
                f" (the registry at {url} answers in plain http, not TLS: "
                f"--{side}-tls-verify=false or --tls-verify=false uses http with it)"
            )
    return ""


def _created_by_us(directory: str) -> Path | None:
    """The outermost folder that creating ``directory`` would make (None: it exists), so a
    copy that fails can take away what it made and leave no empty layout behind."""
    path = Path(directory).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


async def run(
    reactor: Any,
    args: argparse.Namespace,
    out: IO[str],
    err: IO[str],
    interrupted: list[signal.Signals] | None = None,
) -> int:
    """The whole command; returns the exit status.  ``interrupted`` names the signal (set by
    `main`) when the run is cancelled because of one."""
    endpoints: list[Endpoint] = []
    progress = Progress(err, err.isatty(), args.quiet)
    created: Path | None = None
    done = False
    try:
        source = parse_image(args.source, "src")
        target = parse_image(args.destination, "dest")
        if args.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if args.retry_times < 0:
            raise UsageError(f"--retry-times must be 0 or more, not {args.retry_times}")
        if not (math.isfinite(args.timeout) and args.timeout > 0):
            raise UsageError(f"--timeout must be a number of seconds above 0, not {args.timeout}")
        if not (math.isfinite(args.progress_interval) and args.progress_interval > 0):
            raise UsageError("--progress-interval must be above 0")
        endpoints.append(await open_endpoint(reactor, source, args, "src", False))
        if target.transport == "oci":
            created = await in_thread(reactor, _created_by_us, target.location)
        endpoints.append(await open_endpoint(reactor, target, args, "dest", True))
        if progress.tty:
            ticker = LoopingCall(lambda: progress.tick(_moved(endpoints)))
        else:
            interval = args.progress_interval
            ticker = LoopingCall(lambda: progress.log(_moved(endpoints), interval))
        ticker.clock = reactor
        if not progress.quiet:
            ticker.start(TICK_SECONDS if progress.tty else args.progress_interval, now=False)
        try:
            result = await copy_image(
                endpoints[0],
                endpoints[1],
                referrers=args.referrers,
                concurrency=args.concurrency,
                on_event=progress,
            )
        finally:
            if ticker.running:
                ticker.stop()
        done = True
    except UsageError as exc:
        progress.end()
        print(f"txregistry copy: {exc}", file=err, flush=True)
        return EXIT_USAGE
    except (ClientError, CopyError, OSError, ValueError) as exc:
        progress.end()
        print(
            f"txregistry copy: failed: {exc}{_plain_http_hint(exc, endpoints)}",
            file=err,
            flush=True,
        )
        return EXIT_FAILED
    except CancelledError:
        if not interrupted:
            raise
        progress.end()
        kept = [
            location
            for endpoint in endpoints
            if isinstance(endpoint, RegistryImage)
            for location in endpoint.client.uncancelled_uploads
        ]
        what = (
            f"the registry refused to cancel the upload {without_userinfo(kept[0].split('?')[0])}"
            + (f" (and {len(kept) - 1} more)" if len(kept) > 1 else "")
            + "; it may keep its bytes until it purges old uploads"
            if kept
            else "nothing half-written was kept"
        )
        print(
            f"txregistry copy: interrupted ({interrupted[0].name}); {what}",
            file=err,
            flush=True,
        )
        return INTERRUPTED[interrupted[0]]
    finally:
        for endpoint in endpoints:
            if isinstance(endpoint, RegistryImage):
                await endpoint.client.close()
        if not done and created is not None:
            await in_thread(reactor, shutil.rmtree, created, True)
    progress.end()
    print(
        f"copied {result.digest}: {result.manifests} manifests, {result.blobs_copied} blobs "
        f"({format_bytes(result.bytes_copied)}), {result.blobs_skipped} already there, "
        f"{result.blobs_mounted} mounted, {result.referrers} referrers",
        file=out,
        flush=True,
    )
    return EXIT_OK


def main(args: argparse.Namespace) -> NoReturn:
    """Run the command in a reactor.  SIGINT and SIGTERM cancel the copy instead of stopping
    the reactor (what `react` would do): the cleanup in the copy's ``finally`` blocks needs a
    running reactor, and a stopped one would end the process as if it had succeeded."""

    def start(reactor: Any) -> Deferred[None]:
        interrupted: list[signal.Signals] = []
        running = Deferred.fromCoroutine(run(reactor, args, sys.stdout, sys.stderr, interrupted))

        def on_signal(number: int, frame: object) -> None:
            if not interrupted:
                interrupted.append(signal.Signals(number))
                reactor.callFromThread(running.cancel)

        def install() -> None:
            for number in INTERRUPTED:
                signal.signal(number, on_signal)

        # `react` calls this before the reactor runs and installs its own handlers (which
        # stop it); ours go in after those.
        reactor.callWhenRunning(install)

        async def task() -> None:
            code = await running
            if code:
                raise SystemExit(code)

        return Deferred.fromCoroutine(task())

    react(start)
    raise SystemExit(EXIT_OK)
