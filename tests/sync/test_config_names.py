"""
A ``[sync:NAME]`` (or ``[proxy:NAME]``, ``[notifications:NAME]``) whose name breaks the rule
stops a real ``twistd -n registry`` at start with one line that says the rule, not "unknown
section".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.test_startup_failures import assert_one_line, run_registry


@pytest.mark.parametrize(
    "section", ["sync:Upstream", "sync:up stream", "proxy:Hub", "notifications:"]
)
def test_a_section_name_out_of_the_rule_says_the_rule(tmp_path: Path, section: str) -> None:
    config = tmp_path / "r.cfg"
    config.write_text(f"[{section}]\nremote = http://127.0.0.1:1\n")
    result = run_registry(tmp_path, "--config", str(config), "--storage", str(tmp_path / "data"))
    kind = section.partition(":")[0]
    assert_one_line(
        result,
        f"txregistry: configuration error: [{section}]: a section name after '{kind}:' is "
        "lower-case letters, digits, '.', '_' and '-' only",
    )
