"""
Memory at rest: an idle ``twistd -n registry`` started with the default tap.cfg, the whole
process tree (the supervisor and its ``[http] workers``).

    python bench/rest.py [--workers 2] [--tree PATH] [--settle 2] [--optimize 2] [--tls]

The configuration is the repository's tap.cfg with the port moved to loopback port 0, the
storage to a fresh folder and ``[http] workers`` set to ``--workers`` (1: one process).
``--settle`` seconds after the registry logged ``txregistry listening on``, each process's
memory is read (RSS, PSS and USS: `bench.memory` says what each counts), and summed over the
tree.  The PSS sum is what the tree holds; the RSS sum counts shared library pages once per
process; as root, the tree's distinct resident pages (USS plus every shared page once) too.

``--tree`` measures another checkout (a worktree of an older commit, say) with this
interpreter.  ``--optimize 2`` runs the tree with ``PYTHONOPTIMIZE=2`` (``python -OO``: no
docstrings, no asserts).  ``--tls`` listens on ``ssl:`` instead (a self-signed certificate
made by ``openssl``): what loading the TLS stack (pyOpenSSL, cryptography, the standard
library's ``ssl``) adds to each process.
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
sys.path.insert(0, str(REPO_ROOT))

from bench.memory import distinct_resident_kib, tree_memory  # noqa: E402


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=REPO_ROOT)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--optimize", type=int, default=0)
    parser.add_argument("--tls", action="store_true", help="listen on ssl: instead of tcp:")
    args = parser.parse_args()
    tree = args.tree.resolve()
    with tempfile.TemporaryDirectory() as work:
        config = (tree / "tap.cfg").read_text()
        port = "tcp:0:interface=127.0.0.1"
        if args.tls:
            key, cert = f"{work}/key.pem", f"{work}/cert.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                 "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                check=True, capture_output=True,
            )  # fmt: skip
            port = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        config = config.replace("port = tcp:5000", f"port = {port}", 1)
        config = config.replace("./registry-data", f"{work}/data", 1)
        (Path(work) / "tap.cfg").write_text(config)
        log = Path(work) / "twistd.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["PYTHONPATH"] = str(tree)
        env["REGISTRY_HTTP_WORKERS"] = str(args.workers)
        if args.optimize:
            env["PYTHONOPTIMIZE"] = str(args.optimize)
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
            memory = tree_memory(child.pid)
            distinct = distinct_resident_kib([m.pid for m in memory])
        finally:
            child.terminate()
            child.wait(timeout=30)
    optimized = f", PYTHONOPTIMIZE={args.optimize}" if args.optimize else ""
    optimized += ", ssl: listener" if args.tls else ""
    print(f"{tree}: idle, default tap.cfg, [http] workers = {args.workers}{optimized}")
    print(f"{'process':12} {'pid':>8} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8}")
    for index, each in enumerate(memory):
        role = "registry" if len(memory) == 1 else ("supervisor" if index == 0 else "worker")
        print(f"{role:12} {each.pid:8} {mib(each.rss):>8} {mib(each.pss):>8} {mib(each.uss):>8}")
    rss, pss, uss = (sum(getattr(m, f) for m in memory) for f in ("rss", "pss", "uss"))
    print(f"{'tree (sum)':12} {'':8} {mib(rss):>8} {mib(pss):>8} {mib(uss):>8}")
    if distinct is not None:
        print(f"tree, each shared page once (distinct resident pages): {mib(distinct)} MiB")


if __name__ == "__main__":
    main()
