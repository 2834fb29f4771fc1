"""
OCI image layouts: a directory holding ``oci-layout``, ``index.json`` and
``blobs/<algorithm>/<hex>`` (what ``skopeo copy oci:DIR:TAG`` reads and writes).

    DIR/
      oci-layout          {"imageLayoutVersion": "1.0.0"}
      index.json          an OCI index; a tagged entry has the annotation
                          org.opencontainers.image.ref.name = TAG
      blobs/sha256/<hex>  every blob and every manifest, named by its digest

Blobs are written to a temporary file beside their final name, hashed while written, and
renamed only when the digest matches: a reader never sees a partial or wrong blob.  A write
that fails or is cancelled removes its temporary file; one whose process was killed cannot,
so opening a layout to write into it removes temporary files nobody has written to for
`STALE_TEMP_AGE` seconds (a live writer touches its file with every chunk; one that stopped
that long ago has long timed out).  Every file operation runs in the reactor's thread pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from registry.api.digests import Digest, digest_of
from registry.client._client import OCI_INDEX, BlobStream, RegistryClient
from registry.client._digests import as_digest
from registry.client._streams import FileSink, in_thread, new_hash
from registry.client.errors import BadResponse, NotFound, TooLarge
from registry.client.walk import descriptor_problem

STALE_TEMP_AGE = 3600.0
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = '{"imageLayoutVersion":"1.0.0"}'


class OCILayout:
    """One layout directory.  `create` makes it if needed; `open` requires it."""

    def __init__(self, reactor: Any, root: str | Path) -> None:
        self.reactor = reactor
        self.root = Path(root)

    @classmethod
    async def create(cls, reactor: Any, root: str | Path) -> OCILayout:
        """The layout at ``root`` to write into: created (empty index) when absent, its stale
        temporary files (a killed writer's) removed."""
        layout = cls(reactor, root)
        await in_thread(reactor, layout._create)
        await layout.index()  # one that was there is checked before anything is written
        await in_thread(reactor, layout._remove_stale_temps, time.time() - STALE_TEMP_AGE)
        return layout

    def _remove_stale_temps(self, before: float) -> None:
        candidates = [*self.root.glob(".index-*"), *self.root.glob("blobs/*/.tmp-*")]
        for path in candidates:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < before:
                    path.unlink()

    @classmethod
    async def open(cls, reactor: Any, root: str | Path) -> OCILayout:
        """An existing layout; ValueError when ``root`` is not one (no ``oci-layout`` file, or
        an ``index.json`` that is not an OCI index of valid descriptors)."""
        layout = cls(reactor, root)
        if not await in_thread(reactor, (layout.root / "oci-layout").is_file):
            raise ValueError(f"{root} is not an OCI image layout (no oci-layout file)")
        await layout.index()
        return layout

    def _create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / "oci-layout").exists():
            (self.root / "oci-layout").write_text(LAYOUT_FILE)
        if not (self.root / "index.json").exists():
            self._write_index([])
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    # -- blobs

    def blob_path(self, digest: Digest | str) -> Path:
        dgst = as_digest(digest)
        return self.root / "blobs" / dgst.algorithm / dgst.hex

    async def blob_size(self, digest: Digest | str) -> int | None:
        """The stored blob's size, or None when it is not there."""
        path = self.blob_path(digest)

        def size() -> int | None:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return None

        result: int | None = await in_thread(self.reactor, size)
        return result

    async def read_blob(self, digest: Digest | str, max_size: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (a manifest, a config), checked against its digest."""
        dgst = as_digest(digest)
        path = self.blob_path(dgst)

        def read() -> bytes:
            try:
                with path.open("rb") as handle:
                    return handle.read(max_size + 1)
            except FileNotFoundError:
                raise NotFound(None, f"{dgst} not in {self.root}", "BLOB_UNKNOWN") from None

        data: bytes = await in_thread(self.reactor, read)
        if len(data) > max_size:
            raise TooLarge(str(dgst), max_size)
        if digest_of(data, dgst.algorithm) != dgst:
            raise BadResponse(None, f"{path} does not hash to {dgst}")
        return data

    async def write_bytes(self, data: bytes, digest: Digest | str | None = None) -> Digest:
        """Store ``data`` (checked against ``digest`` when given)."""
        dgst = digest_of(data) if digest is None else as_digest(str(digest))
        if digest_of(data, dgst.algorithm) != dgst:
            raise ValueError(f"data does not hash to {dgst}")
        target = self.blob_path(dgst)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = _new_file(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, target)

        await in_thread(self.reactor, write)
        return dgst

    async def write_stream(self, stream: BlobStream) -> int:
        """Store an open blob response, hashed on the way; the blob appears only if it
        hashes to ``stream.digest``."""
        dgst = stream.digest
        target = self.blob_path(dgst)
        handle, temp = await in_thread(self.reactor, _temp_beside, target)
        hasher = new_hash(dgst.algorithm)
        sink = FileSink(self.reactor, handle, hasher)
        done = False
        try:
            try:
                await stream.write_to(sink, verify=False)
            except Exception:
                sink.check()  # a write that failed (a full disk) stopped the body
                raise
            await sink.close()
            if Digest(dgst.algorithm, hasher.hexdigest()) != dgst:
                raise BadResponse(None, f"blob {dgst} hashes to sha256:{hasher.hexdigest()}")
            await in_thread(self.reactor, handle.close)
            await in_thread(self.reactor, os.replace, temp, target)
            done = True
            return sink.written
        finally:
            if not done:
                await in_thread(self.reactor, _discard, handle, temp)

    async def download(
        self, client: RegistryClient, name: str, digest: Digest | str, *, size: int | None = None
    ) -> int:
        """Fetch a blob from a registry into the layout (resumed on a cut, verified); ``size``,
        the size a manifest declares, bounds what is written (`RegistryClient.blob`)."""
        dgst = as_digest(digest)
        target = self.blob_path(dgst)
        temp = await in_thread(self.reactor, _temp_name, target)
        try:
            written = await client.download_blob(name, dgst, temp, size=size)
            await in_thread(self.reactor, os.replace, temp, target)
            return written
        finally:
            await in_thread(self.reactor, _unlink, temp)

    async def copy_from(self, other: OCILayout, digest: Digest | str) -> None:
        """Copy a blob from another layout (re-hashed: the other may be damaged)."""
        source, target = other.blob_path(digest), self.blob_path(digest)
        dgst = as_digest(digest)

        def copy() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = _new_file(dir=target.parent, prefix=".tmp-")
            hasher = new_hash(dgst.algorithm)
            with source.open("rb") as reader, os.fdopen(fd, "wb") as writer:
                while chunk := reader.read(1 << 20):
                    hasher.update(chunk)
                    writer.write(chunk)
            if hasher.hexdigest() != dgst.hex:
                os.unlink(temp)
                raise BadResponse(None, f"{source} does not hash to {dgst}")
            os.replace(temp, target)

        await in_thread(self.reactor, copy)

    # -- index.json

    async def index(self) -> dict[str, Any]:
        """``index.json`` parsed; ValueError when it is not an OCI index whose ``manifests``
        are valid descriptors (a ``mediaType``, a ``digest`` that parses, a ``size``)."""
        path = self.root / "index.json"

        def read() -> Any:
            try:
                return json.loads(path.read_text())
            except FileNotFoundError:
                raise ValueError(
                    f"{self.root} is not an OCI image layout (no index.json)"
                ) from None
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"{path} is not JSON ({exc})") from None

        data = await in_thread(self.reactor, read)
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a JSON object")
        entries = data.get("manifests")
        if entries is None:
            entries = data["manifests"] = []  # absent, or null as Go writes an empty list
        if not isinstance(entries, list):
            raise ValueError(f"{path} is not valid: manifests is not a list")
        for number, entry in enumerate(entries):
            problem = descriptor_problem(entry, f"manifests[{number}]")
            if problem is not None:
                raise ValueError(f"{path} is not valid: {problem}")
        return data

    async def resolve(self, reference: str | None) -> dict[str, Any]:
        """The descriptor for a tag (``ref.name`` annotation) or a digest; None picks the
        only entry.  NotFound when there is no such entry."""
        entries = (await self.index()).get("manifests") or []
        if reference is None:
            if len(entries) != 1:
                raise ValueError(f"{self.root} has {len(entries)} images: name one")
            return dict(entries[0])
        for entry in entries:
            if _ref_name(entry) == reference or entry["digest"] == reference:
                return dict(entry)
        if Digest.is_digest(reference) and await self.blob_size(reference) is not None:
            data = await self.read_blob(reference)
            try:
                document = json.loads(data)
            except (ValueError, RecursionError):
                document = None
            media_type = document.get("mediaType") if isinstance(document, dict) else None
            return {
                "mediaType": media_type if isinstance(media_type, str) else "",
                "digest": reference,
                "size": len(data),
            }
        raise NotFound(None, f"{reference} not in {self.root}/index.json", "MANIFEST_UNKNOWN")

    async def add(self, descriptor: dict[str, Any], tag: str | None = None) -> None:
        """Record a manifest in ``index.json``: under ``tag`` (replacing what had that tag),
        or untagged (referrers, extra images) unless its digest is listed already."""
        entry = {k: v for k, v in descriptor.items() if k in ("mediaType", "digest", "size")}
        for key in ("artifactType", "platform", "annotations"):
            if key in descriptor:
                entry[key] = descriptor[key]
        annotations = dict(entry.get("annotations") or {})
        annotations.pop(REF_NAME, None)
        if tag is not None:
            annotations[REF_NAME] = tag
        if annotations:
            entry["annotations"] = annotations
        else:
            entry.pop("annotations", None)

        def update() -> None:
            index = json.loads((self.root / "index.json").read_text())
            entries = [
                e
                for e in index.get("manifests") or []
                if not (tag is not None and _ref_name(e) == tag)
            ]
            if tag is not None or all(e.get("digest") != entry["digest"] for e in entries):
                entries.append(entry)
            self._write_index(entries)

        await in_thread(self.reactor, update)

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        fd, temp = _new_file(dir=self.root, prefix=".index-")
        with os.fdopen(fd, "w") as handle:
            json.dump(index, handle)
        os.replace(temp, self.root / "index.json")

    async def referrers(
        self, subject: Digest | str, artifact_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Manifests listed in ``index.json`` whose ``subject`` is ``subject``."""
        found = []
        for entry in (await self.index()).get("manifests") or []:
            if entry.get("digest") == str(subject):
                continue
            try:
                data = json.loads(await self.read_blob(entry["digest"]))
            except (ValueError, RecursionError, NotFound, BadResponse):
                continue
            if not isinstance(data, dict) or not isinstance(data.get("subject"), dict):
                continue
            if data["subject"].get("digest") != str(subject):
                continue
            config = data.get("config")
            kind = data.get("artifactType") or (
                config.get("mediaType") if isinstance(config, dict) else None
            )
            if artifact_type is not None and kind != artifact_type:
                continue
            descriptor = {k: entry[k] for k in ("mediaType", "digest", "size") if k in entry}
            if kind:
                descriptor["artifactType"] = kind
            found.append(descriptor)
        return found


def _ref_name(entry: dict[str, Any]) -> object:
    """The tag an ``index.json`` entry is listed under (its ``ref.name`` annotation)."""
    annotations = entry.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


def _process_umask() -> int:
    """The umask, from /proc where Linux shows it (reading it with os.umask means setting it
    for a moment, under every other thread's feet)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import: files of a layout get the modes other files this process makes get,
# as skopeo's do, not mkstemp's owner-only 0600 (a layout copied by one user could not be
# served or read by another).
_UMASK = _process_umask()


def _new_file(dir: Path, prefix: str) -> tuple[int, str]:
    """A new temporary file in ``dir`` (moved into place once complete), with the modes the
    process's umask gives a new file."""
    fd, temp = tempfile.mkstemp(dir=dir, prefix=prefix)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, temp


def _temp_beside(target: Path) -> tuple[IO[bytes], str]:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = _new_file(dir=target.parent, prefix=".tmp-")
    return os.fdopen(fd, "wb"), temp


def _temp_name(target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = _new_file(dir=target.parent, prefix=".tmp-")
    os.close(fd)
    return temp


def _discard(handle: IO[bytes], temp: str) -> None:
    handle.close()
    _unlink(temp)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


__all__ = ["REF_NAME", "OCILayout"]
