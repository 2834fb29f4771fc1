"""
What a supervisor and its workers agree on: the variable a worker's settings arrive in and
its control pipe's descriptors.  A module of its own, with no imports, so that a worker
reads them without importing the supervisor's program (`registry.server.supervisor`).
"""

# The variable the supervisor hands a worker its settings in (registry.server.workers).
WORKER_ENVIRONMENT = "TXREGISTRY_WORKER"
# The worker's end of its control pipe: it reads the supervisor on CONTROL_IN, writes on
# CONTROL_OUT; its listening sockets follow, from FIRST_LISTENER_FD on.
CONTROL_IN = 3
CONTROL_OUT = 4
FIRST_LISTENER_FD = 5
