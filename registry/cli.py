"""
``txregistry``: operations tasks over the configured storage, run from a shell or cron.

    txregistry gc --config tap.cfg [--dry-run] [--delete-untagged] [--grace 1h]
    txregistry catalog-rebuild --config tap.cfg
    txregistry reindex-referrers --config tap.cfg
    txregistry purge-uploads --config tap.cfg [--age 168h]
    txregistry copy SRC DST   (registry.copy_command: images between registries and layouts)

Each reads the same ``tap.cfg`` (and ``REGISTRY_*`` variables) as ``twistd registry``, so it
works on whatever storage the registry serves, and may run while it serves.  Progress goes to
stderr at most once a second, the summary to stdout.  Exit status: 0 done, 1 the task failed
or some deletions failed, 2 bad command line or configuration (one line naming the key).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any, NoReturn

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.threadpool import ThreadPool
from zope.interface import provider

from registry import copy_command
from registry.config import Config, ConfigError, load, parse_duration
from registry.ops import gcstatus
from registry.ops.gc import (
    GarbageCollector,
    GCAborted,
    GCBusy,
    GCOptions,
    GCStats,
    describe_error,
)
from registry.ops.progress import (
    CountingDriver,
    ProgressReporter,
    format_bytes,
    format_count,
    format_seconds,
)
from registry.ops.purge import purge_uploads
from registry.proxy.config import parse_proxies, proxied_names
from registry.storage import layout
from registry.storage.blobs import BlobStore
from registry.storage.catalog import ENTRIES_DIR, Catalog, name_of_entry
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageError
from registry.storage.factory import build_driver
from registry.storage.manifests import REFERRERS_COMPLETE, ManifestStore
from registry.storage.reserve import keep_reserve

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


# Seconds `_Pool.stop` waits for the storage threads to finish what they do.
_POOL_STOP_WAIT = 5.0


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


class _Pool(ThreadPool):
    """
    The command's storage threads: daemon threads, and a stop that waits a bounded time, so
    a thread stuck in a system call (a hung mount) or left wedged by an error cannot keep the
    process from exiting once its line is printed (purge-uploads on a 1,500-level tree
    printed its error and then hung, ignoring SIGTERM, in ``pool.stop()``).
    """

    threadFactory = staticmethod(_daemon_thread)  # type: ignore[assignment]

    def stop(self) -> None:
        self.joined = True
        self.started = False
        self._team.quit()
        deadline = time.monotonic() + _POOL_STOP_WAIT
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class CommandError(Exception):
    """A task cannot run or failed; the message is for the person at the terminal."""


def _duration(text: str) -> float:
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # NaN included
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """
    argparse, with a usage error as one line (``txregistry gc: error: argument --grace:
    must not be negative: '-1h'``), exit status 2: the usage block argparse prints first
    buries the line that says what is wrong, and scripts read the last line.  ``--help``
    still shows the usage.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# Options whose value may be written negative (to be refused as such): ``--grace -1h`` read
