"""Starting the processes sides run in, the way this machine allows (`start_method()`):

* "fork" (the installed torch cannot use a GPU): forked from a zygote (`optim.zygote`) that has imported torch
  and diffusers once, so starting a side costs a fork, not a 5-second import.
* "spawn" (a torch that can use CUDA or ROCm, or macOS): a process must never fork after CUDA was initialized,
  and importing diffusers initializes it (diffusers -> bitsandbytes -> `torch.cuda.get_device_capability`, or
  torchao's `torch.cuda.is_available()`). Each side gets a fresh interpreter instead, taken from a pool of spares
  (`optim.spare`) that were started ahead of time and have done their imports, so a comparison does not wait.

`OPTIM_WORKER_START=fork|spawn` overrides the choice. What runs in those processes, and how the parent talks to a
side, is `optim.worker`.

    >>> child = launcher.start("optim.worker", "serve_side", job)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from optim import errors
from optim.errors import WorkerCrashed

log = logging.getLogger(__name__)
# Imported once in the zygote or the spares; children start with them already loaded.
PRELOAD = ["optim.worker_preload"]
START_METHODS = ("fork", "spawn")
# How long a spare may take to import torch and diffusers before it counts as broken.
SPARE_READY_TIMEOUT_S = 300.0


def start_method(environ: dict[str, str] | None = None) -> str:
    """"fork" where forking after the imports is safe (a torch build without GPU support, on Linux), else "spawn".

    Decided from the torch *build*, never by asking the driver: `torch.cuda.is_available()` itself may initialize
    CUDA in this process."""
    env = os.environ if environ is None else environ
    chosen = env.get("OPTIM_WORKER_START", "auto").strip().lower()
    if chosen in START_METHODS:
        return chosen
    if chosen not in ("", "auto"):
        raise errors.ConfigError(f"OPTIM_WORKER_START={chosen!r} is not one of auto, fork, spawn")
    import torch

    gpu_build = bool(getattr(torch.version, "cuda", None) or getattr(torch.version, "hip", None))
    if gpu_build or sys.platform != "linux":
        return "spawn"
    return "fork"


def worker_environment() -> dict[str, str]:
    """Ours, plus the thread settings that keep timings steady (`optim.machine`) unless the user chose others, and
    this process's pid: the lab's root, whose CPU time (and its workers') a side does not count as contention."""
    from optim.machine import LAB_PID_ENV, WORKER_ENVIRONMENT

    return {**WORKER_ENVIRONMENT, **os.environ, LAB_PID_ENV: str(os.getpid())}


def _command(module: str, *args: str) -> list[str]:
    """`python -c ...` running `module` as __main__ with this process's `sys.path` (what multiprocessing's spawn
    does too), so a zygote or spare imports the same code as we do, installed or run from a checkout."""
    bootstrap = ("import json, runpy, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
                 f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", bootstrap, json.dumps(sys.path), *args]


class Child:
    """One side's process as the parent sees it: ("pid", pid) first, then whatever the target sends, then
    ("exit", status) once it has ended (status < 0: killed by that signal)."""

    def __init__(self, connection: Connection, process: subprocess.Popen | None = None) -> None:
        self.connection = connection
        self._process = process  # spawned spares only; the zygote reports pid and exit in-band
        self._pending: list[tuple[str, Any]] = [("pid", process.pid)] if process is not None else []
        self._ended = False

    def poll(self, timeout: float) -> bool:
        return bool(self._pending) or self._ended is False and self.connection.poll(timeout)

    def recv(self) -> tuple[str, Any]:
        if self._pending:
            return self._pending.pop(0)
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            if self._process is None:
                raise
            self._ended = True
            return ("exit", self._process.wait())  # -N: killed by signal N, as the zygote reports it

    def close(self) -> None:
        self.connection.close()
        if self._process is not None and self._process.poll() is None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class _Zygote:
    """The long-lived zygote process and its control socket (started on first use, restarted if it died)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None

    def _ensure_running(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        if self._process is not None:
            log.warning("the worker zygote (pid %s) exited with %s: starting a new one", self._process.pid,
                        self._process.returncode)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._process = subprocess.Popen(
            _command("optim.zygote", str(theirs.fileno()), *PRELOAD),
            pass_fds=[theirs.fileno()],
            env=worker_environment(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the parent only
        )
        theirs.close()
        self._control = ours
        log.info("worker zygote started (pid %s)", self._process.pid)

    def start(self, job: dict[str, Any]) -> Child:
        """Fork a child that runs `job`; return its `Child`."""
        payload = pickle.dumps(job)
        with self._lock:
            self._ensure_running()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                socket.send_fds(self._control, [payload], [theirs.fileno()])
            finally:
                theirs.close()
        return Child(Connection(ours.detach()))

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


class _Spare:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.process = subprocess.Popen(
            _command("optim.spare", str(theirs.fileno()), *PRELOAD),
            pass_fds=[theirs.fileno()],
            env=worker_environment(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        self.connection = Connection(ours.detach())
        self.started = time.monotonic()

    def wait_ready(self, timeout: float) -> bool:
        """True once the spare has done its imports; False if it died or took too long."""
        try:
            if self.connection.poll(timeout):
                kind, _ = self.connection.recv()
                return kind == "ready"
        except (EOFError, OSError):
            pass
        return False

    def discard(self) -> None:
        self.connection.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class SparePool:
    """Spawned worker processes that have already imported torch and diffusers, `size` of them kept waiting.

    Taking one starts its replacement at once, so the next side (or the other side of the same comparison) finds
    a spare whose imports are done or under way."""

    def __init__(self, size: int = 2) -> None:
        self.size = max(1, size)
        self._lock = threading.Lock()
        self._spares: list[_Spare] = []

    def _fill(self) -> None:
        alive = [s for s in self._spares if s.process.poll() is None]
        if len(alive) < len(self._spares):
            log.warning("%d spare worker(s) died before being used: starting replacements",
                        len(self._spares) - len(alive))
        self._spares = alive
        while len(self._spares) < self.size:
            self._spares.append(_Spare())
            log.info("spare worker started (pid %s)", self._spares[-1].process.pid)

    def prestart(self) -> None:
        """Start the spares now (a server does this at launch, so its first comparison does not wait)."""
        with self._lock:
            self._fill()

    def start(self, job: dict[str, Any]) -> Child:
        with self._lock:
            self._fill()
            spare = self._spares.pop(0)
            self._fill()
        if not spare.wait_ready(SPARE_READY_TIMEOUT_S):
            log.error("spare worker (pid %s) did not become ready in %.0f s", spare.process.pid,
                      SPARE_READY_TIMEOUT_S)
            spare.discard()
            raise WorkerCrashed(
                "a worker process could not start (importing torch and diffusers failed or took more than "
                f"{SPARE_READY_TIMEOUT_S:.0f} s); run `python -m optim capabilities` to check the installation"
            )
        spare.connection.send(job)
        return Child(spare.connection, spare.process)

    def stop(self) -> None:
        with self._lock:
            for spare in self._spares:
                spare.discard()
            self._spares = []


class Launcher:
    """Starts side processes the way this machine allows (`start_method()`), chosen on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._method: str | None = None
        self._zygote = _Zygote()
        self._spares = SparePool(int(os.environ.get("OPTIM_SPARE_WORKERS", "2") or 2))

    @property
    def method(self) -> str:
        with self._lock:
            if self._method is None:
                self._method = start_method()
            return self._method

    def prestart(self) -> None:
        """Get the zygote or the spares going ahead of the first comparison."""
        if self.method == "spawn":
            self._spares.prestart()

    def start(self, module: str, function: str, argument: Any) -> Child:
        """A new process that runs `module.function(argument, connection)`."""
        job = {"module": module, "function": function, "argument": argument, "environment": worker_environment()}
        if self.method == "spawn":
            return self._spares.start(job)
        return self._zygote.start(job)

    def stop(self) -> None:
        self._zygote.stop()
        self._spares.stop()


launcher = Launcher()
