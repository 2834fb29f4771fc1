"""
The process around the registry: binding listeners, probing storage before announcing that the
registry listens, exiting with one line when start-up fails, and draining on SIGTERM; with
``[http] workers`` above 1, a supervisor (`supervisor`) running worker processes (`workers`)
over the same listening sockets, talking to them over a pipe (`control`).
"""