# to argparse as a missing value and an unknown option ("expected one argument").
_SIGNED_OPTIONS = frozenset(("--grace", "--age"))


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--grace -1h`` as ``--grace=-1h``, so that the value's own check says what is wrong."""
    joined: list[str] = []
    pending = iter(argv)
    for argument in pending:
        if argument == "--":
            joined.append(argument)
            joined.extend(pending)
            break
        if argument in _SIGNED_OPTIONS:
            value = next(pending, None)
            if value is not None and value[:1] == "-" and value[1:2].isdigit():
                joined.append(f"{argument}={value}")
                continue
            joined.append(argument)
            if value is not None:
                joined.append(value)
            continue
        joined.append(argument)
    return joined


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="txregistry",
        description="Operations tasks for txregistry storage (safe while the registry serves).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", help="configuration file (tap.cfg format)")
        sub.add_argument("-s", "--storage", help="filesystem storage root (overrides the config)")
        sub.add_argument(
            "-v", "--verbose", action="store_true", help="log every action (deletions included)"
        )
        sub.add_argument(
            "--progress-interval",
            type=_interval,
            default=1.0,
            metavar="SECONDS",
            help="seconds between progress lines (default 1)",
        )
        return sub

    gc = command("gc", "delete blobs no manifest references (mark and sweep)")
    gc.add_argument("--dry-run", action="store_true", help="report what would go, delete nothing")
    gc.add_argument(
        "--delete-untagged",
        action="store_true",
        help="also delete manifests no tag reaches (index children, signatures and SBOMs of "
        "kept images are kept)",
    )
    gc.add_argument(
        "--grace",
        type=_duration,
        default=3600.0,
        metavar="DURATION",
        help="never delete what was written this recently (default 1h; pushes in progress)",
    )
    gc.add_argument(
        "--concurrency",
        type=_concurrency,
        default=16,
        metavar="N",
        help="storage requests in flight (default 16, at least 1)",
    )
    command("catalog-rebuild", "walk the repositories and rebuild the catalog index")
    command("reindex-referrers", "rebuild the referrers index of every repository")
    purge = command("purge-uploads", "delete uploads abandoned for longer than --age")
    purge.add_argument(
        "--age",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="upload age to purge (default: [uploads] purge_age, 168h)",
    )
    copy_command.add_parser(commands)
    return parser


