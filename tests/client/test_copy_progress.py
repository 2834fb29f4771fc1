"""
What ``txregistry copy`` (a child process) shows while it works: one line per item, each
word once (``copied manifest sha256:...``); on a terminal the bytes moved while a large blob
travels; and ``--help`` names the defaults.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet.threads import deferToThread

from registry.copy_command import Progress
from tests.client.test_copy_command import txregistry
from tests.client.test_copy_interrupted import source_args, wait_for
from tests.e2e.harness import REPO_ROOT
from tests.fakes.upstream import FakeUpstream


@pytest_twisted.ensureDeferred
async def test_one_line_per_item_each_word_once(tls_fake: FakeUpstream, tmp_path: Path) -> None:
    image = tls_fake.content.add_image("library/small", "1", [3000])
    code, _, err = await txregistry(
        "copy", *source_args(tls_fake, tmp_path, "library/small:1"), f"oci:{tmp_path / 'out'}:1"
    )
    assert code == 0, err
    lines = err.splitlines()
    blobs = sorted(lines[:2])
    config = json.loads(image.manifest)["config"]
    layer = image.layers[0].digest
    assert blobs == sorted(
        [f"copied blob {config['digest']} ({config['size']} B)", f"copied blob {layer} (2.9 KiB)"]
    )
    assert lines[2:] == [f"copied manifest {image.digest} ({len(image.manifest)} B)"]


@pytest_twisted.ensureDeferred
async def test_a_large_blob_shows_its_bytes_on_a_terminal(
    tls_fake: FakeUpstream, tmp_path: Path
) -> None:
    """The layer is held after 4 MiB: the terminal line says so before the copy ends."""
    image = tls_fake.content.add_image("library/big", "1", [8 * 1024 * 1024])
    hold = tls_fake.hold_body(image.layers[0].digest, 4 * 1024 * 1024)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DOCKER_CONFIG": "/nonexistent"}
    command = [sys.executable, "-m", "registry.cli", "copy"]
    command += [*source_args(tls_fake, tmp_path, "library/big:1"), f"oci:{tmp_path / 'out'}:1"]
    terminal, other_end = pty.openpty()
    shown = b""

    def read_some() -> None:
        nonlocal shown
        while select.select([terminal], [], [], 0)[0]:
            shown += os.read(terminal, 65536)

    try:
        child = await deferToThread(
            subprocess.Popen, command, stdout=subprocess.PIPE, stderr=other_end, env=env
        )
        try:
            await wait_for(lambda: read_some() or b"4.0 MiB moved" in shown, "4.0 MiB shown")
        finally:
            hold.release()
            out, _ = await deferToThread(child.communicate, timeout=120)
        read_some()
    finally:
        os.close(terminal)
        os.close(other_end)
    assert child.returncode == 0
    assert f"copied {image.digest}: 1 manifests, 2 blobs (8.0 MiB)" in out.decode()
    assert shown.count(b"\n") == 1


@pytest_twisted.ensureDeferred
async def test_help_names_the_defaults() -> None:
    code, out, _ = await txregistry("copy", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for text in (
        "seconds per exchange (default 60)",
        "blobs in flight at once (default 4)",
        "retries per call (default 3)",
    ):
        assert text in flat


def test_a_stalled_transfer_shows_where_it_stands() -> None:
    """The count is rewritten once a MiB more has moved, and also once it has stood still
    for a tick: a transfer stalled half a MiB after the last rewrite shows its real figure,
    not the one from before (a busy machine's sparse ticks made the 4.0 MiB test miss it)."""
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    mib = 1024 * 1024
    progress.tick(mib * 7 // 2)
    progress.tick(4 * mib)  # moving, half a MiB on: not yet
    assert "4.0 MiB moved" not in stream.getvalue()
    progress.tick(4 * mib)  # still: shown
    assert stream.getvalue().endswith("; 4.0 MiB moved\x1b[K")
    progress.tick(4 * mib)  # shown already: no rewrite
    assert stream.getvalue().count("4.0 MiB moved") == 1
    small = io.StringIO()
    quiet_copy = Progress(small, tty=True)
    quiet_copy.tick(3000)
    quiet_copy.tick(3000)  # a small copy adds no rewrite, moving or not
    assert small.getvalue() == ""


@pytest_twisted.ensureDeferred
async def test_a_large_blob_shows_its_bytes_in_a_log_too(
    tls_fake: FakeUpstream, tmp_path: Path
) -> None:
    """Off a terminal (stderr a pipe, as in a CI log) the layer held after 4 MiB shows as a
    line of bytes moved every ``--progress-interval``, before the copy ends; it used to show
    nothing until the blob was done."""
    image = tls_fake.content.add_image("library/big", "1", [8 * 1024 * 1024])
    hold = tls_fake.hold_body(image.layers[0].digest, 4 * 1024 * 1024)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DOCKER_CONFIG": "/nonexistent"}
    command = [sys.executable, "-m", "registry.cli", "copy", "--progress-interval", "0.2"]
    command += [*source_args(tls_fake, tmp_path, "library/big:1"), f"oci:{tmp_path / 'out'}:1"]
    reader, writer = os.pipe()
    shown = b""

    def read_some() -> None:
        nonlocal shown
        for _ in range(1000):  # bounded: what a pipe holds, read in pieces
            if not select.select([reader], [], [], 0)[0]:
                return
            data = os.read(reader, 65536)
            if not data:  # the writing end is closed
                return
            shown += data

    try:
        child = await deferToThread(
            subprocess.Popen, command, stdout=subprocess.PIPE, stderr=writer, env=env
        )
        try:
            await wait_for(
                lambda: read_some() or b"moving: 4.0 MiB so far" in shown, "4.0 MiB logged"
            )
        finally:
            hold.release()
            out, _ = await deferToThread(child.communicate, timeout=120)
        os.close(writer)
        writer = -1
        read_some()
    finally:
        os.close(reader)
        if writer != -1:
            os.close(writer)
    assert child.returncode == 0
    assert f"copied {image.digest}: 1 manifests, 2 blobs (8.0 MiB)" in out.decode()
    # Whole lines, one event each: the log's lines, not a terminal's rewrites.
    assert b"\r" not in shown and b"\x1b" not in shown
    moving = [line for line in shown.decode().splitlines() if line.startswith("moving: ")]
    assert moving and all(line.endswith("/s") for line in moving), moving
