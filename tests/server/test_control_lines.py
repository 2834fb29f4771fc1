"""The control pipes' framing (registry.server.control_lines), shared by both ends."""

from __future__ import annotations

import pytest

from registry.server.control_lines import MAX_LINE, LineBuffer, LineTooLong


def test_lines_come_out_whole_whatever_the_pieces() -> None:
    lines = LineBuffer()
    assert lines.feed(b'{"a":') == []
    assert lines.feed(b'1}\n\n  \n{"b"') == [b'{"a":1}']
    assert lines.feed(b":2}\n") == [b'{"b":2}']


def test_a_line_past_the_bound_is_refused_not_buffered() -> None:
    lines = LineBuffer()
    lines.feed(b"x" * MAX_LINE)
    with pytest.raises(LineTooLong):
        lines.feed(b"y")
