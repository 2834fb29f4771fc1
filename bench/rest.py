"""
Memory at rest: the RSS of an idle ``twistd -n registry`` started with the default tap.cfg.

    python bench/rest.py [--tree PATH] [--settle 2]

The configuration is the repository's tap.cfg with the port moved to loopback port 0 and the
storage to a fresh folder; RSS is read from ``/proc/<pid>/status`` ``--settle`` seconds after
the registry logged ``txregistry listening on``.  ``--tree`` measures another checkout (a
worktree of an older commit, say) with this interpreter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=REPO_ROOT)
    parser.add_argument("--settle", type=float, default=2.0)
    args = parser.parse_args()
    tree = args.tree.resolve()
    with tempfile.TemporaryDirectory() as work:
        config = (tree / "tap.cfg").read_text()
        config = config.replace("port = tcp:5000", "port = tcp:0:interface=127.0.0.1", 1)
        config = config.replace("./registry-data", f"{work}/data", 1)
        (Path(work) / "tap.cfg").write_text(config)
        log = Path(work) / "twistd.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["PYTHONPATH"] = str(tree)
        command = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "-l", str(log), "registry", "--config", f"{work}/tap.cfg",
        ]  # fmt: skip
        child = subprocess.Popen(command, cwd=work, env=env)
        try:
            deadline = time.monotonic() + 60
            while "txregistry listening on" not in (log.read_text() if log.exists() else ""):
                if child.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the registry did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            time.sleep(args.settle)
            rss = status_kib(child.pid, "VmRSS")
            print(f"{tree}: idle RSS {rss / 1024:.1f} MiB ({rss} kB), default tap.cfg")
        finally:
            child.terminate()
            child.wait(timeout=30)


if __name__ == "__main__":
    main()