@attrs.define
class Terminal:
    """Where a task's output goes: progress to ``err``, the summary to ``out``."""

    out: IO[str]
    err: IO[str]

    def progress(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    def summary(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def load_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    overrides: dict[tuple[str, str], str] = {}
    if args.storage:
        overrides[("storage", "driver")] = "filesystem"
        overrides[("storage", "rootdirectory")] = args.storage
    return load(args.config, dict(os.environ) if environ is None else environ, overrides)


async def _check_storage(driver: IStorageDriver, config: Config) -> None:
    try:
        await driver.stat(layout.ROOT)
    except PathNotFoundError:
        where = (
            config.storage.rootdirectory
            if config.storage.driver == "filesystem"
            else f"{config.storage.driver} storage"
        )
        raise CommandError(f"no registry data in {where} ({layout.ROOT} not found)") from None


Task = Callable[[Any, IStorageDriver, argparse.Namespace, Config, Terminal], Awaitable[int]]


def _reporter(
    reactor: Any, args: argparse.Namespace, terminal: Terminal, render: Callable[[], str]
) -> ProgressReporter:
    interval = max(0.01, args.progress_interval)
    reporter = ProgressReporter(reactor, render, terminal.progress, interval)
    reporter.start()
    return reporter


def gc_progress(stats: GCStats) -> str:
    if stats.phase == "mark":
        return (
            f"gc: mark: {format_count(stats.repositories_scanned)}/"
            f"{format_count(stats.repositories_total)} repositories, "
            f"{format_count(stats.manifests_read)} manifests read, "
            f"{format_count(stats.blobs_marked)} blobs marked"
        )
    if stats.phase in ("examine", "recheck"):
        return (
            f"gc: {stats.phase}: {format_count(stats.blobs_examined)} blobs examined, "
            f"{format_count(stats.blobs_to_delete)} unreferenced "
            f"({format_bytes(stats.bytes_to_free)} to free)"
        )
    manifests = ""
    if stats.revisions_to_delete:
        manifests = (
            f"{format_count(stats.revisions_deleted)}/{format_count(stats.revisions_to_delete)} "
            "untagged manifests, "
        )
    return (
        f"gc: sweep: {manifests}{format_count(stats.blobs_deleted)}/"
        f"{format_count(stats.blobs_to_delete)} blobs deleted, "
        f"{format_bytes(stats.bytes_freed)} freed"
    )


def gc_summary(stats: GCStats, dry_run: bool, delete_untagged: bool, elapsed: float) -> list[str]:
    kept = stats.blobs_examined - stats.blobs_to_delete - stats.blobs_young
    lines = [
        f"gc: scanned {format_count(stats.repositories_scanned)} repositories, "
        f"{format_count(stats.manifests_read)} manifests; examined "
        f"{format_count(stats.blobs_examined)} blobs: {format_count(kept)} in use, "
        f"{format_count(stats.blobs_young)} within the grace period"
    ]
    if stats.manifests_unparseable or stats.manifests_missing:
        lines.append(
            f"gc: {format_count(stats.manifests_unparseable)} manifests did not parse (kept, "
            f"with every digest they mention); {format_count(stats.manifests_missing)} "
            "revisions have no manifest data"
        )
    untagged = ""
    if dry_run:
        if delete_untagged:
            untagged = f" and {format_count(stats.revisions_to_delete)} untagged manifests"
        lines.append(
            f"gc: dry run: would delete {format_count(stats.blobs_to_delete)} blobs "
            f"({format_bytes(stats.bytes_to_free)}){untagged}; nothing deleted "
            f"({format_seconds(elapsed)})"
        )
    else:
        if delete_untagged:
            untagged = f", {format_count(stats.revisions_deleted)} untagged manifests"
        lines.append(
            f"gc: deleted {format_count(stats.blobs_deleted)} blobs"
            f"{untagged}, freed {format_bytes(stats.bytes_freed)} in {format_seconds(elapsed)}"
        )
    if stats.children_not_stored:
        lines.append(
            f"gc: {format_count(stats.children_not_stored)} index children not stored "
            "(platforms never pushed or pulled here: normal for a pull-through cache or a "
            "sparse index)"
        )
    if stats.errors:
        lines.append(f"gc: {len(stats.errors)} errors (first: {stats.errors[0]})")
    return lines


async def _check_caches_configured(driver: IStorageDriver, configured: set[str]) -> None:
    """
    Refuse to collect a pull-through cache's storage without the cache's configuration: gc
    would take its content for unused (images pulled by digest, layers whose manifest the
    cache evicted) and delete it.  A cache leaves its state in ``txregistry/proxy/<name>``.
    """
    try:
        found = await driver.list(f"{layout.OWN}/proxy")
    except PathNotFoundError:
        return
    for name in sorted(found):
        if name.endswith(".json") or name in configured:  # markers, not caches
            continue
        raise CommandError(
            f"this storage holds the pull-through cache {name!r} ({layout.OWN}/proxy/{name}) "
            f"and the configuration has no [proxy:{name}]: give gc the registry's "
            "configuration (--config) so that it leaves the cache's content alone, or remove "
            "that folder if the cache is gone"
        )


async def run_gc(
    reactor: Any, driver: IStorageDriver, args: argparse.Namespace, config: Config, term: Terminal
) -> int:
    options = GCOptions(
        delete_untagged=args.delete_untagged,
        dry_run=args.dry_run,
        grace=args.grace,
        concurrency=args.concurrency,
        reserve=config.storage.driver == "filesystem",
    )
    started = time.monotonic()
    started_at = time.time()
    # The registry's configuration names its caches' repositories: theirs to evict, not gc's.
    proxies = parse_proxies(config)
    await _check_caches_configured(driver, {proxy.name for proxy in proxies})
    proxied = proxied_names(proxies)
    collector = GarbageCollector(driver, options, started_at, clock=reactor, proxied=proxied)
    ended: Deferred[None] = Deferred()

    def on_signal() -> Deferred[None]:
        # SIGTERM, SIGINT (a systemd timeout, a cancelled CI job, Ctrl-C): the reactor waits
        # for the run to withdraw its marker and record itself, then the command exits 1.
        if not ended.called:
            term.progress("gc: stopping on a signal: no delete more; recording the run")
            collector.stop()
        return ended

    trigger = reactor.addSystemEventTrigger("before", "shutdown", on_signal)
    try:
        return await _run_collector(collector, driver, options, args, started, started_at, term)
    finally:
        reactor.removeSystemEventTrigger(trigger)
        ended.callback(None)


async def _run_collector(
    collector: GarbageCollector,
    driver: IStorageDriver,
    options: GCOptions,
    args: argparse.Namespace,
    started: float,
    started_at: float,
    term: Terminal,
) -> int:
    reporter = _reporter(collector.clock, args, term, lambda: gc_progress(collector.stats))
    try:
        await collector.run()
    except GCBusy as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:
        # Recorded as the last run (the UI's storage page, the txregistry_gc_last_run_*
        # metrics): a failed run must not leave the previous one's "0 errors" showing.
        failure = str(exc) if isinstance(exc, GCAborted) else describe_error(exc)
        collector.stats.errors.append(f"the run stopped: {failure}")
        await _record_gc(driver, options, collector.stats, started_at, term)
        if isinstance(exc, GCAborted):
            raise CommandError(f"gc aborted, nothing deleted: {exc}") from None
        raise
    finally:
        reporter.stop()
    if collector.stopped:
        collector.stats.errors.append("stopped by a signal before its end")
    if args.verbose and args.dry_run:
        # A real run logs each deletion as it happens (at info level, shown with -v).
        for name, digest in collector.doomed_revisions:
            term.progress(f"gc: would delete manifest {name}@{digest}")
        for digest in collector.candidates:
            term.progress(f"gc: would delete blob {digest}")
    stats = collector.stats
    await _record_gc(driver, options, stats, started_at, term)
    if options.reserve and not options.dry_run:
        await keep_reserve(driver)  # the room a collection on a full disk starts with
    for line in gc_summary(stats, args.dry_run, args.delete_untagged, time.monotonic() - started):
        term.summary(line)
    return EXIT_FAILED if stats.errors else EXIT_OK


async def _record_gc(
    driver: IStorageDriver, options: GCOptions, stats: GCStats, started_at: float, term: Terminal
) -> None:
    """For the web UI's storage page and the txregistry_gc_last_run_* metrics; a failure to
    record must not fail the run."""
    try:
        await gcstatus.record(driver, options, stats, started_at, time.time())
    except StorageError as exc:
        term.progress(f"gc: could not record the run's status: {exc}")


async def run_catalog_rebuild(
    reactor: Any, driver: IStorageDriver, args: argparse.Namespace, config: Config, term: Terminal
) -> int:
    counting = CountingDriver(driver)
    started = time.monotonic()
    before = set(await _entries(driver))
    catalog = Catalog(counting, clock=reactor)

    def render() -> str:
        progress = catalog.progress
        if progress.phase == "walk":
            return f"catalog-rebuild: walking, {format_count(counting.listed)} folders listed"
        return (
            f"catalog-rebuild: indexing, {format_count(progress.done)}/"
            f"{format_count(progress.total)} repositories"
        )

    reporter = _reporter(reactor, args, term, render)
    try:
        found = await catalog.rebuild()
    finally:
        reporter.stop()
    after = set(await _entries(driver))
    term.summary(
        f"catalog-rebuild: {format_count(len(found))} repositories "
        f"({format_count(len(after - before))} added, {format_count(len(before - after))} "
        f"removed) in {format_seconds(time.monotonic() - started)}"
    )
    return EXIT_OK


async def _entries(driver: IStorageDriver) -> list[str]:
    try:
        return [name_of_entry(entry) for entry in await driver.list(ENTRIES_DIR)]
    except PathNotFoundError:
        return []


async def run_reindex_referrers(
    reactor: Any, driver: IStorageDriver, args: argparse.Namespace, config: Config, term: Terminal
) -> int:
    started = time.monotonic()
    names = await Catalog(driver).walk()
    store = ManifestStore(driver, BlobStore(driver))
    done = 0
    indexed = 0
    reporter = _reporter(
        reactor,
        args,
        term,
        lambda: (
            f"reindex-referrers: {format_count(done)}/{format_count(len(names))} repositories, "
            f"{format_count(indexed)} referrers indexed"
        ),
    )
    try:
        for name in names:
            indexed += await store.reindex_referrers(name)
            done += 1
        await driver.put_content(REFERRERS_COMPLETE, b"1")
    finally:
        reporter.stop()
    term.summary(
        f"reindex-referrers: {format_count(indexed)} referrers indexed in "
        f"{format_count(len(names))} repositories in {format_seconds(time.monotonic() - started)}"
    )
    return EXIT_OK


async def run_purge_uploads(
    reactor: Any, driver: IStorageDriver, args: argparse.Namespace, config: Config, term: Terminal
) -> int:
    age = config.uploads.purge_age if args.age is None else args.age
    counting = CountingDriver(driver)
    started = time.monotonic()
    reporter = _reporter(
        reactor,
        args,
        term,
        lambda: (
            f"purge-uploads: {format_count(counting.listed)} folders listed, "
            f"{format_count(counting.deleted)} uploads purged"
        ),
    )
    try:
        removed = await purge_uploads(counting, age, time.time())
    finally:
        reporter.stop()
    term.summary(
        f"purge-uploads: purged {format_count(removed)} upload{'' if removed == 1 else 's'}"
        f" idle for longer than {format_seconds(age)}"
        f" in {format_seconds(time.monotonic() - started)}"
    )
    return EXIT_OK


TASKS: dict[str, Task] = {
    "gc": run_gc,
    "catalog-rebuild": run_catalog_rebuild,
    "reindex-referrers": run_reindex_referrers,
    "purge-uploads": run_purge_uploads,
}


async def run(
    reactor: Any,
    args: argparse.Namespace,
    terminal: Terminal,
    environ: dict[str, str] | None = None,
) -> int:
    """Run one parsed command; returns the exit status (never raises for expected failures)."""
    prog = "txregistry"
    try:
        config = load_config(args, environ)
    except ConfigError as exc:
        terminal.progress(f"{prog}: configuration error: {exc}")
        return EXIT_USAGE
    pool = _Pool(minthreads=1, maxthreads=8, name="txregistry-cli")
    pool.start()
    driver: IStorageDriver | None = None
    # After an error nobody foresaw, the pool's state is not trusted: its threads are left
    # to end with the process (they are daemon threads) rather than waited for.
    unforeseen = False
    try:
        driver = build_driver(config, reactor, pool)
        await _check_storage(driver, config)
        return await TASKS[args.command](reactor, driver, args, config, terminal)
    except ConfigError as exc:
        terminal.progress(f"{prog}: configuration error: {exc}")
        return EXIT_USAGE
    except CommandError as exc:
        terminal.progress(f"{prog} {args.command}: {exc}")
        return EXIT_FAILED
    except StorageError as exc:  # storage unreadable, permissions, network: a line
        terminal.progress(f"{prog} {args.command}: failed: {describe_error(exc)}")
        return EXIT_FAILED
    except Exception as exc:  # a defect, or a storage tree that broke one: a line too
        unforeseen = True
        terminal.progress(f"{prog} {args.command}: failed: {describe_error(exc)}")
        return EXIT_FAILED
    finally:
        close = getattr(driver, "close", None)
        if close is not None and not unforeseen:
            await close()
        if not unforeseen:
            pool.stop()


def _log_observer(err: IO[str], verbose: bool) -> ILogObserver:
    """Warnings and errors always; with ``verbose``, our own info lines (not the reactor's)."""

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < LogLevel.warn and not (
            verbose and str(event.get("log_namespace", "")).startswith("registry.")
        ):
            return
        print(f"{level.name}: {formatEvent(event)}", file=err, flush=True)
        failure = event.get("log_failure")
        if verbose and failure is not None:
            print(failure.getTraceback(), file=err, flush=True)

    return ILogObserver(observe)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line as the command reads it; a usage error exits 2 with one line."""
    return build_parser().parse_args(_attach_negative_values(argv))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.command == "copy":
        copy_command.main(args)
    globalLogBeginner.beginLoggingTo(
        [_log_observer(sys.stderr, args.verbose)], redirectStandardIO=False
    )
    terminal = Terminal(sys.stdout, sys.stderr)

    def start(reactor: Any) -> Deferred[None]:
        async def task() -> None:
            code = await run(reactor, args, terminal)
            if code:
                raise SystemExit(code)

        return Deferred.fromCoroutine(task())

    react(start)


if __name__ == "__main__":
    main()
