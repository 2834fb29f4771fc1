"""
The process around the registry: binding listeners, probing storage before announcing that the
registry listens, exiting with one line when start-up fails, and draining on SIGTERM; with
``[http] workers`` above 1, twistd binds the listeners and hands over (`handoff`) to a
supervisor on the standard library (`supervisor`, `loop`) running worker processes
(`workers`, started by `worker_twistd`) over the same listening sockets, talking to them over
a pipe (`control` on the worker's side, `pipe_channel` on the supervisor's).
"""
