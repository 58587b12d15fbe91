"""The errors the engine raises on purpose.

Every one carries a complete, user-facing message: what went wrong, with which setting, and what to do about it.
The CLI prints it on one line and the app shows it in a dialog; neither adds a traceback. Anything else that
escapes the engine is a bug.
"""

from __future__ import annotations


class OptimError(Exception):
    """Base class: the message is complete and meant for the user."""

    #: CLI exit status. 2 is "bad input" (fix the command), 1 is "the run failed".
    exit_code = 1


class ConfigError(OptimError, ValueError):
    """A setting, preset, share link or request is invalid (unknown key, wrong type, out of range)."""

    exit_code = 2


class ModelError(OptimError):
    """The model cannot be resolved or loaded (unknown id, no network, broken folder, unsafe files)."""

    exit_code = 2


class UnavailableError(OptimError):
    """An option is valid but this machine cannot run it (package missing, needs CUDA, ...)."""

    exit_code = 2


class IncompatibleError(OptimError):
    """A combination of options cannot work; raised before any model is loaded."""

    exit_code = 2


class RunError(OptimError):
    """The run itself failed: out of memory, a backend failing at run time, a compile failure, NaNs."""


class WorkerCrashed(RunError):
    """The process that ran one side died (segfault, killed for memory). The caller is unharmed."""


class Cancelled(OptimError):
    """The user cancelled the comparison; everything it held has been freed."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's first non-empty line (its class name when it has none), at most `limit` characters."""
    for line in str(error).strip().splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(error).__name__


def rebuild_error(kind: str, message: str) -> OptimError:
    """An error sent across a process boundary as (class name, message), raised again on this side as the same
    class (any name that is not one of ours becomes a `RunError`)."""
    cls = globals().get(kind)
    if not (isinstance(cls, type) and issubclass(cls, OptimError)):
        cls = RunError
    return cls(message)
