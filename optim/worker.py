"""Run one side in a fresh process, so that each side's peak memory starts clean, nothing one side did (hooks,
global backends, compiled graphs, allocator caches) can leak into the other, and a hard crash in the GPU work (a
segfault, the kernel's OOM killer) costs one comparison instead of the server.

Processes come from a forkserver that has already imported torch and diffusers, so starting a side costs a fork,
not a 5-second import. The forkserver never touches CUDA, so each child initializes CUDA itself. The child
reports progress and its result (or a user-facing error) through a pipe; the parent can kill it at any time
(cancellation), which frees everything it held.

Example:
    >>> result = run_in_subprocess(job)              # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from typing import Any, Callable

from optim import errors
from optim.errors import Cancelled, OptimError, WorkerCrashed
from optim.measure import Progress, SideJob, SideResult

# Imported once in the forkserver; children inherit them already loaded.
PRELOAD = ["optim.worker_preload"]

_lock = threading.Lock()
_context: Any = None


def _get_context() -> Any:
    global _context
    with _lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            _context = context
        return _context


def _child(job: SideJob, connection: Any, environment: dict[str, str]) -> None:
    # The forkserver was started with the environment of that moment; use the caller's current one.
    os.environ.clear()
    os.environ.update(environment)
    from optim.measure import run_side
    try:
        result = run_side(job, progress=lambda phase, done, total: connection.send(("progress", (phase, done, total))))
        connection.send(("result", result))
    except OptimError as error:
        connection.send(("error", (type(error).__name__, str(error))))
    except BaseException as error:  # noqa: BLE001 - report, never hang the parent
        connection.send(("error", ("RunError", f"{type(error).__name__}: {error}")))
    finally:
        connection.close()


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


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if name == "SIGKILL":
            return "it was killed (SIGKILL), most likely by the kernel for using too much memory"
        return f"it crashed ({name})"
    return f"it exited with status {exitcode}"


def run_in_subprocess(
    job: SideJob,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    poll_s: float = 0.05,
) -> SideResult:
    """Run `measure.run_side(job)` in a fresh process; return its result or raise its error here."""
    context = _get_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(job, sender, dict(os.environ)), daemon=True)
    process.start()
    sender.close()
    try:
        while True:
            if should_stop is not None and should_stop():
                process.kill()
                raise Cancelled("cancelled by the user; the run's process was stopped and its memory freed")
            if receiver.poll(poll_s):
                try:
                    kind, payload = receiver.recv()
                except (EOFError, OSError):
                    break
                if kind == "progress" and progress is not None:
                    progress(*payload)
                elif kind == "result":
                    return payload
                elif kind == "error":
                    raise _rebuild(*payload)
            elif not process.is_alive():
                if receiver.poll(0):
                    continue
                break
        process.join(timeout=5)
        raise WorkerCrashed(
            f"the {job.side} side's process died before finishing: {_death(process.exitcode)}. The server is fine; "
            "try smaller settings (size, steps) or lighter options"
        )
    finally:
        if process.is_alive():
            process.kill()
        process.join(timeout=10)
        receiver.close()
