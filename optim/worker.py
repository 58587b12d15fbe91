"""Run one side in a fresh process, so that each side's peak memory starts clean, nothing one side did (hooks,
global backends, compiled graphs, allocator caches) can leak into the other, and a hard crash in the GPU work (a
segfault, the kernel's OOM killer) costs one comparison instead of the server.

How a side's process starts depends on the machine (`start_method()`):

* "fork" (the installed torch cannot use a GPU): forked from a zygote (`optim.zygote`) that has imported torch
  and diffusers once, so starting a side costs a fork, not a 5-second import.
* "spawn" (a torch that can use CUDA or ROCm, or macOS): a process must never fork after CUDA was initialized,
  and importing diffusers initializes it (diffusers -> bitsandbytes -> `torch.cuda.get_device_capability`). Each
  side gets a fresh interpreter instead, taken from a pool of spares (`optim.spare`) that were started ahead of
  time and have done their imports, so a comparison does not wait for them.

`OPTIM_WORKER_START=fork|spawn` overrides the choice. The child reports progress and its result (or a
user-facing error) through a socket; the parent can kill it at any time (cancellation), which frees everything
it held.

Example:
    >>> result = run_in_subprocess(job)              # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

from optim import errors, scratch
from optim.errors import Cancelled, OptimError, WorkerCrashed, rebuild_error
from optim.measure import Final, Probe, Progress, Setup, SideJob, Timing

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


PROGRESS_EVERY_S = 0.25


def _throttled(send: Callable[[tuple], None]) -> Callable[[str, int, int], None]:
    """Progress reports for the parent: a new phase and a phase's last step always, other steps at most every
    PROGRESS_EVERY_S. Steps are reported from inside the pipeline call, so within timed runs every message sent
    is time measured; the page shows no more than that anyway."""
    last = {"phase": None, "at": 0.0}

    def report(phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase != last["phase"] or done >= total or now - last["at"] >= PROGRESS_EVERY_S:
            last["phase"], last["at"] = phase, now
            send((phase, done, total))

    return report


def serve_side(job: SideJob, connection: Connection) -> None:
    """Runs in the side's own process: prepare the side, then answer the parent's commands until it says close.

    Parent -> child: ("timed", label, item) | ("configure", OptimConfig) | ("probes",) | ("images",) |
    ("footprint",) | ("finish",) | ("close",).
    Child -> parent: ("progress", (phase, done, total)) at any time; ("ready", Setup) once prepared or
    reconfigured; ("timing", Timing) per timed run; ("probes", [Probe]); ("images", [image]); ("footprint",
    (held, peak, free MB)); ("final", Final); ("error", (class name, message)) on a failure, after which the
    process ends.
    """
    from optim.machine import configure_threads
    from optim.measure import Side

    if job.memory_limit_mb and job.run.device != "cuda":
        # On CUDA the cap is not applied: the driver maps far more address space than it uses, and an address
        # space limit makes CUDA's initialization itself fail.
        limit_memory(job.memory_limit_mb)
    configure_threads()
    side = Side(job, progress=_throttled(lambda message: connection.send(("progress", message))))
    try:
        connection.send(("ready", side.prepare()))
        while True:
            command, *arguments = connection.recv()
            if command == "timed":
                connection.send(("timing", side.timed(*arguments)))
            elif command == "configure":
                connection.send(("ready", side.reconfigure(*arguments)))
            elif command == "probes":
                connection.send(("probes", side.probes))
            elif command == "images":
                connection.send(("images", side.images()))
            elif command == "finish":
                connection.send(("final", side.finish()))
            elif command == "footprint":
                connection.send(("footprint", side.footprint()))
            elif command == "close":
                break
            else:
                raise RuntimeError(f"unknown command {command!r}")
    except (EOFError, OSError):
        pass  # the parent went away: nothing to report to
    except OptimError as error:
        connection.send(("error", (type(error).__name__, str(error))))
    except BaseException as error:  # noqa: BLE001 - report, never hang the parent
        connection.send(("error", ("RunError", f"{type(error).__name__}: {error}")))
    finally:
        side.close()


class RemoteSide:
    """A side running in its own process (`serve_side`), driven from here: the same methods as `measure.Side`.

    Cancellation (`should_stop`) kills the process, which frees everything it held; so does `close()` if the
    process does not end by itself. A process that dies raises `WorkerCrashed` saying how it died."""

    def __init__(self, job: SideJob, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None, *, poll_s: float = 0.05) -> None:
        self.job = job
        self.progress = progress
        self.should_stop = should_stop
        self.poll_s = poll_s
        self.child = launcher.start(__name__, "serve_side", job)
        self.pid: int | None = None
        self.status: int | None = None
        self.cancelled = False

    def _await(self, wanted: str) -> Any:
        """Relay progress until the message `wanted` arrives; raise the side's error, a cancel, or its death."""
        while True:
            if self.should_stop is not None and not self.cancelled and self.should_stop():
                self.cancelled = True
                self.kill()
            if self.status is not None:
                self._raise_ended()
            if not self.child.poll(self.poll_s):
                continue
            try:
                kind, payload = self.child.recv()
            except (EOFError, OSError):
                self.status = self.status if self.status is not None else -signal.SIGKILL
                self._raise_ended()
            if kind == "pid":
                self.pid = payload
                log.info("%s side started in process %s (%s)", self.job.side, payload, launcher.method)
                if self.cancelled:
                    self.kill()
            elif kind == "progress":
                if self.progress is not None and not self.cancelled:
                    self.progress(*payload)
            elif kind == "exit":
                self.status = payload
                self._cleanup_after_death()
            elif kind == "error":
                self._collect_exit()
                raise rebuild_error(*payload)
            elif kind == wanted:
                return payload

    def _raise_ended(self) -> None:
        log.info("the %s side's process (pid %s) ended: %s", self.job.side, self.pid,
                 "cancelled" if self.cancelled else _death(self.status))
        if self.cancelled:
            raise Cancelled("cancelled by the user; the run's process was stopped and its memory freed")
        raise WorkerCrashed(
            f"the {self.job.side} side's process died before finishing: {_death(self.status)}. The server is fine; "
            "try smaller settings (size, steps) or lighter options"
        )

    def _collect_exit(self) -> None:
        """After an error message the process ends by itself: wait for it (briefly) so nothing is left behind."""
        deadline = time.monotonic() + 30
        while self.status is None and time.monotonic() < deadline:
            if self.child.poll(self.poll_s):
                try:
                    kind, payload = self.child.recv()
                except (EOFError, OSError):
                    break
                if kind == "exit":
                    self.status = payload
        self.close()

    def _cleanup_after_death(self) -> None:
        if self.pid is not None and self.status != 0:
            # A killed or crashed child never ran its undo; what it wrote to disk is ours to delete.
            scratch.remove_folders_of(self.pid)

    def prepare(self) -> Setup:
        return self._await("ready")

    def timed(self, label: str = "timed run", item: int = 0) -> Timing:
        self._send(("timed", label, item))
        return self._await("timing")

    def reconfigure(self, optim: Any) -> Setup:
        self._send(("configure", optim))
        return self._await("ready")

    @property
    def probes(self) -> list[Probe]:
        self._send(("probes",))
        return self._await("probes")

    def images(self) -> list[Any]:
        self._send(("images",))
        return self._await("images")

    def footprint(self) -> tuple[float, float, float | None]:
        self._send(("footprint",))
        return self._await("footprint")

    def finish(self) -> Final:
        self._send(("finish",))
        return self._await("final")

    def _send(self, message: tuple) -> None:
        try:
            self.child.connection.send(message)
        except OSError:
            self.status = self.status if self.status is not None else -signal.SIGKILL
            self._raise_ended()

    def kill(self) -> None:
        if self.pid is not None:
            _kill(self.pid)

    def close(self) -> None:
        """Ask the process to end (it undoes what it applied), kill it if it does not, and reap it."""
        if self.status is None:
            try:
                self.child.connection.send(("close",))
            except OSError:
                pass
            deadline = time.monotonic() + 30
            while self.status is None and time.monotonic() < deadline:
                try:
                    if not self.child.poll(self.poll_s):
                        continue
                    kind, payload = self.child.recv()
                except (EOFError, OSError):
                    break
                if kind == "exit":
                    self.status = payload
            if self.status is None:
                self.kill()
        self._cleanup_after_death()
        self.child.close()


def limit_memory(extra_mb: int) -> None:
    """Cap this process's address space at its current size plus `extra_mb`: an allocation beyond it fails
    with a clean out-of-memory error here instead of the kernel's OOM killer picking a victim (maybe the server)."""
    import resource

    from optim.memory import virtual_mb

    limit = int((virtual_mb() + extra_mb) * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


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


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
