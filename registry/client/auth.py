"""
Credentials for a registry: given, or read from a Docker ``config.json`` (or podman/skopeo's
``auth.json``, the same format).

Only the ``auths`` section is read: ``auth`` (base64 of ``user:password``) or ``username`` and
``password``.  Credential helpers (``credsStore``, ``credHelpers``) run external programs and
are not supported: a host configured only through one gets no credentials (anonymous).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

import attrs

_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io")
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@attrs.frozen(repr=False)
class Credentials:
    """A username and password (or token) for Basic auth and for the token service."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """``user:password`` as skopeo's ``--creds`` takes it."""
        user, sep, password = text.partition(":")
        if not user:
            raise ValueError("credentials must be USER[:PASSWORD]")
        return cls(user, password if sep else "")


def default_config_paths() -> list[Path]:
    """Where Docker and podman keep credentials, in the order they are tried."""
    paths = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker = os.environ.get("DOCKER_CONFIG")
    paths.append(Path(docker) / "config.json" if docker else Path.home() / ".docker/config.json")
    return paths


def _keys_for(host: str, repository: str | None = None) -> list[str]:
    """The keys of ``auths`` that hold credentials for ``repository`` at ``host``, the most
    specific first: ``host/ns/app``, ``host/ns`` (containers-auth.json(5)'s keys scoped to a
    repository or a namespace), then the host's own keys."""
    scoped: list[str] = []
    if repository:
        hosts = ["docker.io"] if host in _DOCKER_HUB_HOSTS else [host]
        parts = repository.split("/")
        for end in range(len(parts), 0, -1):
            scoped += [f"{name}/{'/'.join(parts[:end])}" for name in hosts]
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host in _DOCKER_HUB_HOSTS:
        keys += list(_DOCKER_HUB_KEYS)
    return scoped + keys


def credentials_from_config(
    host: str, path: str | Path | None = None, repository: str | None = None
) -> Credentials | None:
    """The credentials stored for ``host`` (``name[:port]``) in a Docker ``config.json``;
    ``path`` None tries the usual places.  With ``repository``, a key scoped to it or to a
    namespace above it (``host/ns/app``, ``host/ns``: podman's ``auth.json``) is taken before
    the host's, the most specific first.  None when there are none.  A file that is not
    valid JSON raises ValueError (a wrong ``--authfile`` should not look like anonymous)."""
    paths = [Path(path)] if path is not None else default_config_paths()
    for candidate in paths:
        if not candidate.is_file():
            if path is not None:
                raise ValueError(f"{candidate}: no such file")
            continue
        try:
            data = json.loads(candidate.read_text())
        except ValueError as exc:
            raise ValueError(f"{candidate}: not JSON ({exc})") from None
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            continue
        for key in _keys_for(host.lower(), repository):
            entry = auths.get(key)
            if isinstance(entry, dict):
                found = _entry_credentials(entry)
                if found is not None:
                    return found
    return None


def _entry_credentials(entry: dict[str, object]) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError(
                "config.json: an 'auth' entry is not base64 of user:password"
            ) from None
        name, _, secret = decoded.partition(":")
        return Credentials(name, secret)
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and user and isinstance(password, str):
        return Credentials(user, password)
    return None
