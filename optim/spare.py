"""A spare worker process: a fresh interpreter that imports torch and diffusers, says it is ready, then waits for
one job and runs it in this same process. Started by `optim.launch` as `python -m optim.spare FD MODULE...`; not
meant to be run by hand.

Why it exists: on a machine where CUDA may be present, a process must not fork after CUDA was initialized (the
child fails at its first CUDA call with "Cannot re-initialize CUDA in forked subprocess"), and merely importing
diffusers initializes CUDA there (diffusers -> bitsandbytes -> `torch.cuda.get_device_capability` at import;
torchao asks `torch.cuda.is_available()` at import). So on such machines nothing is forked after the imports:
each side gets a freshly spawned interpreter, started ahead of time so that a comparison does not wait for the
imports (see `optim.launch.SparePool`).

Protocol, on one Unix socket (framed by `multiprocessing.connection.Connection`): the spare sends ("ready", pid)
once its imports are done; the parent sends one job (the target's module and name, its argument, the parent's
environment); from then on the socket belongs to the target, exactly as for a child of the zygote.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
from multiprocessing.connection import Connection

from optim.zygote import run_and_exit


def main() -> None:
    connection = Connection(socket.socket(fileno=int(sys.argv[1])).detach())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the parent's terminal is the parent's business
    for name in sys.argv[2:]:
        importlib.import_module(name)
    try:
        connection.send(("ready", os.getpid()))
    except OSError:  # the parent went away before we were ready
        os._exit(0)
    run_and_exit(connection)


if __name__ == "__main__":
    main()
