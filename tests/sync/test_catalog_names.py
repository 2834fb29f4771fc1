"""
The repository names a pull takes from a remote: those of its catalog are checked as a push's
are (NAME_INVALID), and so is each one's name on this side (``destination``); a name that
fails is one error of the run, the others are copied.  A remote's catalog may list anything,
and a name such as ``team/app/_manifests/tags`` stored as it is would land inside
``team/app``'s own folders (whose tag list then showed ``_layers``, ``_manifests`` and
``_uploads``).  The local stores refuse such a name from the sync whatever its caller.

A plain name beside globs (``team/* base/alpine``) is tried directly, as when all names are
plain: a catalog that does not list it does not drop it, and a name the remote does not have
is an error of the run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from registry.api.digests import Digest
from registry.api.errors import RegistryError
from registry.config import load
from registry.handlers.context import RegistryContext
from registry.storage import layout
from registry.storage.driver import PathNotFoundError
from registry.storage.memory import MemoryDriver
from registry.sync.sides import LocalSide, RemoteSide
from registry.sync.throttle import Throttle
from registry.sync.transfer import pull_blob
from tests.client.conftest import ClientFactory
from tests.e2e.client import get
from tests.e2e.conftest import Starter
from tests.fakes.upstream import Switches, start_fake_upstream
from tests.sync.helpers import wait_runs

BAD_NAMES = ["Team/App", "team/app/_manifests/tags", "x/_layers", "a//b", "-x/y"]
# A valid name, but not once ``destination = mirror`` is put before it (over 255 characters).
LONG = "long/" + "a" * 248


def _repositories(tmp_path: Path) -> Path:
    return tmp_path / "registry0" / "data" / "docker/registry/v2/repositories"


@pytest_twisted.ensureDeferred
async def test_names_a_catalog_lists_are_checked_before_anything_is_stored(
    start_registry: Starter, make_client: ClientFactory, tmp_path: Path
) -> None:
    fake = await start_fake_upstream(reactor, switches=Switches(auth="none"))
    try:
        good = fake.content.add_image("team/app", "v1.0.0", [1000])
        for name in BAD_NAMES:
            fake.content.add_image(name, "v1.0.0", [1000])
        fake.content.add_image(LONG, "v1.0.0", [1000])
        common = {"remote": fake.url, "first_run_within": "0s", "repositories": "**"}
        local = await start_registry(
            {"sync:all": common, "sync:moved": {**common, "destination": "mirror"}}
        )
        status = await wait_runs(local.url, "all")
        assert status["last"]["result"] == "failed", status
        messages = status["last"]["error_messages"]
        assert status["last"]["errors"] == len(BAD_NAMES), messages
        for name, message in zip(sorted(BAD_NAMES), sorted(messages), strict=True):
            assert message.startswith(f"{name}: not a valid repository name ("), message
            assert message.endswith("; skipped"), message
        assert status["last"]["repositories"] == 2  # team/app and the long one
        assert status["last"]["manifests"] == 2

        moved = await wait_runs(local.url, "moved")
        assert moved["last"]["errors"] == len(BAD_NAMES) + 1, moved
        (long_error,) = [m for m in moved["last"]["error_messages"] if m.startswith(LONG)]
        assert long_error.startswith(
            f"{LONG}: its name on the receiving side is not a valid repository name (longer "
            f"than 255), skipped: mirror/long/aaaa"
        ), long_error

        here = make_client(local.url)
        catalog = [name async for name in here.all_repositories()]
        assert catalog == [LONG, "mirror/team/app", "team/app"]
        for name in ("team/app", "mirror/team/app"):
            assert [tag async for tag in here.all_tags(name)] == ["v1.0.0"], name
            assert (await here.get_manifest(name, "v1.0.0")).body == good.manifest
        # Nothing of the bad names reached storage, in its own folder or inside another's.
        stored = _repositories(tmp_path)
        assert sorted(p.name for p in stored.iterdir()) == ["long", "mirror", "team"]
        assert sorted(p.name for p in (stored / "team").iterdir()) == ["app"]
        tags_folder = stored / "team" / "app" / "_manifests" / "tags"
        assert [p.name for p in tags_folder.iterdir()] == ["v1.0.0"]
        assert not (stored / "mirror" / "long").exists()
        response, body = await get(f"{local.url}/v2/team/app/tags/list")
        assert response.code == 200 and b"_manifests" not in body, body
    finally:
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_the_local_side_refuses_a_name_no_request_could_give(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Defence in depth: the sync's way into the stores (`LocalSide`, `pull_blob`) checks
    every name itself, so a caller that forgot to cannot store under it (the image's blobs
    are all here: without the check it would be linked and put); a refused blob is not even
    asked of the remote."""
    fake = await start_fake_upstream(reactor, switches=Switches(auth="none"))
    try:
        image = fake.content.add_image("Team/App", "v1", [1000])
        config_path = tmp_path / "registry.cfg"
        config_path.write_text("[storage]\ndriver = inmemory\n")
        driver = MemoryDriver()
        ctx = RegistryContext.build(load(str(config_path), {}), driver, reactor)
        assert image.config is not None
        for digest in (image.config, image.layers[0].digest):
            blob = fake.content.blobs[digest]
            await ctx.blobs.put_small(b"".join(blob.read(0, blob.size)))
        local = LocalSide(ctx)
        remote = RemoteSide(make_client(fake.url))
        layer = Digest.parse(image.layers[0].digest)

        def calls(name: str) -> dict[str, Callable[[], Awaitable[object]]]:
            return {
                "tags": lambda: local.tags(name),
                "tag_digest": lambda: local.tag_digest(name, "v1"),
                "manifest": lambda: local.manifest(name, "v1"),
                "has_manifest": lambda: local.has_manifest(name, Digest.parse(image.digest)),
                "put_manifest": lambda: local.put_manifest(
                    name, "v1", image.manifest, image.media_type
                ),
                "has_blob": lambda: local.has_blob(name, layer),
                "blob_size": lambda: local.blob_size(name, layer),
                "referrers": lambda: local.referrers(name, layer),
                "pull_blob": lambda: pull_blob(
                    remote, "Team/App", local, name, layer, Throttle(Clock(), 0)
                ),
            }

        for name in ("Team/App", "team/app/_manifests/tags", "x/_layers", ""):
            for what, call in calls(name).items():
                with pytest.raises(RegistryError) as caught:
                    await call()
                assert caught.value.code.value == "NAME_INVALID", (name, what)
        assert fake.count(kind="blob") == 0
        with pytest.raises(PathNotFoundError):
            await driver.list(layout.REPOSITORIES)
    finally:
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_a_plain_name_beside_globs_is_tried_whatever_the_catalog_lists(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    """``repositories = team/* base/alpine`` (the docs' example) against a catalog that does
    not list ``base/alpine`` (a registry whose catalog shows only some repositories): it is
    copied all the same, and ``base/nonesuch``, which the remote does not have, is an error
    of the run rather than silence."""
    fake = await start_fake_upstream(
        reactor, switches=Switches(auth="none", catalog_hides=frozenset({"base/alpine"}))
    )
    try:
        app = fake.content.add_image("team/app", "v1", [1000])
        alpine = fake.content.add_image("base/alpine", "3.20", [1000])
        fake.content.add_image("other/thing", "v1", [1000])
        local = await start_registry(
            {
                "sync:mixed": {
                    "remote": fake.url,
                    "first_run_within": "0s",
                    "repositories": "team/* base/alpine base/nonesuch",
                }
            }
        )
        status = await wait_runs(local.url, "mixed")
        assert fake.count("GET", "catalog") >= 1  # the catalog was read
        assert status["last"]["result"] == "failed", status
        (message,) = status["last"]["error_messages"]
        assert message.startswith("base/nonesuch: the remote has no repository base/nonesuch")
        assert status["last"]["repositories"] == 2
        here = make_client(local.url)
        assert (await here.get_manifest("team/app", "v1")).body == app.manifest
        assert (await here.get_manifest("base/alpine", "3.20")).body == alpine.manifest
        assert [name async for name in here.all_repositories()] == ["base/alpine", "team/app"]
    finally:
        await fake.stop()


@pytest_twisted.ensureDeferred
async def test_plain_names_are_copied_when_the_catalog_cannot_be_read(
    start_registry: Starter, make_client: ClientFactory
) -> None:
    """A remote without a catalog (Docker Hub) and ``repositories = team/* base/alpine``:
    the catalog's refusal is an error of the run, and ``base/alpine`` is copied all the same."""
    fake = await start_fake_upstream(reactor, switches=Switches(auth="none", catalog_status=404))
    try:
        alpine = fake.content.add_image("base/alpine", "3.20", [1000])
        fake.content.add_image("team/app", "v1", [1000])
        local = await start_registry(
            {
                "sync:hub": {
                    "remote": fake.url,
                    "first_run_within": "0s",
                    "repositories": "team/* base/alpine",
                }
            }
        )
        status = await wait_runs(local.url, "hub")
        assert status["last"]["result"] == "failed", status
        (message,) = status["last"]["error_messages"]
        assert message.startswith("registry 404: "), message
        assert "no catalog here" in message
        here = make_client(local.url)
        assert (await here.get_manifest("base/alpine", "3.20")).body == alpine.manifest
        assert [name async for name in here.all_repositories()] == ["base/alpine"]
    finally:
        await fake.stop()
