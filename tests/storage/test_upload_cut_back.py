"""
`resumable_offset`: where an upload whose stored bytes cannot be read back (S3) continues when
its file goes past its last hash state.
"""

from __future__ import annotations

from registry.storage.driver import Unfinished
from registry.storage.uploads import resumable_offset

MIB = 1024 * 1024
# Two parts of 5 MiB and a tail of 1 MiB.
FILE = Unfinished(11 * MIB, (0, 5 * MIB, 10 * MIB), 10 * MIB)


def test_a_file_with_a_state_at_its_end_stays_whole() -> None:
    assert resumable_offset(FILE, [5 * MIB, 11 * MIB]) == 11 * MIB


def test_an_empty_file_needs_no_state() -> None:
    assert resumable_offset(Unfinished(0, (0,), 0), []) == 0


def test_cut_back_to_the_last_state_at_a_part_end() -> None:
    assert resumable_offset(FILE, [5 * MIB]) == 5 * MIB


def test_cut_back_to_a_state_within_the_tail() -> None:
    assert resumable_offset(FILE, [5 * MIB, 10 * MIB + 3]) == 10 * MIB + 3


def test_a_state_inside_a_part_cannot_be_reached() -> None:
    # The bytes between the part's start and the state are in a part S3 cannot give back.
    assert resumable_offset(FILE, [3 * MIB, 7 * MIB]) == 0
    assert resumable_offset(FILE, [5 * MIB, 7 * MIB]) == 5 * MIB


def test_states_past_the_file_are_not_where_it_is() -> None:
    assert resumable_offset(FILE, [12 * MIB]) == 0
