"""
``twistd`` for worker processes, without its plugin search.

twistd finds its subcommands by importing every module in every ``twisted/plugins`` folder
(Twisted's own: conch, mail, names, words, trial's interfaces and with them ``unittest``
and ``argparse``), about 0.8 MiB that stays resident in each process that only ever runs
``registry``.  A worker's subcommand is always ours, so its twistd knows only that one;
everything else (logging, its rotation on SIGUSR1, syslog, signals, start and stop) is
twistd's own.

Before Twisted is imported, the worker reads its configuration and keeps out the libraries it
does not use (`registry.lean_imports.keep_out_of_worker`): the standard library's ``ssl`` can
be kept out only then, before Twisted's own imports bring it in.  Likewise a few modules Twisted
imports for what a worker never does (twistd's debugger, ``pdb``) are loaded only if used
(`registry.lean_imports.load_on_use`).
"""

from __future__ import annotations

import os
import sys

from registry.lean_imports import keep_out_of_worker, load_on_use


def run() -> None:
    """
    ``twistd`` with `WorkerOptions` (what `registry.server.handoff` starts workers with),
    once the libraries the configuration does not use are kept out.
    """
    keep_out_of_worker(sys.argv[1:], os.environ)
    load_on_use()
    from twisted.application import app
    from twisted.scripts import twistd

    from registry.server._worker_options import WorkerOptions

    app.run(twistd.runApp, WorkerOptions)
