"""One side in its own process, so that each side's peak memory starts clean, nothing one side did (hooks, global
backends, compiled graphs, allocator caches) can leak into the other, and a hard crash in the GPU work (a
segfault, the kernel's OOM killer) costs one comparison instead of the server.

`serve_side` runs in the side's process (started by `optim.launch`: forked from a zygote on a CPU-only torch,
a spawned spare where CUDA may be present) and answers the parent's commands; `RemoteSide` is the parent's
handle on it, with the same methods as `optim.measure.Side`. The child reports progress and its result (or a
user-facing error) through a socket; the parent can kill it at any time (cancellation), which frees everything it
held.

Example:
    >>> side = RemoteSide(job)           # doctest: +SKIP
    >>> setup = side.prepare()            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

from optim import scratch
from optim.errors import Cancelled, OptimError, WorkerCrashed, rebuild_error
from optim.launch import launcher, start_method
from optim.measure import Final, Probe, Progress, Setup, SideJob, Timing

__all__ = ["RemoteSide", "launcher", "serve_side", "start_method"]  # launcher, start_method: from optim.launch

log = logging.getLogger(__name__)
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
