"""
Which repositories and tags a sync copies: repository globs, tag globs and regular
expressions, and "the newest N" by semantic version.

Globs are path globs over repository names: ``*`` matches within one path component, ``**``
across components (``team/**`` is everything under ``team/``), ``?`` one character.  A glob
without any of these is a plain name, which a sync can copy without listing the remote's
catalog (Docker Hub has none).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

import attrs

_GLOB_CHARS = re.compile(r"[*?]")
# What a repository glob may hold: the characters of repository names, "/", and "*" and "?".
_GLOB_TEXT = re.compile(r"[a-z0-9._/*?-]+")
# MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD], with an optional leading v (v1.2.3, 1.2, 3).
_SEMVER = re.compile(
    r"v?(?P<major>0|[1-9]\d*)(?:\.(?P<minor>0|[1-9]\d*))?(?:\.(?P<patch>0|[1-9]\d*))?"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?"
)


def is_glob(pattern: str) -> bool:
    return _GLOB_CHARS.search(pattern) is not None


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A repository glob as an anchored regular expression."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def check_glob(pattern: str) -> str:
    """Refuse what cannot be a repository glob: empty, a leading or trailing slash, or a
    character no repository name has (uppercase, a space, ``[``), which would match nothing
    and let every run copy nothing, reported as a success."""
    pattern = pattern.strip()
    if (
        not pattern
        or pattern.startswith("/")
        or pattern.endswith("/")
        or not _GLOB_TEXT.fullmatch(pattern)
    ):
        raise ValueError(
            f"{pattern!r} is not a repository glob (names' characters a-z 0-9 . _ - /, "
            "with * ** ?; e.g. library/*, team/**)"
        )
    return pattern


@attrs.frozen
class RepositoryFilter:
    """Repository globs; names that no glob matches are not copied."""

    globs: tuple[str, ...] = ("**",)

    def matches(self, name: str) -> bool:
        return any(glob_regex(glob).fullmatch(name) for glob in self.globs)

    @property
    def literal_names(self) -> tuple[str, ...] | None:
        """The names themselves when no glob has a wildcard (no catalog needed), else None."""
        if any(is_glob(glob) for glob in self.globs):
            return None
        return self.globs


def semver_key(tag: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]] | None:
    """A sort key for a semantic-version tag (a release sorts after its pre-releases), or
    None when the tag is not a version."""
    match = _SEMVER.fullmatch(tag)
    if match is None:
        return None
    major, minor, patch = (int(match.group(k) or 0) for k in ("major", "minor", "patch"))
    pre = match.group("pre")
    if pre is None:
        return (major, minor, patch, 1, ())
    parts: list[tuple[int, int | str]] = []
    for part in pre.split("."):
        parts.append((0, int(part)) if part.isdigit() else (1, part))
    return (major, minor, patch, 0, tuple(parts))


@attrs.frozen
class TagFilter:
    """Tags that match every given filter: one of ``globs`` (when any), ``regex`` (when
    set) and not ``exclude``; then, with ``newest``, only the N highest semantic versions
    (tags that are not versions are left out)."""

    globs: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None
    exclude: re.Pattern[str] | None = None
    newest: int = 0

    def select(self, tags: Iterable[str]) -> list[str]:
        chosen = [tag for tag in tags if self._matches(tag)]
        if self.newest > 0:
            versions = [(key, tag) for tag in chosen if (key := semver_key(tag)) is not None]
            versions.sort(reverse=True)
            chosen = [tag for _, tag in versions[: self.newest]]
        return sorted(chosen)

    def _matches(self, tag: str) -> bool:
        if self.globs and not any(fnmatch.fnmatchcase(tag, glob) for glob in self.globs):
            return False
        if self.regex is not None and self.regex.fullmatch(tag) is None:
            return False
        return self.exclude is None or self.exclude.fullmatch(tag) is None


def map_name(name: str, strip: str, destination: str) -> str:
    """The name on the other side: ``strip`` removed from the front, ``destination`` added."""
    if strip and name.startswith(strip + "/"):
        name = name[len(strip) + 1 :]
    if destination:
        return f"{destination}/{name}" if name else destination
    return name


def literal_prefix(globs: Sequence[str]) -> str:
    """
    The leading path components every glob shares (for ``strip_prefix``): whole components,
    before any wildcard, and never a plain name's last one (the repository itself stays
    named).  ``team/web team/app`` and ``team/* team/sub/*`` share ``team``; ``a/* b/*``
    nothing.
    """
    common: list[str] | None = None
    for glob in globs:
        parts = glob.split("/")
        literal = []
        for part in parts:
            if is_glob(part):
                break
            literal.append(part)
        else:
            literal = literal[:-1]  # a plain name: its own last component is not a prefix
        if common is None:
            common = literal
        else:
            same = 0
            while same < min(len(common), len(literal)) and common[same] == literal[same]:
                same += 1
            common = common[:same]
    return "/".join(common or [])
