"""
Text that someone else chose (a remote registry's error message, a repository name or tag
from its catalog), made safe to put into a log line or a status answer.

A log line ends at a line break, and readers split on more of them than ``\\n``: ``\\r``, the
other ASCII controls ``str.splitlines`` knows (``\\v``, ``\\f``, ``\\x1c``-``\\x1e``), the C1
control NEL (``\\x85``), and U+2028 and U+2029.  Text holding one could write a line of its
own, one that looks like the registry's (a forged ``[registry.sync.service#info]`` line).
`one_line` writes every character `str.isprintable` refuses (every control, those line and
paragraph separators, bidirectional overrides and other format characters that change how
the text around them reads) as its Python escape (``\\n``, ``\\x85``, ``\\u2028``), as
``repr`` would; the rest is left as it is.  The access log (`registry.http.request`)
percent-encodes instead, as its values are URL-like.
"""

from __future__ import annotations


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` with each unprintable character written as its escape, cut to its first
    ``limit`` characters (before escaping) when given."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text  # what nearly every message is
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
