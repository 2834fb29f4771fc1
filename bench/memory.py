"""
Memory of a process tree (a server and its workers), read from ``/proc/<pid>/smaps_rollup``:

- RSS: resident pages, shared ones (libraries, pages a fork shares) counted in every process;
- PSS: each shared page divided among the processes that map it, so the sum over a tree is
  what the tree really holds (pages shared with processes outside it are divided with them
  too, so PSS moves a little with what else runs);
- USS: the process's private pages (what stopping it would give back).
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Memory(NamedTuple):
    """One process's memory in KiB."""

    pid: int
    rss: int
    pss: int
    uss: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        fields = {}
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                name, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    fields[name] = int(rest.split()[0])
        uss = fields["Private_Clean"] + fields["Private_Dirty"]
        return cls(pid, fields["Rss"], fields["Pss"], uss)


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux: /proc/PID/task/TID/children)."""
    found = [pid]
    for parent in found:
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children") as children:
                found.extend(int(child) for child in children.read().split())
    return found


def tree_memory(pid: int) -> list[Memory]:
    """Memory of ``pid`` and of every descendant still alive."""
    memory = []
    for each in tree_pids(pid):
        try:
            memory.append(Memory.of(each))
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
    return memory


PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_PFN = (1 << 55) - 1


def _frames(pid: int) -> set[int]:
    """The physical frames of ``pid``'s resident pages (``/proc/PID/pagemap``)."""
    frames: set[int] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if line.rstrip().endswith("[vsyscall]"):
                continue
            pagemap.seek(start // PAGE * 8)
            data = pagemap.read((end - start) // PAGE * 8)
            for index in range(0, len(data), 8):
                entry = int.from_bytes(data[index : index + 8], "little")
                if entry & _PRESENT:
                    frames.add(entry & _PFN)
    return frames


def distinct_resident_kib(pids: list[int]) -> int | None:
    """
    The resident memory of ``pids`` with every shared page counted once (the union of their
    physical pages): what the tree holds if nothing else shared its libraries.  Needs root
    (frame numbers read as 0 otherwise); None without it.
    """
    if os.geteuid() != 0:
        return None
    frames: set[int] = set()
    for pid in pids:
        try:
            frames |= _frames(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return len(frames) * PAGE // 1024
