"""The worker zygote: a long-lived process that has imported torch and diffusers once and forks a fresh child
for each side. Started by `optim.launch` as `python -m optim.zygote FD`; not meant to be run by hand.

Why not multiprocessing's forkserver: its children re-run the parent's `__main__` script (for `python app.py`,
that is the whole Gradio app) before doing any work. Here a child is a plain fork of this small process.

Protocol, on Unix sockets:
* control socket (SOCK_SEQPACKET, from the parent): each message is a pickled job (the target's module and
  name, its argument, the parent's environment) with one file descriptor attached: the job socket.
* job socket (SOCK_STREAM, framed by `multiprocessing.connection.Connection`): the zygote first sends
  ("pid", pid); the child sends whatever its target sends; when the child has exited the zygote sends
  ("exit", status) and closes it. status < 0 means killed by that signal.

The zygote is single-threaded (forking a threaded process can deadlock the child) and exits when the parent
closes the control socket. It is used only where the installed torch cannot use a GPU
(`optim.launch.start_method`): on a machine with CUDA, importing diffusers initializes CUDA (through
bitsandbytes, or torchao's `torch.cuda.is_available()` where bitsandbytes is absent), and a process must never
fork after that; spare processes (`optim.spare`) are spawned there instead. Should the zygote run on a torch
built with CUDA anyway (OPTIM_WORKER_START=fork), it watches every call that initializes the driver
(`watch_cuda`: `is_available` and `device_count` too, which call `cudaGetDeviceCount` and poison later forks)
and refuses to fork after one, naming the call, instead of handing out a side that fails at its first CUDA
call.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import socket
import sys
from multiprocessing.connection import Connection
from typing import NoReturn

MAX_JOB_BYTES = 1 << 22
# torch.cuda functions that initialize the CUDA driver or runtime in this process (after which a forked child
# is "in bad fork" and its first CUDA call fails): what `watch_cuda` records.
CUDA_INITIALIZERS = ("is_available", "device_count", "init", "_lazy_init", "current_device", "set_device",
                     "get_device_capability", "get_device_properties", "get_device_name", "mem_get_info",
                     "synchronize", "is_bf16_supported")
_cuda_calls: list[str] = []


def watch_cuda() -> None:
    """Record calls that initialize CUDA (see CUDA_INITIALIZERS), where torch can use CUDA at all."""
    import torch

    if not (getattr(torch.version, "cuda", None) or getattr(torch.version, "hip", None)):
        return  # a CPU-only torch: these calls are harmless, forking stays safe
    for name in CUDA_INITIALIZERS:
        original = getattr(torch.cuda, name, None)
        if original is None or getattr(original, "_lab_watched", False):
            continue

        def watched(*args, _name=name, _original=original, **kwargs):
            _cuda_calls.append(f"torch.cuda.{_name}")
            return _original(*args, **kwargs)

        watched._lab_watched = True
        setattr(torch.cuda, name, watched)


def cuda_initialized() -> str | None:
    """The first call that initialized CUDA in this process, or None."""
    if _cuda_calls:
        return _cuda_calls[0]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "torch.cuda (initialized)"
    return None


def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run_child(job: dict, connection: Connection) -> None:
    """In the forked child: take the parent's environment, run the target, report, exit."""
    os.environ.clear()
    os.environ.update(job["environment"])
    module = importlib.import_module(job["module"])
    target = getattr(module, job["function"])
    target(job["argument"], connection)


def run_and_exit(connection: Connection, job: dict | None = None) -> NoReturn:
    """In a side's process (a zygote's child, or a spare given its job): run the job, then end the process with
    status 0, or 1 if the target raised (it reports its own errors first; this is a last resort). A spare first
    receives its job here (`job` None); a parent that goes away ends it quietly."""
    code = 0
    try:
        if job is None:
            job = connection.recv()  # from our own parent process only: the socket is private
        run_child(job, connection)
    except (EOFError, OSError):  # the parent went away
        code = 0
    except BaseException:  # noqa: BLE001 - the target reports its own errors; this is a last resort
        code = 1
    finally:
        try:
            connection.close()
        finally:
            os._exit(code)


def serve(control: socket.socket) -> None:
    running: dict[int, Connection] = {}
    while True:
        readable, _, _ = select.select([control], [], [], 0.1)
        # Reap finished children and tell their parents how they ended.
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            connection = running.pop(pid, None)
            if connection is not None:
                try:
                    connection.send(("exit", _exit_status(status)))
                except OSError:
                    pass
                connection.close()
        if not readable:
            continue
        message, fds, _, _ = socket.recv_fds(control, MAX_JOB_BYTES, 1)
        if not message:  # the parent closed the control socket: we are done
            return
        if not fds:
            continue
        connection = Connection(fds[0])
        job = pickle.loads(message)  # from our own parent process only: the control socket is private
        initialized = cuda_initialized()
        if initialized:
            _refuse(connection, initialized)
            continue
        pid = os.fork()
        if pid == 0:
            control.close()
            for other in running.values():
                other.close()
            run_and_exit(connection, job)
        running[pid] = connection
        connection.send(("pid", pid))


def _refuse(connection: Connection, call: str) -> None:
    """Answer a job without forking: CUDA was initialized here, so a forked side would be broken."""
    message = (f"the worker zygote cannot fork a side: CUDA was initialized in it ({call} was called while it "
               "imported torch and diffusers), and a process forked after that fails at its first CUDA call. Start "
               "workers with spawn (OPTIM_WORKER_START=spawn, the default where torch is built with CUDA)")
    try:
        connection.send(("error", ("WorkerCrashed", message)))
        connection.send(("exit", 1))
    except OSError:
        pass
    connection.close()


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the parent's terminal is the parent's business
    watch_cuda()
    for name in sys.argv[2:]:
        importlib.import_module(name)
    serve(control)


if __name__ == "__main__":
    main()
