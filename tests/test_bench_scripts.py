"""
The bench scripts run as ``python bench/NAME.py``, which puts bench/ first on ``sys.path``: a
script named like a standard-library module would shadow it for every other script there.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_no_bench_module_shadows_the_standard_library() -> None:
    names = {path.stem for path in BENCH.glob("*.py")}
    assert names, "no bench scripts found"
    assert sorted(names & set(sys.stdlib_module_names)) == []
