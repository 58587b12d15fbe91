"""Run one side in a fresh process, so that each side's peak memory starts clean, nothing one side did (hooks,
global backends, compiled graphs, allocator caches) can leak into the other, and a hard crash in the GPU work (a
segfault, the kernel's OOM killer) costs one comparison instead of the server.

Processes are forked from a zygote (`optim.zygote`) that has already imported torch and diffusers, so starting a
side costs a fork, not a 5-second import. The zygote never touches CUDA, so each child initializes CUDA itself.
The child reports progress and its result (or a user-facing error) through a socket; the parent can kill it at
any time (cancellation), which frees everything it held.

Example:
    >>> result = run_in_subprocess(job)              # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable

from optim import errors, scratch
from optim.errors import Cancelled, OptimError, WorkerCrashed
from optim.measure import Progress, SideJob, SideResult

# Imported once in the zygote; children inherit them already loaded.
PRELOAD = ["optim.worker_preload"]


class _Zygote:
    """The long-lived zygote process and its control socket (started on first use, restarted if it died)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None

    def _ensure_running(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "optim.zygote", str(theirs.fileno()), *PRELOAD],
            pass_fds=[theirs.fileno()],
            env=environment,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the parent only
        )
        theirs.close()
        self._control = ours

    def start(self, module: str, function: str, argument: Any) -> Connection:
        """Fork a child that runs `module.function(argument, connection)`; return our end of its connection."""
        job = {"module": module, "function": function, "argument": argument, "environment": dict(os.environ)}
        payload = pickle.dumps(job)
        with self._lock:
            self._ensure_running()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                socket.send_fds(self._control, [payload], [theirs.fileno()])
            finally:
                theirs.close()
        return Connection(ours.detach())

    def stop(self) -> None:
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
            if self._process is not None:
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                self._process = None


_zygote = _Zygote()


def side_child(job: SideJob, connection: Connection) -> None:
    """Runs in the forked child: measure the side, send progress and the result or the error."""
    from optim.measure import run_side

    if job.memory_limit_mb:
        limit_memory(job.memory_limit_mb)
    try:
        result = run_side(job, progress=lambda phase, done, total: connection.send(("progress", (phase, done, total))))
        connection.send(("result", result))
    except OptimError as error:
        connection.send(("error", (type(error).__name__, str(error))))
    except BaseException as error:  # noqa: BLE001 - report, never hang the parent
        connection.send(("error", ("RunError", f"{type(error).__name__}: {error}")))


def limit_memory(extra_mb: int) -> None:
    """Cap this process's address space at its current size plus `extra_mb`: an allocation beyond it fails
    with a clean out-of-memory error here instead of the kernel's OOM killer picking a victim (maybe the server)."""
    import resource

    from optim.memory import virtual_mb

    limit = int((virtual_mb() + extra_mb) * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _rebuild(kind: str, message: str) -> OptimError:
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, OptimError)):
        cls = errors.RunError
    return cls(message)


def _death(status: int | None) -> str:
    if status is None:
        return "the worker machinery stopped answering"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        if name == "SIGKILL":
            return "it was killed (SIGKILL), most likely by the kernel for using too much memory"
        return f"it crashed ({name})"
    return f"it exited with status {status}"


def run_in_subprocess(
    job: SideJob,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    poll_s: float = 0.05,
) -> SideResult:
    """Run `measure.run_side(job)` in a fresh process; return its result or raise its error here."""
    connection = _zygote.start(__name__, "side_child", job)
    pid: int | None = None
    outcome: Any = None
    status: int | None = None
    cancelled = False
    try:
        while True:
            if should_stop is not None and not cancelled and should_stop():
                cancelled = True
                if pid is not None:
                    _kill(pid)
            if not connection.poll(poll_s):
                continue
            try:
                kind, payload = connection.recv()
            except (EOFError, OSError):
                break
            if kind == "pid":
                pid = payload
                if cancelled:
                    _kill(pid)
            elif kind == "progress":
                if progress is not None and not cancelled:
                    progress(*payload)
            elif kind in ("result", "error"):
                outcome = (kind, payload)
            elif kind == "exit":
                status = payload
                break
    finally:
        if status is None and pid is not None:
            _kill(pid)
        connection.close()
        if pid is not None and status != 0:
            # A killed or crashed child never ran its undo; what it wrote to disk is ours to delete.
            scratch.remove_folders_of(pid)
    if cancelled:
        raise Cancelled("cancelled by the user; the run's process was stopped and its memory freed")
    if outcome is not None and outcome[0] == "result":
        return outcome[1]
    if outcome is not None:
        raise _rebuild(*outcome[1])
    raise WorkerCrashed(
        f"the {job.side} side's process died before finishing: {_death(status)}. The server is fine; "
        "try smaller settings (size, steps) or lighter options"
    )


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
