"""
The UI's stylesheet and script: read once at import, served from memory, and linked with a
version taken from their content (``ui.css?v=<12 hex digits>``), so that a browser that
kept a copy for an hour (``max-age``) fetches the new one as soon as an upgrade changes it,
instead of running old JavaScript against new pages.
"""

from __future__ import annotations

import hashlib
import os

PATH = "/ui/static"
_DIR = os.path.join(os.path.dirname(__file__), "static")
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def _load() -> dict[str, tuple[bytes, str]]:
    files = {}
    for entry in sorted(os.listdir(_DIR)):
        kind = _TYPES.get(os.path.splitext(entry)[1])
        if kind is not None:
            with open(os.path.join(_DIR, entry), "rb") as file:
                files[entry] = (file.read(), kind)
    return files


FILES = _load()


def url(name: str) -> str:
    """Where a page links ``name``: with its content's version."""
    version = hashlib.sha256(FILES[name][0]).hexdigest()[:12]
    return f"{PATH}/{name}?v={version}"
