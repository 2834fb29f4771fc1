"""
The process around the registry: binding listeners, probing storage before announcing that the
registry listens, exiting with one line when start-up fails, and draining on SIGTERM.
"""
